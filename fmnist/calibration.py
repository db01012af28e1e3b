"""How sure the model is: temperature scaling, expected calibration error and reliability-diagram data.

Every backend returns softmax probabilities, not logits. Temperature scaling works on them directly:
log p differs from the logits by one constant per image, and softmax ignores such a constant, so
softmax(log p / T) == softmax(logits / T). The same fitted T therefore calibrates Keras, OpenVINO FP32
and INT8 alike. The temperature is fitted on the validation split (never the test set) by minimising
the negative log-likelihood (Guo et al., 2017).
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15
# log of a probability that underflowed to 0 in float32: the smallest normal float32 keeps it finite
_TINY = float(np.finfo(np.float32).tiny)
TEMPERATURE_BOUNDS = (0.05, 20.0)


def _checked(probs: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or not np.all(np.isfinite(p)):
        raise ValueError(f"expected finite probabilities of shape (N, classes), got shape {p.shape}")
    if labels is None:
        return p, None
    y = np.asarray(labels).astype(np.int64).ravel()
    if y.shape[0] != p.shape[0] or y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"expected {p.shape[0]} labels in 0..{p.shape[1] - 1}")
    return p, y


def log_probabilities(probs: np.ndarray) -> np.ndarray:
    """log p, float64, with probabilities that underflowed to 0 clipped (usable as logits)."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), _TINY, None))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, float64, stable for large logits."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities softmax(log p / T), float32 like the backends' answers."""
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    p, _ = _checked(probs)
    return softmax(log_probabilities(p) / float(temperature)).astype(np.float32)


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean -log p(true class) after temperature T."""
    p, y = _checked(probs, labels)
    z = log_probabilities(p) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(y)), y]))


def fit_temperature(probs: np.ndarray, labels: np.ndarray,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature that minimises the NLL of `labels` (validation split), searched on log T."""
    from scipy.optimize import minimize_scalar

    p, y = _checked(probs, labels)
    logp = log_probabilities(p)
    true = np.arange(len(y)), y

    def nll(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[true]))

    found = minimize_scalar(nll, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                            options={"xatol": 1e-5})
    return float(np.exp(found.x))


def reliability_diagram(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per confidence bin (equal width over [0, 1]): edges, count, mean confidence, accuracy.

    Empty bins have count 0 and NaN confidence/accuracy (a chart leaves them out).
    """
    p, y = _checked(probs, labels)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bins are (lower, upper]; a confidence of exactly 0 goes to the first
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(which, weights=correct, minlength=bins) / count
    return {"lower": edges[:-1], "upper": edges[1:], "count": count,
            "confidence": mean_conf, "accuracy": accuracy}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over equal-width bins (a fraction, 0..1)."""
    d = reliability_diagram(probs, labels, bins)
    filled = d["count"] > 0
    gaps = np.abs(d["accuracy"][filled] - d["confidence"][filled])
    return float(np.sum(gaps * d["count"][filled]) / d["count"].sum())


def calibration_report(val_probs: np.ndarray, val_labels: np.ndarray, probs: np.ndarray, labels: np.ndarray,
                       bins: int = ECE_BINS) -> dict:
    """Fit T on the validation split, then measure `probs`/`labels` (e.g. the test set) before and after.

    Returns temperature, ece_uncalibrated, ece, nll_uncalibrated, nll, and both reliability diagrams
    as plain lists (JSON-ready).
    """
    temperature = fit_temperature(val_probs, val_labels)
    calibrated = apply_temperature(probs, temperature)

    def plain(diagram: dict[str, np.ndarray]) -> dict[str, list]:
        return {k: [None if not np.isfinite(v) else (int(v) if k == "count" else float(v)) for v in arr]
                for k, arr in diagram.items()}

    return {
        "temperature": temperature,
        "bins": bins,
        "ece_uncalibrated": expected_calibration_error(probs, labels, bins),
        "ece": expected_calibration_error(calibrated, labels, bins),
        "nll_uncalibrated": negative_log_likelihood(probs, labels),
        "nll": negative_log_likelihood(calibrated, labels),
        "reliability_uncalibrated": plain(reliability_diagram(probs, labels, bins)),
        "reliability": plain(reliability_diagram(calibrated, labels, bins)),
    }
