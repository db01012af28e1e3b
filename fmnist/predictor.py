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
    tta_shift: int  # pixels of the shifted test-time views (0: none)
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


def test_views(images: np.ndarray, flip: bool = False, shift: int = 0) -> tuple[np.ndarray, int]:
    """(views, count): a batch (N, 28, 28, 1) followed by its test-time views, stacked along the batch
    axis in one array of count * N images (one predictor call answers all): the mirror image (flip),
    and the image moved `shift` pixels up, down, left and right with black filled in (shift > 0), of
    the original and, with flip, of the mirror too. `average_views` folds the answers back."""
    x = as_batch(images)
    bases = [x, x[:, :, ::-1]] if flip else [x]
    views = list(bases)
    if shift:
        for base in bases:
            for axis, step in ((1, shift), (1, -shift), (2, shift), (2, -shift)):
                moved = np.roll(base, step, axis=axis)
                index = [slice(None)] * 4
                index[axis] = slice(0, step) if step > 0 else slice(step, None)
                moved[tuple(index)] = 0.0
                views.append(moved)
    return np.concatenate(views), len(views)


def average_views(probs: np.ndarray, count: int) -> np.ndarray:
    """(N, C) mean over the `count` views `test_views` stacked: probabilities (count * N, C) in."""
    p = np.asarray(probs)
    return p.reshape(count, len(p) // count, *p.shape[1:]).mean(axis=0).astype(np.float32)


def views_text(flip: bool = False, shift: int = 0) -> str:
    """How an answer was averaged, for a caption ("" when it was not)."""
    if not (flip or shift):
        return ""
    count = (2 if flip else 1) * (5 if shift else 1)
    if not shift:
        return "averaged with its mirror image"
    moved = f"moved {shift} pixel{'s' if shift > 1 else ''} each way"
    return f"averaged over {count} views ({'itself and its mirror image, each ' if flip else 'itself and '}{moved})"
