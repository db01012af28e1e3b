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


def layer_specs(arch: str = "paper", widths: tuple[int, ...] | list[int] | None = None,
                dropout: float | tuple[float, float] | None = None) -> list[tuple[str, str, dict]]:
    """The architecture as plain values: (layer name, Keras layer class, keyword arguments) in order.

    widths: channel/unit counts (see DEFAULTS for each architecture's layout).
    dropout: (after conv blocks, after dense layers) or one number for both.
    build_model turns this into Keras layers; describe_layers computes the layer table from it
    without TensorFlow (the web app shows it before training without importing TensorFlow).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    spec = DEFAULTS[arch]
    widths = tuple(int(w) for w in (widths or spec["widths"]))
    n_ok = 2 <= len(widths) <= 4 if arch == "modern" else len(widths) == len(spec["widths"])
    if not n_ok or min(widths) < 1:
        raise ValueError(f"{arch} takes {len(spec['widths'])} positive widths, got {widths}")
    conv_drop, dense_drop = _pair(dropout, spec["dropout"])

    out: list[tuple[str, str, dict]] = [("rescale", "Rescaling", {"scale": 1.0 / 255.0})]

    def add(name: str, kind: str, **kwargs) -> None:
        out.append((name, kind, kwargs))

    def conv(name: str, filters: int, **kwargs) -> None:
        add(name, "Conv2D", filters=filters, kernel_size=3, **kwargs)

    if arch == "paper":
        c1, c2, c3, d1, d2, d3 = widths
        conv("conv1", c1, activation="relu")
        add("pool1", "MaxPooling2D", pool_size=2)
        add("drop1", "Dropout", rate=conv_drop)
        conv("conv2", c2, activation="relu")
        add("pool2", "MaxPooling2D", pool_size=2)
        add("drop2", "Dropout", rate=conv_drop)
        conv("conv3", c3, activation="leaky_relu")
        add("flatten", "Flatten")
        add("dense1", "Dense", units=d1, activation="relu")
        add("drop3", "Dropout", rate=dense_drop)
        add("dense2", "Dense", units=d2, activation="relu")
        add("drop4", "Dropout", rate=dense_drop)
        add("dense3", "Dense", units=d3, activation="relu")
    elif arch == "paper-baseline":
        c1, c2, d1, d2 = widths
        conv("conv1", c1, activation="relu")
        add("pool1", "MaxPooling2D", pool_size=2)
        if conv_drop:
            add("drop1", "Dropout", rate=conv_drop)
        conv("conv2", c2, activation="relu")
        add("pool2", "MaxPooling2D", pool_size=2)
        add("flatten", "Flatten")
        add("dense1", "Dense", units=d1, activation="relu")
        if dense_drop:
            add("drop2", "Dropout", rate=dense_drop)
        add("dense2", "Dense", units=d2, activation="relu")
    else:  # modern: a cheap full-resolution stem, then per stage: pool + two conv-BN-ReLU
        for stage, width in enumerate(widths):
            if stage:
                add(f"pool{stage}", "MaxPooling2D", pool_size=2)
                if conv_drop:
                    add(f"drop{stage}", "Dropout", rate=conv_drop)
            for j in (1,) if stage == 0 else (1, 2):
                conv(f"conv{stage}_{j}", width, padding="same", use_bias=False)
                # momentum 0.9: short CPU runs (a few hundred steps) need moving statistics that settle
                add(f"bn{stage}_{j}", "BatchNormalization", momentum=0.9)
                add(f"relu{stage}_{j}", "ReLU")
        add("gap", "GlobalAveragePooling2D")
        if dense_drop:
            add("drop_head", "Dropout", rate=dense_drop)
    # the output layer stays float32: softmax probabilities must sum to 1 exactly enough to compare
    add("probabilities", "Dense", units=10, activation="softmax", dtype="float32")
    return out


def build_model(arch: str = "paper", widths: tuple[int, ...] | list[int] | None = None,
                dropout: float | tuple[float, float] | None = None, seed: int | None = None,
                precision: str = "float32"):
    """Build an uncompiled Keras model by architecture name (layers from `layer_specs`).

    precision: "float32", or "bfloat16" (mixed: bf16 compute, float32 weights; fast on CPUs with
    AMX/AVX512-BF16 for wide convolutions). Weights are float32 either way, so a bf16-trained model
    loads into a float32 build for inference and export.
    """
    specs = layer_specs(arch, widths, dropout)
    import keras
    from keras import layers

    if seed is not None:
        keras.utils.set_random_seed(seed)
    policy = {"float32": "float32", "bfloat16": "mixed_bfloat16"}[precision]
    inputs = keras.Input((28, 28, 1), name="pixels")
    x = inputs
    for name, kind, kwargs in specs:  # every hidden layer computes in the chosen precision
        x = getattr(layers, kind)(**{"dtype": policy, **kwargs}, name=name)(x)
    return keras.Model(inputs, x, name=arch.replace("-", "_"))


def describe_layers(arch: str = "paper", widths: tuple[int, ...] | list[int] | None = None,
                    dropout: float | tuple[float, float] | None = None) -> list[LayerRow]:
    """The layer table of build_model(arch, widths, dropout), computed from `layer_specs` alone
    (tests check it equals Keras's own table for every architecture)."""
    shape: tuple[int, ...] = (28, 28, 1)
    rows = []
    for name, kind, kw in layer_specs(arch, widths, dropout):
        params = 0
        if kind == "Conv2D":
            h, w, c = shape
            k = kw["kernel_size"]
            if kw.get("padding", "valid") == "valid":
                h, w = h - k + 1, w - k + 1
            params = k * k * c * kw["filters"] + (kw["filters"] if kw.get("use_bias", True) else 0)
            shape = (h, w, kw["filters"])
        elif kind == "MaxPooling2D":
            shape = (shape[0] // kw["pool_size"], shape[1] // kw["pool_size"], shape[2])
        elif kind == "BatchNormalization":
            params = 4 * shape[-1]  # gamma, beta, moving mean, moving variance
        elif kind == "Flatten":
            shape = (shape[0] * shape[1] * shape[2],)
        elif kind == "GlobalAveragePooling2D":
            shape = (shape[-1],)
        elif kind == "Dense":
            params = shape[-1] * kw["units"] + kw["units"]
            shape = (kw["units"],)
        rows.append(LayerRow(name, kind, "(" + ", ".join(["None", *map(str, shape)]) + ")", params))
    return rows


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
