"""Model architectures by name, built from plain values so a saved config can rebuild them.

Every model takes raw pixels (N, 28, 28, 1) as float32 in 0..255 and rescales inside, so all
backends (Keras, OpenVINO) and the photo pipeline feed it the same thing. Rescaling has no
parameters, so the counts match the report's tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ARCHITECTURES: dict[str, str] = {
    "paper": "The report's final model: 3 conv + 4 dense layers with dropout (590,346 parameters).",
    "paper-baseline": "The report's first model: 2 conv + 3 dense layers, no dropout (565,386 parameters).",
    "modern": "Small CNN: a conv stem, then stages of two conv-BatchNorm-ReLU blocks after max-pooling, global average pooling (2-4 widths).",
}

# Default widths and dropout per architecture; overridable through build_model(widths=..., dropout=...).
DEFAULTS: dict[str, dict[str, Any]] = {
    "paper": {"widths": (32, 64, 128, 256, 256, 512), "dropout": (0.2, 0.1)},
    "paper-baseline": {"widths": (32, 64, 256, 512), "dropout": (0.0, 0.0)},
    "modern": {"widths": (32, 64, 128), "dropout": (0.0, 0.1)},
}


@dataclass(frozen=True)
class LayerRow:
    name: str
    kind: str
    output_shape: str
    params: int


def _pair(dropout: float | tuple[float, float] | list[float] | None, default: tuple[float, float]):
    if dropout is None:
        return default
    if isinstance(dropout, (int, float)):
        return float(dropout), float(dropout)
    return float(dropout[0]), float(dropout[1])


def build_model(arch: str = "paper", widths: tuple[int, ...] | list[int] | None = None,
                dropout: float | tuple[float, float] | None = None, seed: int | None = None,
                precision: str = "float32"):
    """Build an uncompiled Keras model by architecture name.

    widths: channel/unit counts (see DEFAULTS for each architecture's layout).
    dropout: (after conv blocks, after dense layers) or one number for both.
    precision: "float32", or "bfloat16" (mixed: bf16 compute, float32 weights; fast on CPUs with
    AMX/AVX512-BF16 for wide convolutions). Weights are float32 either way, so a bf16-trained model
    loads into a float32 build for inference and export.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    import keras
    from keras import layers

    if seed is not None:
        keras.utils.set_random_seed(seed)
    spec = DEFAULTS[arch]
    widths = tuple(int(w) for w in (widths or spec["widths"]))
    n_ok = 2 <= len(widths) <= 4 if arch == "modern" else len(widths) == len(spec["widths"])
    if not n_ok or min(widths) < 1:
        raise ValueError(f"{arch} takes {len(spec['widths'])} positive widths, got {widths}")
    conv_drop, dense_drop = _pair(dropout, spec["dropout"])

    policy = {"float32": "float32", "bfloat16": "mixed_bfloat16"}[precision]

    def L(cls, *args, **kwargs):  # every hidden layer computes in the chosen precision
        return cls(*args, dtype=policy, **kwargs)

    inputs = keras.Input((28, 28, 1), name="pixels")
    x = L(layers.Rescaling, 1.0 / 255.0, name="rescale")(inputs)
    if arch == "paper":
        c1, c2, c3, d1, d2, d3 = widths
        x = L(layers.Conv2D, c1, 3, activation="relu", name="conv1")(x)
        x = L(layers.MaxPooling2D, 2, name="pool1")(x)
        x = L(layers.Dropout, conv_drop, name="drop1")(x)
        x = L(layers.Conv2D, c2, 3, activation="relu", name="conv2")(x)
        x = L(layers.MaxPooling2D, 2, name="pool2")(x)
        x = L(layers.Dropout, conv_drop, name="drop2")(x)
        x = L(layers.Conv2D, c3, 3, activation="leaky_relu", name="conv3")(x)
        x = L(layers.Flatten, name="flatten")(x)
        x = L(layers.Dense, d1, activation="relu", name="dense1")(x)
        x = L(layers.Dropout, dense_drop, name="drop3")(x)
        x = L(layers.Dense, d2, activation="relu", name="dense2")(x)
        x = L(layers.Dropout, dense_drop, name="drop4")(x)
        x = L(layers.Dense, d3, activation="relu", name="dense3")(x)
    elif arch == "paper-baseline":
        c1, c2, d1, d2 = widths
        x = L(layers.Conv2D, c1, 3, activation="relu", name="conv1")(x)
        x = L(layers.MaxPooling2D, 2, name="pool1")(x)
        if conv_drop:
            x = L(layers.Dropout, conv_drop, name="drop1")(x)
        x = L(layers.Conv2D, c2, 3, activation="relu", name="conv2")(x)
        x = L(layers.MaxPooling2D, 2, name="pool2")(x)
        x = L(layers.Flatten, name="flatten")(x)
        x = L(layers.Dense, d1, activation="relu", name="dense1")(x)
        if dense_drop:
            x = L(layers.Dropout, dense_drop, name="drop2")(x)
        x = L(layers.Dense, d2, activation="relu", name="dense2")(x)
    else:  # modern: a cheap full-resolution stem, then per stage: pool + two conv-BN-ReLU
        for stage, width in enumerate(widths):
            if stage:
                x = L(layers.MaxPooling2D, 2, name=f"pool{stage}")(x)
                if conv_drop:
                    x = L(layers.Dropout, conv_drop, name=f"drop{stage}")(x)
            for j in (1,) if stage == 0 else (1, 2):
                x = L(layers.Conv2D, width, 3, padding="same", use_bias=False, name=f"conv{stage}_{j}")(x)
                # momentum 0.9: short CPU runs (a few hundred steps) need moving statistics that settle
                x = L(layers.BatchNormalization, momentum=0.9, name=f"bn{stage}_{j}")(x)
                x = L(layers.ReLU, name=f"relu{stage}_{j}")(x)
        x = L(layers.GlobalAveragePooling2D, name="gap")(x)
        if dense_drop:
            x = L(layers.Dropout, dense_drop, name="drop_head")(x)
    # the output layer stays float32: softmax probabilities must sum to 1 exactly enough to compare
    outputs = layers.Dense(10, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=arch.replace("-", "_"))


def layer_table(model) -> list[LayerRow]:
    """One row per layer (input excluded): name, type, output shape and parameter count."""
    rows = []
    for layer in model.layers[1:]:
        shape = getattr(layer, "output", None)
        shape = tuple(shape.shape) if shape is not None else ()
        shape_text = "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"
        rows.append(LayerRow(layer.name, type(layer).__name__, shape_text, int(layer.count_params())))
    return rows


def count_params(model) -> int:
    return int(model.count_params())


def format_layer_table(rows: list[LayerRow]) -> str:
    """The layer table as aligned text, like Keras's summary, for the CLI."""
    header = ("Layer", "Type", "Output shape", "Params")
    lines = [header] + [(r.name, r.kind, r.output_shape, f"{r.params:,}") for r in rows]
    widths = [max(len(str(line[i])) for line in lines) for i in range(4)]
    out = [
        "  ".join(str(c).ljust(w) if i < 3 else str(c).rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
        for line in lines
    ]
    out.insert(1, "-" * len(out[0]))
    out.append(f"Total parameters: {sum(r.params for r in rows):,}")
    return "\n".join(out)
