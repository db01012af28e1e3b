"""Predictors behind one interface: predict_proba(images) -> (N, 10) probabilities.

Images are raw pixels, shape (N, 28, 28) or (N, 28, 28, 1), uint8 or float in 0..255.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

BACKENDS = ("keras", "openvino-fp32", "openvino-int8")


class BackendError(Exception):
    """A backend cannot be created for this run (missing export, tampered file, unknown name)."""


def as_batch(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.shape[-1] != 1:
        x = x[..., None]
    if x.shape[1:] != (28, 28, 1):
        raise ValueError(f"expected images of shape (N, 28, 28), got {np.shape(images)}")
    return x


class KerasBackend:
    """The Keras model rebuilt from the run's config; `model(x)` for small batches, predict for large."""

    name = "keras"
    precision = "fp32"
    device = "CPU"

    def __init__(self, run_dir: str | Path):
        from fmnist.runs import load_model

        self.run_dir = Path(run_dir)
        self.model = load_model(run_dir)
        self._lock = threading.Lock()  # Keras predict is not thread-safe

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        x = as_batch(images)
        with self._lock:
            if len(x) <= 64:
                return np.asarray(self.model(x, training=False), dtype=np.float32)
            return np.asarray(self.model.predict(x, batch_size=1000, verbose=0), dtype=np.float32)


def get_backend(run_dir: str | Path, name: str = "keras"):
    """A predictor for a run by backend name."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "keras":
        return KerasBackend(run_dir)
    raise BackendError(f"backend {name} is not available yet")
