"""How an input relates to what the model was trained on, in the model's own feature space.

* Unfamiliar-input scores, higher = less like Fashion-MNIST: the Mahalanobis distance to the nearest
  class under a class-conditional Gaussian with one shared covariance fitted on training features
  (Lee et al., 2018), the energy of the logits (Liu et al., 2020) and 1 - max softmax probability
  (the baseline).
* A threshold chosen on held-out familiar items (a validation split, never the test set) so that a
  chosen fraction of them is flagged, and AUROC to compare scores.
* The nearest training items to a query (indices and distances), for "what it compares with".

Data in, arrays out: the features come from `fmnist.explain.penultimate_features` (or any backend
that returns them); nothing here imports TensorFlow or reads files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GaussianModel:
    """Class means (C, D) and the shared precision matrix (D, D) of (optionally L2-normalised) features."""

    means: np.ndarray
    precision: np.ndarray
    l2_normalise: bool = True

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for storing with a run (np.savez); `from_arrays` reverses it."""
        return {"means": self.means, "precision": self.precision,
                "l2_normalise": np.array(self.l2_normalise)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "GaussianModel":
        """The model from `to_arrays` output; ValueError when shapes do not fit or values are not finite."""
        means = np.asarray(arrays["means"], dtype=np.float64)
        precision = np.asarray(arrays["precision"], dtype=np.float64)
        if means.ndim != 2 or precision.shape != (means.shape[1], means.shape[1]):
            raise ValueError(f"means {means.shape} and precision {precision.shape} do not fit together")
        if not (np.all(np.isfinite(means)) and np.all(np.isfinite(precision))):
            raise ValueError("the Gaussian model holds values that are not finite")
        return cls(means, precision, bool(np.asarray(arrays.get("l2_normalise", True))))


def prepare_features(features: np.ndarray, l2_normalise: bool) -> np.ndarray:
    """float64 (N, D) features, divided by their L2 norm when asked (an all-zero row stays zero)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"expected features of shape (N, D), got {f.shape}")
    if l2_normalise:
        norms = np.linalg.norm(f, axis=1, keepdims=True)
        f = f / np.where(norms > 0, norms, 1.0)
    return f


def fit_gaussian(features: np.ndarray, labels: np.ndarray, l2_normalise: bool = True,
                 shrinkage: float = 1e-3) -> GaussianModel:
    """Class-conditional Gaussian with a shared covariance, fitted on training features.

    shrinkage: added to the covariance's diagonal as a fraction of its mean variance, so features that
    never vary (dead ReLUs) do not make the precision matrix singular.
    """
    f = prepare_features(features, l2_normalise)
    y = np.asarray(labels).astype(np.int64).ravel()
    if len(y) != len(f):
        raise ValueError(f"{len(f)} feature rows but {len(y)} labels")
    classes = np.unique(y)
    means = np.zeros((int(y.max()) + 1, f.shape[1]))
    centred = np.empty_like(f)
    for c in classes:
        rows = y == c
        means[c] = f[rows].mean(axis=0)
        centred[rows] = f[rows] - means[c]
    if len(classes) != len(means):
        raise ValueError(f"every class 0..{len(means) - 1} needs training items; found {classes.tolist()}")
    cov = centred.T @ centred / len(f)
    cov += np.eye(len(cov)) * shrinkage * max(float(np.trace(cov)) / len(cov), 1e-12)
    return GaussianModel(means, np.linalg.inv(cov), l2_normalise)


def mahalanobis_distances(model: GaussianModel, features: np.ndarray) -> np.ndarray:
    """(N, C) squared Mahalanobis distances of each item to each class mean."""
    f = prepare_features(features, model.l2_normalise)
    diff = f[:, None, :] - model.means[None, :, :]  # (N, C, D)
    return np.einsum("ncd,de,nce->nc", diff, model.precision, diff)


def mahalanobis_score(model: GaussianModel, features: np.ndarray) -> np.ndarray:
    """(N,) squared distance to the nearest class mean: higher = less familiar."""
    return mahalanobis_distances(model, features).min(axis=1)


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(N,) energy -T logsumexp(z / T): higher = less familiar. Needs real logits (a softmax's log
    probabilities give 0 for every input)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    top = z.max(axis=1)
    return -temperature * (top + np.log(np.exp(z - top[:, None]).sum(axis=1)))


def max_softmax_score(probs: np.ndarray) -> np.ndarray:
    """(N,) 1 - max probability: the baseline score, higher = less sure."""
    return 1.0 - np.asarray(probs, dtype=np.float64).max(axis=1)


def knn_score(reference: np.ndarray, query: np.ndarray, k: int = 10) -> np.ndarray:
    """(N,) distance to the k-th nearest reference row, both L2-normalised first (deep k-NN, Sun et al.,
    2022): higher = less familiar. reference: training features, e.g. the penultimate layer's."""
    ref, q = prepare_features(reference, True), prepare_features(query, True)
    return nearest_neighbours(ref, q, k=k)[1][:, -1].astype(np.float64)


def combined_score(scores: dict[str, np.ndarray], thresholds: dict[str, float]) -> np.ndarray:
    """(N,) the largest score / threshold over several non-negative signals: above 1 means at least one
    signal calls the input unfamiliar, so one threshold (1.0) serves the combination."""
    if not scores or set(scores) != set(thresholds):
        raise ValueError(f"need one threshold per score; scores {sorted(scores)}, thresholds {sorted(thresholds)}")
    if min(thresholds.values()) <= 0:
        raise ValueError("combined thresholds must be positive (the signals are distances)")
    return np.max([np.asarray(scores[k], dtype=np.float64) / thresholds[k] for k in sorted(scores)], axis=0)


def auroc(familiar_scores: np.ndarray, unfamiliar_scores: np.ndarray) -> float:
    """Probability that an unfamiliar item scores above a familiar one (ties count half)."""
    from scipy.stats import rankdata

    a = np.asarray(familiar_scores, dtype=np.float64).ravel()
    b = np.asarray(unfamiliar_scores, dtype=np.float64).ravel()
    if not len(a) or not len(b):
        raise ValueError("AUROC needs at least one familiar and one unfamiliar score")
    ranks = rankdata(np.concatenate([a, b]))
    return float((ranks[len(a):].sum() - len(b) * (len(b) + 1) / 2) / (len(a) * len(b)))


def choose_threshold(heldout_familiar_scores: np.ndarray, flag_fraction: float = 0.05) -> float:
    """The score above which about `flag_fraction` of held-out familiar items lie (validation split,
    never the test set): inputs scoring above it are called unfamiliar."""
    if not 0.0 <= flag_fraction < 1.0:
        raise ValueError(f"flag_fraction must be in [0, 1), got {flag_fraction}")
    scores = np.asarray(heldout_familiar_scores, dtype=np.float64).ravel()
    if not len(scores):
        raise ValueError("choosing a threshold needs held-out scores")
    return float(np.quantile(scores, 1.0 - flag_fraction))


def flagged_fraction(scores: np.ndarray, threshold: float) -> float:
    """Fraction of items whose score is above the threshold (called unfamiliar)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    return float(np.mean(scores > threshold)) if len(scores) else 0.0


@dataclass(frozen=True)
class Projection:
    """PCA of L2-normalised features: mean (D,) and components (dims, D); small enough to store with a
    run (16 dimensions of 54,000 training items in float16: 1.7 MB) for neighbours, k-NN and the map."""

    mean: np.ndarray
    components: np.ndarray

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for storing with a run; `from_arrays` reverses it."""
        return {"mean": self.mean, "components": self.components}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "Projection":
        """The projection from `to_arrays` output; ValueError when shapes do not fit."""
        mean = np.asarray(arrays["mean"], dtype=np.float32)
        components = np.asarray(arrays["components"], dtype=np.float32)
        if mean.ndim != 1 or components.ndim != 2 or components.shape[1] != mean.shape[0]:
            raise ValueError(f"mean {mean.shape} and components {components.shape} do not fit together")
        return cls(mean, components)


def fit_projection(features: np.ndarray, dims: int = 16) -> Projection:
    """PCA to `dims` dimensions of the L2-normalised features (training items)."""
    f = prepare_features(features, True)
    mean = f.mean(axis=0)
    _, _, vt = np.linalg.svd(f - mean, full_matrices=False)
    return Projection(mean.astype(np.float32), vt[:dims].astype(np.float32))


def project(projection: Projection, features: np.ndarray) -> np.ndarray:
    """(N, dims) float32 coordinates of L2-normalised features in the projection."""
    f = prepare_features(features, True)
    return ((f - projection.mean) @ projection.components.T).astype(np.float32)


def nearest_neighbours(reference: np.ndarray, query: np.ndarray, k: int = 5,
                       chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Indices (N, k) into `reference` of each query's k nearest rows, and their Euclidean distances
    (N, k), nearest first. Chunked so a 60,000-row reference needs no (N, 60,000) matrix at once."""
    ref = np.asarray(reference, dtype=np.float32)
    q = np.asarray(query, dtype=np.float32)
    if ref.ndim != 2 or q.ndim != 2 or ref.shape[1] != q.shape[1]:
        raise ValueError(f"reference {ref.shape} and query {q.shape} must be (N, D) with the same D")
    k = min(int(k), len(ref))
    ref_sq = np.einsum("nd,nd->n", ref, ref)
    indices = np.empty((len(q), k), dtype=np.int64)
    distances = np.empty((len(q), k), dtype=np.float32)
    for start in range(0, len(q), chunk):
        part = q[start:start + chunk]
        d2 = ref_sq[None, :] - 2.0 * part @ ref.T + np.einsum("nd,nd->n", part, part)[:, None]
        top = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < len(ref) else np.tile(np.arange(len(ref)), (len(part), 1))
        order = np.take_along_axis(d2, top, axis=1).argsort(axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        indices[start:start + len(part)] = top
        distances[start:start + len(part)] = np.sqrt(np.maximum(np.take_along_axis(d2, top, axis=1), 0.0))
    return indices, distances


# ----------------------------------------------------------------------------------------------------
# Outlier exposure (Hendrycks et al., 2019): a linear detector on the model's own features, trained
# with examples of both sides. Distances alone top out near AUROC 0.85-0.87 for hat photos against real
# photos of the ten classes (docs/explain.md): real photos are themselves far from the training items,
# so "far" does not separate them from hats; a boundary learned from examples does.


def detector_inputs(penultimate: np.ndarray, first_stage: np.ndarray) -> np.ndarray:
    """(N, D1 + D2) float64: the L2-normalised penultimate features (content) beside the L2-normalised
    first stage's mean activations (strokes, texture): what the detector sees."""
    return np.concatenate([prepare_features(penultimate, True), prepare_features(first_stage, True)], axis=1)


@dataclass(frozen=True)
class LinearDetector:
    """Logistic regression weights (D,) and bias over `detector_inputs`; score = P(unfamiliar)."""

    weights: np.ndarray
    bias: float

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for storing with a run; `from_arrays` reverses it."""
        return {"detector_weights": self.weights.astype(np.float32), "detector_bias": np.array(self.bias, np.float64)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "LinearDetector":
        """The detector from `to_arrays` output; ValueError when not a finite vector and scalar."""
        weights = np.asarray(arrays["detector_weights"], dtype=np.float64)
        bias = np.asarray(arrays["detector_bias"], dtype=np.float64)
        if weights.ndim != 1 or bias.shape != () or not (np.all(np.isfinite(weights)) and np.isfinite(bias)):
            raise ValueError(f"detector weights {weights.shape} and bias {bias.shape} must be a finite vector and scalar")
        return cls(weights, float(bias))


SET_WEIGHT = 1500.0  # every set of the detector's training counts as this many items, whatever its size


def fit_detector(familiar: dict[str, np.ndarray], unfamiliar: dict[str, np.ndarray],
                 strength: float = 1.0) -> LinearDetector:
    """Logistic regression telling `unfamiliar` sets from `familiar` ones (each a (N, D) array of
    `detector_inputs`), every set weighing SET_WEIGHT items however many it has, so 137 hats count as
    much as 6,000 training items and the regularisation does not depend on how many were at hand.
    strength: inverse L2 regularisation (scikit-learn's C)."""
    from sklearn.linear_model import LogisticRegression

    parts = [(x, label) for sets, label in ((familiar, 0.0), (unfamiliar, 1.0)) for x in sets.values() if len(x)]
    if not any(label == 0.0 for _, label in parts) or not any(label == 1.0 for _, label in parts):
        raise ValueError("the detector needs items on both sides (familiar and unfamiliar)")
    x = np.concatenate([p for p, _ in parts])
    y = np.concatenate([np.full(len(p), label) for p, label in parts])
    weight = np.concatenate([np.full(len(p), SET_WEIGHT / len(p)) for p, _ in parts])
    found = LogisticRegression(C=strength, max_iter=5000).fit(x, y, sample_weight=weight)
    return LinearDetector(found.coef_[0].astype(np.float64), float(found.intercept_[0]))


def detector_score(detector: LinearDetector, inputs: np.ndarray) -> np.ndarray:
    """(N,) P(unfamiliar) in (0, 1) for `detector_inputs` rows: higher = less familiar."""
    x = np.asarray(inputs, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(detector.weights):
        raise ValueError(f"the detector expects (N, {len(detector.weights)}) inputs, got {x.shape}")
    return 1.0 / (1.0 + np.exp(-(x @ detector.weights + detector.bias)))


def cross_validated_detector(familiar: dict[str, np.ndarray], unfamiliar: dict[str, np.ndarray],
                             others: dict[str, np.ndarray], folds: int = 5, strength: float = 1.0,
                             seed: int = 0) -> dict:
    """Honest figures for a detector trained on the sets it is measured on: per fold, a detector fitted
    on the other folds of every familiar/unfamiliar set scores that fold's held-out items, and all of
    `others` (e.g. validation and test items, which no detector sees).

    Returns {"fold": {set: fold of each item}, "scores": {set: out-of-fold score of each item},
    "others": [{set: scores} for each fold]}."""
    rng = np.random.default_rng(seed)
    sets = {**familiar, **unfamiliar}
    fold_of = {name: rng.permutation(len(x)) % folds for name, x in sets.items()}
    scores = {name: np.zeros(len(x)) for name, x in sets.items()}
    per_fold = []
    for f in range(folds):
        detector = fit_detector({k: x[fold_of[k] != f] for k, x in familiar.items()},
                                {k: x[fold_of[k] != f] for k, x in unfamiliar.items()}, strength)
        for k, x in sets.items():
            scores[k][fold_of[k] == f] = detector_score(detector, x[fold_of[k] == f])
        per_fold.append({k: detector_score(detector, x) for k, x in others.items()})
    return {"fold": fold_of, "scores": scores, "others": per_fold}
