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


# ---------------------------------------------------------------- "Look inside" without TensorFlow

STAGE_KINDS = ("ReLU", "LeakyReLU", "MaxPooling2D")  # Keras layers that end a stage (plus activated Conv2D)
OPENVINO_STAGE_OPS = ("Relu", "PRelu", "MaxPool")  # their operations in an IR


def stage_specs(arch: str, widths: tuple[int, ...] | list[int] | None = None,
                dropout: float | tuple[float, float] | None = None) -> list[tuple[str, str]]:
    """(name, Keras kind) of the stages `activation_layers` finds, from the architecture's plain
    description (fmnist.models.layer_specs), without building the model."""
    from fmnist.models import layer_specs

    out = []
    for name, kind, kwargs in layer_specs(arch, widths, dropout):
        activated_conv = kind == "Conv2D" and kwargs.get("activation") not in (None, "linear")
        if kind in STAGE_KINDS or activated_conv:
            out.append((name, kind))
    return out


def _stage_ops(ov_model) -> list:
    """The IR's stage-ending operations (ReLU-like, max-pooling) with a 4-D output, in graph order."""
    return [op for op in ov_model.get_ordered_ops()
            if op.get_type_name() in OPENVINO_STAGE_OPS and op.output(0).get_partial_shape().rank.get_length() == 4]


class OpenVINOInspector:
    """One compiled model for a run's verified classifier IR (FP32 or INT8) that answers both the
    features (`openvino_feature_sets`' keys) and the feature maps of every stage, so an app compiles
    it once per backend instead of once per call (a compile takes 1-2 s on 2 cores, an answer
    milliseconds). Outputs: logits, penultimate features, then every stage (`_stage_ops`).
    Thread-safe: each call uses its own infer request."""

    def __init__(self, ov_model, config: dict | None = None):
        import openvino as ov

        from fmnist.openvino_ir import core

        softmax = ov_model.get_results()[0].input_value(0).get_node()
        add = softmax.input_value(0).get_node()
        matmul = add.input_value(0).get_node()
        if (softmax.get_type_name(), add.get_type_name(), matmul.get_type_name()) != ("Softmax", "Add", "MatMul"):
            raise ValueError("the IR does not end in Softmax <- Add <- MatMul (not an fmnist classifier)")
        stages = _stage_ops(ov_model)
        relus = [i for i, op in enumerate(stages) if op.get_type_name() != "MaxPool"]
        if not relus:
            raise ValueError("the IR has no ReLU stage")
        self.first_stage = relus[0]
        self.stage_types = [op.get_type_name() for op in stages]
        outputs = [add.output(0), matmul.input_value(0)] + [op.output(0) for op in stages]
        model = ov.Model([ov.opset13.result(o) for o in outputs], ov_model.get_parameters(), "fmnist_inspect")
        self.compiled = core().compile_model(model, "CPU", config or {})

    def _infer(self, x: np.ndarray) -> list[np.ndarray]:
        request = self.compiled.create_infer_request()
        request.infer({0: np.ascontiguousarray(x)})
        return [np.array(request.get_output_tensor(i).data, dtype=np.float32, copy=True)
                for i in range(2 + len(self.stage_types))]

    def features(self, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
        """"penultimate" (N, D), "logits" (N, 10), "first_stage" (N, C): as `openvino_feature_sets`."""
        x = as_batch(images)
        parts: dict[str, list[np.ndarray]] = {"logits": [], "penultimate": [], "first_stage": []}
        for start in range(0, max(len(x), 1), batch_size):
            found = self._infer(x[start:start + batch_size])
            parts["logits"].append(found[0])
            parts["penultimate"].append(found[1].reshape(len(found[1]), -1))
            parts["first_stage"].append(found[2 + self.first_stage].mean(axis=(2, 3)))  # NCHW
        return {name: np.concatenate(values) for name, values in parts.items()}

    def stages(self, image: np.ndarray) -> list[np.ndarray]:
        """Every stage's feature maps (C, H, W) for one image, in graph order (the IR computes NCHW)."""
        return [maps[0] for maps in self._infer(as_batch(image)[:1])[2:]]


def openvino_stage_activations(inspector: OpenVINOInspector, image: np.ndarray,
                               names: list[tuple[str, str]] | None = None) -> list[dict]:
    """`stage_activations` through an IR: name, kind and maps (C, H, W) float32 per stage. `names`
    ((name, kind) per stage, from `stage_specs`) label them like Keras does when the counts agree;
    otherwise they are named by their IR operation ("stage 1 (Relu)")."""
    maps = inspector.stages(image)
    if names is None or len(names) != len(maps):
        names = [(f"stage {i + 1} ({kind})", kind) for i, kind in enumerate(inspector.stage_types)]
    return [{"name": name, "kind": kind, "maps": m} for (name, kind), m in zip(names, maps)]


def openvino_first_layer_filters(ov_model) -> np.ndarray:
    """The first convolution's kernels (filters, k, k) float32 as the IR holds them: any BatchNorm is
    folded in (each filter scaled by its own factor) and INT8 weights are dequantised, by evaluating
    the weights' constant sub-graph (no input needed)."""
    import openvino as ov

    from fmnist.openvino_ir import core

    for op in ov_model.get_ordered_ops():
        if op.get_type_name() == "Convolution":
            weights = op.input_value(1)
            if weights.get_node().get_type_name() == "Constant":
                kernel = np.asarray(weights.get_node().get_data(), dtype=np.float32)
            else:
                folded = ov.Model([ov.opset13.result(weights)], [], "fmnist_filters")
                request = core().compile_model(folded, "CPU").create_infer_request()
                request.infer({})
                kernel = np.array(request.get_output_tensor(0).data, dtype=np.float32)
            return kernel[:, 0]  # (F, in=1, k, k)
    raise ValueError("the IR has no convolution")


class KerasInspector:
    """`feature_sets` (with the first stage), `stage_activations` and `grad_cam` for one Keras model,
    with their sub-models built and traced once: for a long-lived process asking about the same model
    many times (the app's Keras worker), where building a `keras.Model` and running it eagerly per call
    cost 30-250 ms per answer on 2 cores. Same values as the functions above (tested). Not
    thread-safe: callers serialise (the worker answers one request at a time)."""

    def __init__(self, model):
        import keras
        import tensorflow as tf

        self.model = model
        self.stage_layers = activation_layers(model)
        if not self.stage_layers:
            raise ValueError(f"model {model.name} has no convolutional stage")
        self.first = self.stage_layers[0]
        output = model.get_layer(OUTPUT_LAYER)
        self._kernel, self._bias = (np.asarray(w, dtype=np.float32) for w in output.get_weights())
        self._features = keras.Model(model.input, [penultimate_layer_output(model),
                                                   model.get_layer(self.first).output])
        self._stages = keras.Model(model.input, [model.get_layer(n).output for n in self.stage_layers])
        self.cam_layer = last_conv_stage(model)
        cam = keras.Model(model.input, [model.get_layer(self.cam_layer).output, penultimate_layer_output(model)])

        @tf.function(reduce_retracing=True)
        def gradients(x, chosen):
            with tf.GradientTape() as tape:
                acts, features = cam(x, training=False)
                tape.watch(acts)
                logits = _logits(model, features)
                score = tf.reduce_sum(tf.gather(logits, chosen, axis=1, batch_dims=1))
            return acts, tape.gradient(score, acts)

        self._gradients = gradients

    def features(self, images: np.ndarray, batch_size: int = 1000) -> dict[str, np.ndarray]:
        """"penultimate" (N, D), "logits" (N, 10), "first_stage" (N, C: the first stage averaged over space)."""
        x = as_batch(images)
        parts: dict[str, list[np.ndarray]] = {"penultimate": [], "logits": [], "first_stage": []}
        for start in range(0, max(len(x), 1), batch_size):
            features, first = self._features.predict_on_batch(x[start:start + batch_size])
            features = np.asarray(features, dtype=np.float32)
            parts["penultimate"].append(features)
            parts["logits"].append(features @ self._kernel + self._bias)
            parts["first_stage"].append(np.asarray(first, dtype=np.float32).mean(axis=(1, 2)))
        return {name: np.concatenate(values) for name, values in parts.items()}

    def stages(self, image: np.ndarray) -> list[dict]:
        """`stage_activations` of one image: name, kind and maps (C, H, W) per stage."""
        outputs = self._stages.predict_on_batch(as_batch(image)[:1])
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return [{"name": name, "kind": type(self.model.get_layer(name)).__name__,
                 "maps": np.transpose(np.asarray(out, dtype=np.float32)[0], (2, 0, 1))}
                for name, out in zip(self.stage_layers, outputs)]

    def grad_cam(self, images: np.ndarray, targets: np.ndarray | list[int] | None = None) -> dict[str, np.ndarray]:
        """`grad_cam` at the default layer (`last_conv_stage`): maps (N, 28, 28) and targets (N,)."""
        import tensorflow as tf
        from scipy.ndimage import zoom

        x = as_batch(images)
        chosen = (self.features(x)["logits"].argmax(axis=1) if targets is None
                  else np.asarray(targets, dtype=np.int64).ravel())
        check_targets(chosen, len(x), len(self._bias))
        acts, grads = (np.asarray(t) for t in self._gradients(tf.convert_to_tensor(x), tf.constant(chosen)))
        cams = np.maximum(np.einsum("nhwc,nc->nhw", acts, grads.mean(axis=(1, 2))), 0.0)
        h, w = cams.shape[1:]
        maps = np.stack([zoom(c, (SIDE / h, SIDE / w), order=1, mode="nearest", grid_mode=True) for c in cams])
        return {"maps": maps.astype(np.float32), "targets": chosen}
