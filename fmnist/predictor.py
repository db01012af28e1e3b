"""What every predictor offers, and the one error a predictor reports.

A predictor answers `predict_proba(images) -> (N, 10)` for raw pixels, shape (N, 28, 28) or
(N, 28, 28, 1), uint8 or float in 0..255, and describes itself. `fmnist.backends` builds them by name;
the Keras ones live in `fmnist.keras_backend` and `fmnist.keras_process`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class BackendError(Exception):
    """A backend cannot be created for this run (missing export, tampered file, unknown name)."""


class Predictor(Protocol):
    name: str  # keras, openvino-fp32, openvino-int8, openvino-bf16
    precision: str
    device: str
    run_dir: Path
    tta_flip: bool
    source_files: tuple[str, ...]  # the run's files the predictor loaded (relative paths)

    def predict_proba(self, images: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict: ...


def as_batch(images: np.ndarray) -> np.ndarray:
    """float32 (N, 28, 28, 1) from one image or a batch, (N, 28, 28) or (N, 28, 28, 1); ValueError otherwise."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.shape[-1] != 1:
        x = x[..., None]
    if x.shape[1:] != (28, 28, 1):
        raise ValueError(f"expected images of shape (N, 28, 28), got {np.shape(images)}")
    return x
