"""What defines a training run, as plain values: TrainConfig, its bounds, the presets and the choices.

No TensorFlow, no file access: the CLI, the web app (which never imports TensorFlow), run storage and
the Keras backend all read configs through this module.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from fmnist.models import ARCHITECTURES, DEFAULTS

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "onecycle")
PRECISIONS = ("float32", "bfloat16")


@dataclass
class TrainConfig:
    """Everything that defines a training run; JSON round-trips through to_dict/from_dict."""

    arch: str = "paper"
    widths: list[int] | None = None  # None: the architecture's defaults (models.DEFAULTS)
    dropout: float | list[float] | None = None  # None: defaults; one number or (conv, dense)
    epochs: int = 15
    batch_size: int = 150
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    augment_flip: bool = False
    augment_shift: int = 0  # pixels of random translation
    augment_scale: float = 0.0  # random zoom about the centre, up to this fraction either way (0.1 = ±10%)
    augment_photo: float = 0.0  # strength (0-1) of the photo-like changes (fmnist.augment.photo): tone, tilt, edges, specks
    augment_erase: float = 0.0  # probability of random erasing (one black rectangle per image)
    ema: float = 0.0  # weight-averaging momentum, 0 = off
    tta_flip: bool = False  # average predictions with the mirrored image at test time
    tta_shift: int = 0  # also average the views moved this many pixels up, down, left and right (0: none)
    val_fraction: float = 0.1
    seed: int = 0
    limit: int | None = None  # stratified subset of the training set, for quick runs
    precision: str = "float32"  # or "bfloat16": mixed-precision training (weights stay float32)
    tensorboard: bool = False
    preset: str | None = None

    # Bounds shared by the CLI and the app: (low, high) inclusive.
    BOUNDS = {
        "epochs": (1, 200), "batch_size": (8, 4096), "learning_rate": (1e-6, 1.0),
        "warmup_epochs": (0.0, 50.0), "weight_decay": (0.0, 0.5), "label_smoothing": (0.0, 0.5),
        "augment_shift": (0, 6), "augment_scale": (0.0, 0.3), "tta_shift": (0, 3),
        "augment_photo": (0.0, 1.0), "augment_erase": (0.0, 1.0), "ema": (0.0, 0.9999), "val_fraction": (0.0, 0.5),
        "seed": (0, 2**31 - 1), "limit": (100, 60_000),
    }

    def validate(self) -> "TrainConfig":
        """Raise ValueError with a specific message for any out-of-range or unknown value."""
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        for name, (low, high) in self.BOUNDS.items():
            value = getattr(self, name)
            if value is None and name == "limit":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            if not low <= value <= high:
                raise ValueError(f"{name} must be between {low} and {high}, got {value}")
        for name in ("epochs", "batch_size", "augment_shift", "tta_shift", "seed"):
            if int(getattr(self, name)) != getattr(self, name):
                raise ValueError(f"{name} must be a whole number, got {getattr(self, name)}")
        n_widths = (2, 3, 4) if self.arch == "modern" else (len(DEFAULTS[self.arch]["widths"]),)
        if self.widths is not None:
            if (not isinstance(self.widths, (list, tuple)) or len(self.widths) not in n_widths
                    or not all(isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= 1024
                               for w in self.widths)):
                raise ValueError(f"{self.arch} takes {' or '.join(map(str, n_widths))} widths, each 1-1024, "
                                 f"got {self.widths}")
        if self.dropout is not None:
            values = self.dropout if isinstance(self.dropout, (list, tuple)) else [self.dropout]
            if (len(values) not in (1, 2) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                     and 0.0 <= v <= 0.9 for v in values)):
                raise ValueError(f"dropout must be one or two numbers between 0 and 0.9, got {self.dropout}")
        if self.limit is not None and self.limit * self.val_fraction < 10 and self.val_fraction > 0:
            raise ValueError("limit is too small for a validation split: use at least 10 validation images")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build and validate from plain values, refusing unknown keys (e.g. a tampered config)."""
        if not isinstance(values, dict):
            raise ValueError("config must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        values = dict(values)
        if isinstance(values.get("widths"), tuple):
            values["widths"] = list(values["widths"])
        return cls(**values).validate()

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    @property
    def params_key(self) -> str:
        return self.preset or self.arch


# Presets are plain values; see README "Training recipes" for how each was measured.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(arch="paper", epochs=15, batch_size=150, optimizer="adam", learning_rate=1e-3),
    "fast": dict(arch="modern", widths=[16, 32, 64, 128], epochs=5, batch_size=256, optimizer="adamw",
                 learning_rate=5e-3, schedule="onecycle", weight_decay=5e-4, label_smoothing=0.1,
                 tta_shift=1),
    "best": dict(arch="modern", widths=[24, 48, 96, 192], epochs=18, batch_size=256, optimizer="adamw",
                 learning_rate=4e-3, schedule="onecycle", weight_decay=5e-4, label_smoothing=0.1,
                 augment_flip=True, augment_shift=2, tta_flip=True, precision="bfloat16"),
}


def preset_config(name: str | None, **overrides) -> TrainConfig:
    """A preset's TrainConfig (name None: TrainConfig's defaults) with overrides: the one way the CLI,
    the Train page and the benchmarks build a configuration. None values mean "not given". Choosing
    another architecture drops the preset's widths (they belong to its own architecture).
    ValueError saying what is wrong."""
    if name is not None and name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    values: dict[str, Any] = {**PRESETS[name], "preset": name} if name is not None else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    if "arch" in given and given["arch"] != values.get("arch"):
        values.pop("widths", None)
    return TrainConfig(**{**values, **given}).validate()
