"""A run's Keras model: rebuilt from our own architecture code with only its weights loaded, and the
Keras predictor over it.

The Keras config inside model.keras is never deserialised, so a planted file cannot run code; the
run's manifest is verified (fmnist.runs.checked_run) before any byte is read.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from fmnist.config import TrainConfig
from fmnist.predictor import as_batch
from fmnist.runs import RunError, checked_run


def load_model(path: str | os.PathLike):
    """The run's Keras model, rebuilt from its config.json; RunError for a broken or tampered run."""
    from fmnist.models import build_model

    info = checked_run(path)
    try:
        config = TrainConfig.from_dict(info.config)
    except (TypeError, ValueError) as exc:
        raise RunError(f"refusing to load {path}: config.json is not a valid training config ({exc})") from exc
    model = build_model(config.arch, widths=config.widths, dropout=config.dropout)
    try:
        model.load_weights(Path(path) / "model.keras")
    except Exception as exc:  # h5/zip errors have many types; all mean the weights don't fit
        raise RunError(f"refusing to load {path}: weights do not match the architecture ({exc})") from exc
    return model


ON_BATCH = 1024  # up to this many images in one graph call; more go through predict in batches of 1000


class KerasBackend:
    """The Keras model of a run; one `predict_on_batch` call for up to ON_BATCH images (Keras's compiled
    predict function, traced once per process: measured on the shipped model on 2 cores, one image
    8 ms vs 34-81 ms for eager `model(x)`, and the 290 images of a flip-averaged occlusion map 390 ms
    vs 660-800 ms with `predict`), `predict` in batches above. RunError from load_model.

    `lock` serialises every use of `model`: Keras predict and model(x) are not thread-safe, so anyone
    calling the model directly (the backend measurement) holds it too.
    """

    name = "keras"
    precision = "fp32"
    device = "CPU"
    tta_flip = False
    tta_shift = 0
    source_files = ("model.keras",)

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.model = load_model(run_dir)
        self.lock = threading.Lock()
        self._inspect = None

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        x = as_batch(images)
        if len(x) == 0:
            return np.zeros((0, 10), np.float32)
        with self.lock:
            if len(x) <= ON_BATCH:
                return np.asarray(self.model.predict_on_batch(x), dtype=np.float32)
            return np.asarray(self.model.predict(x, batch_size=1000, verbose=0), dtype=np.float32)

    # -- explanations: fmnist.explain on this model, sub-models built once (explain.KerasInspector) --
    def _inspector(self):
        """The model's KerasInspector, built on first use (call with `lock` held)."""
        if self._inspect is None:
            from fmnist.explain import KerasInspector

            self._inspect = KerasInspector(self.model)
        return self._inspect

    def features(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """"penultimate" (N, D), "logits" (N, 10), "first_stage" (N, C): trust.backend_features' keys."""
        with self.lock:
            return self._inspector().features(images)

    def stage_activations(self, image: np.ndarray) -> list[dict]:
        """Every convolutional stage's feature maps for one image: [{"name", "kind", "maps" (C, H, W)}]."""
        with self.lock:
            return self._inspector().stages(image)

    def first_layer_filters(self) -> np.ndarray:
        """The first Conv2D's kernels, (filters, k, k)."""
        from fmnist.explain import first_layer_filters

        return first_layer_filters(self.model)

    def grad_cam(self, images: np.ndarray, targets=None) -> dict[str, np.ndarray]:
        """Grad-CAM maps (N, 28, 28) at explain.last_conv_stage and their targets (N,)."""
        with self.lock:
            return self._inspector().grad_cam(images, targets)

    def describe(self) -> dict:
        return {"name": self.name, "precision": self.precision, "device": self.device, "run": str(self.run_dir)}
