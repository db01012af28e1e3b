"""Why the model answered: where it looked, what it sees, and its features.

* `occlusion_maps`: forward passes only, through any predictor's `predict_proba` (Keras, OpenVINO FP32,
  INT8), all images and all occluded copies in ONE batched call.
* `grad_cam`: the gradient map for a Keras model (TensorFlow backend). Integrated gradients was tried
  and left out: its maps stay input-like when the weights are randomised (docs/explain.md).
* `stage_activations`, `first_layer_filters`: the feature maps of every convolutional stage for one
  image and the first layer's filters, as plain arrays.
* `feature_sets`, `penultimate_features`: the features the last layer classifies, the logits and
  per-stage mean activations, for `fmnist.familiarity` (unfamiliar score, nearest training items).
* `openvino_feature_model`, `openvino_feature_sets`: the same features from a run's verified OpenVINO
  IR (FP32 or INT8), without TensorFlow.
* `rank_correlation`: how alike two maps are (the randomisation sanity check of Adebayo et al., 2018).

Every map is float32 over the 28x28 input the model saw; higher = more evidence for the target class.
Keras and TensorFlow are imported inside the functions that need them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from fmnist.predictor import as_batch

SIDE = 28
OUTPUT_LAYER = "probabilities"  # fmnist.models names the softmax layer so in every architecture


def occlusion_windows(patch: int = 6, stride: int = 2, side: int = SIDE) -> list[tuple[int, int]]:
    """Top-left corners of the square patches that tile a side x side image (the last row and column
    reach the edge)."""
    if not 1 <= patch <= side or stride < 1:
        raise ValueError(f"patch must be 1..{side} and stride >= 1, got patch {patch}, stride {stride}")
    starts = list(range(0, side - patch + 1, stride))
    if starts[-1] != side - patch:
        starts.append(side - patch)
    return [(r, c) for r in starts for c in starts]


def occlusion_maps(predict_proba: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                   targets: np.ndarray | list[int] | None = None, patch: int = 6, stride: int = 2,
                   fill: float = 0.0) -> dict[str, np.ndarray]:
    """Occlusion sensitivity (Zeiler & Fergus, 2014) through one `predict_proba` call.

    Each image is copied once per patch position with that patch set to `fill` (0: Fashion-MNIST's
    background); a pixel's value is the mean drop of the target class's probability over the patches
    covering it (negative: hiding it made the class more likely).
    targets: the class to explain per image; default the predicted class.
    Returns maps (N, 28, 28), targets (N,), probabilities (N, 10) of the unoccluded images.
    """
    x = as_batch(images)[..., 0]
    windows = occlusion_windows(patch, stride)
    n, w = len(x), len(windows)
    if n == 0:
        return {"maps": np.zeros((0, SIDE, SIDE), np.float32), "targets": np.zeros(0, np.int64),
                "probabilities": np.zeros((0, 10), np.float32)}
    batch = np.repeat(x[:, None], w + 1, axis=1)  # (N, W + 1, 28, 28); index 0 stays whole
    for i, (r, c) in enumerate(windows, start=1):
        batch[:, i, r:r + patch, c:c + patch] = fill
    probs = np.asarray(predict_proba(batch.reshape(n * (w + 1), SIDE, SIDE)), dtype=np.float64)
    probs = probs.reshape(n, w + 1, -1)
    base = probs[:, 0]
    chosen = base.argmax(axis=1) if targets is None else np.asarray(targets, dtype=np.int64).ravel()
    check_targets(chosen, n, probs.shape[2])
    occluded = np.take_along_axis(probs[:, 1:], chosen[:, None, None], axis=2)[..., 0]  # (N, W)
    drops = base[np.arange(n), chosen][:, None] - occluded
    total = np.zeros((n, SIDE, SIDE))
    cover = np.zeros((SIDE, SIDE))
    for i, (r, c) in enumerate(windows):
        total[:, r:r + patch, c:c + patch] += drops[:, i, None, None]
        cover[r:r + patch, c:c + patch] += 1
    return {"maps": (total / cover).astype(np.float32), "targets": chosen,
            "probabilities": base.astype(np.float32)}


def check_targets(targets: np.ndarray, n_images: int, n_classes: int = 10) -> None:
    """ValueError unless there is one class index in 0..n_classes-1 per image."""
    if len(targets) != n_images:
        raise ValueError(f"{n_images} images but {len(targets)} targets")
    if len(targets) and (targets.min() < 0 or targets.max() >= n_classes):
        raise ValueError(f"targets must be class indices 0..{n_classes - 1}, got {targets.tolist()}")


def penultimate_layer_output(model):
    """The Keras tensor the output layer classifies (the input of the `probabilities` layer)."""
    return model.get_layer(OUTPUT_LAYER).input


def _logits(model, features):
    """Pre-softmax scores from penultimate features through the output layer's own weights."""
    import keras

    layer = model.get_layer(OUTPUT_LAYER)
    return keras.ops.matmul(features, layer.kernel) + layer.bias


def feature_sets(model, images: np.ndarray, layers: list[str] | tuple[str, ...] = (),
                 batch_size: int = 1000) -> dict[str, np.ndarray]:
    """One forward pass of a Keras model built by fmnist.models: "penultimate" (N, D) features, their
    "logits" (N, 10), and for each named layer its output averaged over space (N, C), all float32."""
    import keras

    outputs = [penultimate_layer_output(model)]
    for name in layers:
        out = model.get_layer(name).output
        outputs.append(keras.ops.mean(out, axis=(1, 2)) if len(out.shape) == 4 else out)
    extractor = keras.Model(model.input, outputs)
    x = as_batch(images)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ("penultimate", "logits", *layers)}
    for start in range(0, max(len(x), 1), batch_size):
        found = extractor(x[start:start + batch_size], training=False)
        found = found if isinstance(found, (list, tuple)) else [found]
        parts["penultimate"].append(np.asarray(found[0], dtype=np.float32))
        parts["logits"].append(np.asarray(_logits(model, found[0]), dtype=np.float32))
        for name, value in zip(layers, found[1:]):
            parts[name].append(np.asarray(value, dtype=np.float32))
    return {name: np.concatenate(values) for name, values in parts.items()}


def penultimate_features(model, images: np.ndarray, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D), logits (N, 10)) of a Keras model built by fmnist.models, float32."""
    found = feature_sets(model, images, (), batch_size)
    return found["penultimate"], found["logits"]


def openvino_feature_model(ov_model):
    """A compiled OpenVINO model (CPU) answering `openvino_feature_sets` from a run's verified
    classifier IR (the `model` of fmnist.backends' OpenVINO backends, FP32 or INT8): the softmax's
    input (logits), the input of the last MatMul (penultimate features) and the first ReLU (the first
    stage) become outputs. ValueError when the graph does not end Softmax <- Add <- MatMul."""
    import openvino as ov

    from fmnist.openvino_ir import core

    softmax = ov_model.get_results()[0].input_value(0).get_node()
    add = softmax.input_value(0).get_node()
    matmul = add.input_value(0).get_node()
    if (softmax.get_type_name(), add.get_type_name(), matmul.get_type_name()) != ("Softmax", "Add", "MatMul"):
        raise ValueError("the IR does not end in Softmax <- Add <- MatMul (not an fmnist classifier)")
    relus = [op for op in ov_model.get_ordered_ops() if op.get_type_name() == "Relu"]
    if not relus:
        raise ValueError("the IR has no ReLU stage")
    outputs = [add.output(0), matmul.input_value(0), relus[0].output(0)]
    features = ov.Model([ov.opset13.result(o) for o in outputs], ov_model.get_parameters(), "fmnist_features")
    return core().compile_model(features, "CPU")


def openvino_feature_sets(compiled, images: np.ndarray, batch_size: int = 1000) -> dict[str, np.ndarray]:
    """"penultimate" (N, D), "logits" (N, 10) and "first_stage" (N, C: the first ReLU's output averaged
    over space) through a model from `openvino_feature_model`, float32 (the Keras twin: feature_sets)."""
    x = as_batch(images)
    request = compiled.create_infer_request()
    parts: dict[str, list[np.ndarray]] = {"logits": [], "penultimate": [], "first_stage": []}
    for start in range(0, max(len(x), 1), batch_size):
        request.infer({0: x[start:start + batch_size]})
        logits, feats, first = (request.get_output_tensor(i).data for i in range(3))
        # the IR computes in NCHW (channels at axis 1), Keras in NHWC
        parts["logits"].append(np.array(logits, dtype=np.float32))
        parts["penultimate"].append(np.array(feats, dtype=np.float32).reshape(len(feats), -1))
        parts["first_stage"].append(np.array(first, dtype=np.float32).mean(axis=(2, 3)))
    return {name: np.concatenate(values) for name, values in parts.items()}


def last_conv_stage(model, min_side: int = 7) -> str:
    """Name of the last layer with a spatial (N, H, W, C) output at least min_side wide (the 3x3 last
    stage of a 4-stage model is too coarse for a map over 28x28), else the last spatial layer."""
    spatial = [layer for layer in model.layers[1:]
               if len(layer.output.shape) == 4 and type(layer).__name__ != "Dropout"]
    if not spatial:
        raise ValueError(f"model {model.name} has no convolutional layer")
    wide = [layer for layer in spatial if layer.output.shape[1] >= min_side]
    return (wide or spatial)[-1].name


def _target_gradients(model, x: np.ndarray, targets: np.ndarray | list[int] | None, layer: str):
    """(activations of `layer`, their gradients of the target logits, the targets)."""
    import keras
    import tensorflow as tf

    sub = keras.Model(model.input, [model.get_layer(layer).output, penultimate_layer_output(model)])
    with tf.GradientTape() as tape:
        acts, features = sub(tf.convert_to_tensor(x), training=False)
        tape.watch(acts)  # an intermediate tensor: watched explicitly so the tape keeps it
        logits = _logits(model, features)
        chosen = (np.asarray(tf.argmax(logits, axis=1)) if targets is None
                  else np.asarray(targets, dtype=np.int64).ravel())
        check_targets(chosen, len(x), int(logits.shape[1]))
        score = tf.reduce_sum(tf.gather(logits, chosen, axis=1, batch_dims=1))
    return np.asarray(acts), np.asarray(tape.gradient(score, acts)), chosen


def grad_cam(model, images: np.ndarray, targets: np.ndarray | list[int] | None = None,
             layer: str | None = None) -> dict[str, np.ndarray]:
    """Grad-CAM (Selvaraju et al., 2017) of the target logits at `layer` (default: the last spatial
    layer), ReLU'd and resized bilinearly to 28x28. Returns maps (N, 28, 28) and targets (N,)."""
    from scipy.ndimage import zoom

    x = as_batch(images)
    acts, grads, chosen = _target_gradients(model, x, targets, layer or last_conv_stage(model))
    weights = grads.mean(axis=(1, 2))  # (N, C): global-average-pooled gradients
    cams = np.maximum(np.einsum("nhwc,nc->nhw", acts, weights), 0.0)
    h, w = cams.shape[1:]
    maps = np.stack([zoom(c, (SIDE / h, SIDE / w), order=1, mode="nearest", grid_mode=True) for c in cams])
    return {"maps": maps.astype(np.float32), "targets": chosen}


def activation_layers(model) -> list[str]:
    """Names of the layers whose output is a spatial map after its non-linearity (Conv2D with an
    activation, ReLU, LeakyReLU, max-pooling), in order: the model's convolutional stages."""
    names = []
    for layer in model.layers[1:]:
        kind = type(layer).__name__
        activation = getattr(getattr(layer, "activation", None), "__name__", "linear")
        if len(layer.output.shape) == 4 and (kind in ("ReLU", "LeakyReLU", "MaxPooling2D")
                                             or (kind == "Conv2D" and activation != "linear")):
            names.append(layer.name)
    return names


def stage_activations(model, image: np.ndarray) -> list[dict]:
    """Feature maps of every convolutional stage (`activation_layers`) for one image, in order: name,
    kind and maps (C, H, W) float32."""
    import keras

    wanted = [model.get_layer(name) for name in activation_layers(model)]
    outputs = keras.Model(model.input, [layer.output for layer in wanted])(as_batch(image)[:1], training=False)
    if len(wanted) == 1:
        outputs = [outputs]
    return [{"name": layer.name, "kind": type(layer).__name__,
             "maps": np.transpose(np.asarray(out, dtype=np.float32)[0], (2, 0, 1))}
            for layer, out in zip(wanted, outputs)]


def first_layer_filters(model) -> np.ndarray:
    """The first Conv2D layer's kernels as (filters, k, k) float32 (the input has one channel)."""
    for layer in model.layers:
        if type(layer).__name__ == "Conv2D":
            kernel = np.asarray(layer.get_weights()[0], dtype=np.float32)  # (k, k, 1, F)
            return np.transpose(kernel[:, :, 0, :], (2, 0, 1))
    raise ValueError(f"model {model.name} has no Conv2D layer")


def normalise_map(heat: np.ndarray) -> np.ndarray:
    """A map scaled to [-1, 1] by its largest absolute value (all zeros stays zeros), for display."""
    m = np.asarray(heat, dtype=np.float32)
    top = float(np.abs(m).max()) if m.size else 0.0
    return m / top if top > 0 else np.zeros_like(m)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps' values (flattened); 0 when either is constant."""
    from scipy.stats import spearmanr

    x, y = np.ravel(a), np.ravel(b)
    if x.shape != y.shape:
        raise ValueError(f"maps of different sizes: {np.shape(a)} and {np.shape(b)}")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(spearmanr(x, y).statistic)
