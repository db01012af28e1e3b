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


class KerasBackend:
    """The Keras model of a run; `model(x)` for small batches, predict for large. RunError from load_model.

    `lock` serialises every use of `model`: Keras predict and model(x) are not thread-safe, so anyone
    calling the model directly (the backend measurement) holds it too.
    """

    name = "keras"
    precision = "fp32"
    device = "CPU"
    tta_flip = False
    source_files = ("model.keras",)

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.model = load_model(run_dir)
        self.lock = threading.Lock()

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        x = as_batch(images)
        if len(x) == 0:
            return np.zeros((0, 10), np.float32)
        with self.lock:
            if len(x) <= 64:
                return np.asarray(self.model(x, training=False), dtype=np.float32)
            return np.asarray(self.model.predict(x, batch_size=1000, verbose=0), dtype=np.float32)

    def describe(self) -> dict:
        return {"name": self.name, "precision": self.precision, "device": self.device, "run": str(self.run_dir)}
