"""Why the model answered, for one batch of images (the CLI's `explain`, the app next): the answer
with calibrated probabilities, the occlusion heat map over the 28x28 input (forward passes only, so
every backend explains itself), the nearest training items in the model's feature space and the
unfamiliar-input fields, all from the run's verified trust artifacts (fmnist.trust).
"""

from __future__ import annotations

import numpy as np

SHADES = " .:-=+*#%@"  # the plain text heat map, weakest to strongest
METHOD = "occlusion"


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
    features = trust.backend_features(backend, images)
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
