"""Why the model answered, for the CLI's `explain` (a batch) and the app (one image at a time): the
answer with calibrated probabilities, the occlusion heat map over the 28x28 input (forward passes
only, so every backend explains itself), Grad-CAM for Keras backends, the nearest training items in
the model's feature space and the unfamiliar-input fields, all from the run's verified trust
artifacts (fmnist.trust). Plus what the app draws, as plain RGB arrays (no plotting library): a heat
map over its input, and grids of feature maps and filters for "Look inside".

Features come from the backend itself (`backend.features`: the Keras worker, or the OpenVINO
backend's inspection model compiled once), so an explanation never imports TensorFlow where the
backend does not already run it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fmnist.explore import enlarge

SHADES = " .:-=+*#%@"  # the plain text heat map, weakest to strongest
METHOD = "occlusion"
NO_TRUST = ("Not calibrated, and no familiarity check for this run: it has no trust artifacts "
            "(compute them with `python -m fmnist.trust --run {run}`).")


@dataclass(frozen=True)
class Explanation:
    """Everything the app shows about one image's answer."""

    label: int
    probabilities: np.ndarray  # (10,), calibrated when `calibrated`
    calibrated: bool
    heatmap: np.ndarray  # (28, 28) occlusion: mean drop of the answer's probability, > 0 = evidence for it
    method: str
    nearest: list[dict]  # [{"index" (official training set), "label", "distance"}]; [] without trust
    unfamiliar: bool | None  # None: the run has no familiarity check
    unfamiliar_score: float | None  # higher = less like Fashion-MNIST; over 1.0 = unfamiliar
    gradcam: np.ndarray | None = None  # (28, 28), Keras backends only
    notes: tuple[str, ...] = ()  # plain sentences: no calibration, refused trust bundle, ...
    seconds: dict[str, float] = field(default_factory=dict)  # where the time went
    position: np.ndarray | None = None  # (2,) where it sits on the run's feature map (featuremap.place)

    @property
    def confidence(self) -> float:
        return float(self.probabilities[self.label])


def trust_note(run_dir: str | Path, refused: str | None = None) -> str:
    """The plain sentence shown instead of calibration and the familiarity check: the run has no
    trust bundle, or (`refused`: the one-line reason) its bundle was refused."""
    if refused:
        return f"Not calibrated, and no familiarity check: {refused}"
    return NO_TRUST.format(run=run_dir)


def load_trust(run_dir: str | Path):
    """(the run's verified trust.Trust, None), or (None, a plain sentence why there is none): a run
    without the bundle, or one whose bundle is refused (tampered, malformed)."""
    from fmnist import trust

    if not trust.has_trust(run_dir):
        return None, trust_note(run_dir)
    try:
        return trust.load(run_dir), None
    except trust.TrustError as exc:
        return None, trust_note(run_dir, str(exc))


def backend_features(backend, images: np.ndarray) -> dict[str, np.ndarray]:
    """"penultimate", "logits", "first_stage" through the backend's own `features` where it has one
    (the Keras worker, OpenVINO's cached inspection model), else trust.backend_features."""
    if hasattr(backend, "features"):
        return backend.features(images)
    from fmnist import trust

    return trust.backend_features(backend, images)


def _grad_cam(backend, images: np.ndarray, targets: np.ndarray) -> np.ndarray | None:
    """Grad-CAM maps of a Keras backend (in a worker or in-process); None for other backends."""
    if hasattr(backend, "grad_cam"):
        return np.asarray(backend.grad_cam(images, targets)["maps"], dtype=np.float32)
    if getattr(backend, "name", "") == "keras" and hasattr(backend, "model"):
        from fmnist.explain import grad_cam

        with backend.lock:
            return grad_cam(backend.model, images, targets)["maps"]
    return None


def explain_image(backend, image: np.ndarray, trust=None, neighbours: int = 5, gradcam: bool = False,
                  note: str | None = None, patch: int = 6, stride: int = 2, fmap=None) -> Explanation:
    """One image (28x28 pixels, 0..255) explained through `backend` (any predictor: Keras worker,
    OpenVINO FP32 or INT8, flip-averaged or not): the occlusion map and the answer in one batched
    call, then, with `trust` (trust.Trust, from `load_trust`), calibrated probabilities, nearest
    training items and the unfamiliar fields; without it the raw probabilities and `note`.
    gradcam: also Grad-CAM where the backend is Keras. patch, stride: the occlusion windows (the
    default is the CLI's; 6 at stride 3 is about 1.5x faster, its maps correlate 0.92 with the default's
    on the shipped model). fmap: the run's featuremap.FeatureMap, to place the image on it."""
    from fmnist.calibration import apply_temperature
    from fmnist.explain import occlusion_maps
    from fmnist.predictor import as_batch

    if not 1 <= neighbours <= 50:
        raise ValueError(f"neighbours must be 1..50, got {neighbours}")
    x = as_batch(image)[:1]
    seconds = {}
    t0 = time.perf_counter()
    occluded = occlusion_maps(backend.predict_proba, x, patch=patch, stride=stride)
    seconds["occlusion"] = time.perf_counter() - t0
    label = int(occluded["targets"][0])
    probs = occluded["probabilities"][0]
    nearest, unfamiliar, score, notes, position = [], None, None, (note,) if note else (), None
    if trust is not None or fmap is not None:
        t0 = time.perf_counter()
        features = backend_features(backend, x)
        if trust is not None:
            from fmnist import trust as ftrust

            score = float(ftrust.unfamiliar_scores(trust, features)[0])
            unfamiliar = score > 1.0
            nearest = ftrust.nearest_items(trust, features, k=neighbours)[0]
            probs = apply_temperature(probs[None], trust.temperature)[0]
        if fmap is not None:
            from fmnist.featuremap import place

            position = place(fmap, features["penultimate"])[0]
        seconds["features"] = time.perf_counter() - t0
    cam = None
    if gradcam:
        t0 = time.perf_counter()
        found = _grad_cam(backend, x, np.array([label]))
        cam = None if found is None else found[0]
        seconds["gradcam"] = time.perf_counter() - t0
    return Explanation(label=label, probabilities=np.asarray(probs, dtype=np.float32), calibrated=trust is not None,
                       heatmap=occluded["maps"][0], method=METHOD, nearest=nearest, unfamiliar=unfamiliar,
                       unfamiliar_score=score, gradcam=cam, notes=notes, seconds=seconds, position=position)


def explain_images(run_dir, backend, images: np.ndarray, neighbours: int = 5) -> list[dict]:
    """Per image: "label", "probabilities" (calibrated), "heatmap" (28x28 lists), "method", "nearest"
    ([{"index", "label", "distance"}], index into the official training set), "unfamiliar",
    "unfamiliar_score". trust.TrustError without a valid trust bundle."""
    from fmnist import trust
    from fmnist.calibration import apply_temperature
    from fmnist.explain import occlusion_maps

    if not 1 <= neighbours <= 50:
        raise ValueError(f"neighbours must be 1..50, got {neighbours}")
    loaded = trust.load(run_dir)
    occluded = occlusion_maps(backend.predict_proba, images)
    features = backend_features(backend, images)
    scores = trust.unfamiliar_scores(loaded, features)
    nearest = trust.nearest_items(loaded, features, k=neighbours)
    calibrated = apply_temperature(occluded["probabilities"], loaded.temperature)
    return [{"label": int(target), "probabilities": [round(float(v), 6) for v in probs],
             "method": METHOD, "heatmap": np.round(heat.astype(np.float64), 5).tolist(), "nearest": near,
             "unfamiliar": bool(score > 1.0), "unfamiliar_score": float(score)}
            for target, probs, heat, near, score in zip(occluded["targets"], calibrated, occluded["maps"],
                                                         nearest, scores)]


def heatmap_text(heat: list[list[float]]) -> list[str]:
    """The map at half resolution (14x14) as characters, the strongest evidence for the answer darkest
    (evidence against it left blank)."""
    small = np.asarray(heat, dtype=np.float64).reshape(14, 2, 14, 2).mean(axis=(1, 3))
    top = small.max()
    if top <= 0:
        levels = np.zeros(small.shape, dtype=int)
    else:
        levels = np.clip(np.round(small / top * (len(SHADES) - 1)), 0, len(SHADES) - 1).astype(int)
    return ["|" + "".join(SHADES[v] * 2 for v in row) + "|" for row in levels]


# ---------------------------------------------------------------- pictures for the app (RGB uint8)

RED = np.array([230, 30, 30], np.float32)  # evidence for the answer
BLUE = np.array([40, 110, 255], np.float32)  # evidence against it
# a dark-to-bright ramp (black, purple, orange, pale yellow) for feature maps: reads like "magma"
RAMP = np.array([[0, 0, 4], [80, 18, 123], [183, 55, 121], [252, 137, 97], [252, 253, 191]], np.float32)


def heat_overlay(image: np.ndarray, heat: np.ndarray, scale: int = 8, strength: float = 0.85) -> np.ndarray:
    """The 28x28 input in grey with the heat map over it: red where hiding the pixels lowered the
    answer's probability (evidence for it), blue where it raised it, opacity by strength relative to
    the map's largest absolute value. Returns (28*scale, 28*scale, 3) uint8."""
    grey = np.asarray(image, dtype=np.float32).reshape(28, 28)
    grey = np.clip(grey, 0, 255)[..., None] * np.ones(3, np.float32) * 0.75  # dimmed so colour reads
    h = np.asarray(heat, dtype=np.float32).reshape(28, 28)
    top = float(np.abs(h).max())
    h = h / top if top > 0 else np.zeros_like(h)
    alpha = (np.abs(h) * strength)[..., None]
    colour = np.where((h >= 0)[..., None], RED, BLUE)
    out = grey * (1 - alpha) + colour * alpha
    return enlarge(np.clip(np.round(out), 0, 255).astype(np.uint8), scale)


def colour_ramp(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) to RGB uint8 along RAMP."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0, 1) * (len(RAMP) - 1)
    low = np.floor(v).astype(int).clip(0, len(RAMP) - 2)
    frac = (v - low)[..., None]
    return np.round(RAMP[low] * (1 - frac) + RAMP[low + 1] * frac).astype(np.uint8)


def _tile(tiles: np.ndarray, columns: int, pad: int, background: int) -> np.ndarray:
    """(N, h, w, 3) tiles in a grid of `columns`, `pad` pixels of `background` between them."""
    n, h, w, _ = tiles.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), background, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = tile
    return grid


def strongest_maps(maps: np.ndarray, limit: int | None = None) -> np.ndarray:
    """Indices of a stage's maps (C, H, W), most active (mean activation) first, at most `limit`."""
    order = np.argsort(-np.asarray(maps, dtype=np.float32).reshape(len(maps), -1).mean(axis=1), kind="stable")
    return order if limit is None else order[:limit]


def feature_grid(maps: np.ndarray, channels: np.ndarray | list[int] | None = None, columns: int = 12,
                 tile: int = 56, pad: int = 2) -> np.ndarray:
    """A stage's feature maps (C, H, W) as one RGB grid: each map enlarged to about `tile` pixels,
    coloured on one scale for the whole stage (0 black .. the stage's largest value pale yellow), so
    strong and silent channels can be told apart. `channels` picks and orders the maps shown."""
    m = np.asarray(maps, dtype=np.float32)
    if m.ndim != 3 or not len(m):
        raise ValueError(f"expected feature maps (C, H, W), got {m.shape}")
    chosen = m if channels is None else m[np.asarray(channels, dtype=int)]
    top = float(m.max())
    scaled = chosen / top if top > 0 else np.zeros_like(chosen)
    scale = max(1, tile // m.shape[1])
    tiles = np.stack([enlarge(colour_ramp(s), scale) for s in scaled])
    return _tile(tiles, columns, pad, background=255)


def filter_grid(filters: np.ndarray, columns: int = 12, tile: int = 48, pad: int = 2,
                background: int = 160) -> np.ndarray:
    """First-layer filters (F, k, k) as one RGB grid: each filter scaled by its own largest absolute
    weight, positive weights red, negative blue, zero white; grey between filters (white is a weight)."""
    f = np.asarray(filters, dtype=np.float32)
    if f.ndim != 3 or not len(f):
        raise ValueError(f"expected filters (F, k, k), got {f.shape}")
    top = np.abs(f).reshape(len(f), -1).max(axis=1).reshape(-1, 1, 1)
    v = np.divide(f, top, out=np.zeros_like(f), where=top > 0)[..., None]
    white = np.full(3, 255, np.float32)
    rgb = np.where(v >= 0, white + (RED - white) * v, white + (BLUE - white) * -v)
    scale = max(1, tile // f.shape[1])
    tiles = np.stack([enlarge(np.round(t).astype(np.uint8), scale) for t in rgb])
    return _tile(tiles, columns, pad, background)
