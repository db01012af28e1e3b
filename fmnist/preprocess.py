"""Images into model inputs (28x28 uint8, light item on black). Placeholder until the photo
pipeline lands: 28x28 grey files pass through, anything else is resized and inverted if light."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class PreprocessError(Exception):
    """The file is not an image we accept; the message says why."""


@dataclass
class Prepared:
    input: np.ndarray  # (28, 28) uint8
    steps: list[tuple[str, np.ndarray]] = field(default_factory=list)
    decisions: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    empty: bool = False


def load_for_model(path: Path) -> Prepared:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            grey = np.asarray(img.convert("L"))
    except (OSError, UnidentifiedImageError) as exc:
        raise PreprocessError(f"cannot read {path.name} as an image ({exc})")
    if grey.shape != (28, 28):
        small = Image.fromarray(grey).resize((28, 28), Image.LANCZOS)
        grey = np.asarray(small)
        if grey[[0, -1]].mean() > 127:
            grey = 255 - grey
    return Prepared(grey.astype(np.uint8))
