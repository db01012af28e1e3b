"""A run's trust artifacts: computed once, stored with the run (the `trust/` bundle, verified by its
own manifest like `openvino/`), loaded only after every byte matches that manifest.

What is stored (`trust/trust.json` + `trust/reference.npz`, about 2 MB for 54,000 training items):

* **temperature**: one T for every backend, fitted on the run's validation split by minimising NLL on
  the answers users see (the Keras model's probabilities with the run's flip averaging). One shared T,
  not one per IR: the issue asks that all backends report the same calibrated probabilities, FP32's
  answers equal Keras's within 1e-3, and INT8's own T (0.61 vs 0.67 on the shipped model) would make
  the same image's calibrated probability depend on the backend.
* **unfamiliar score** (higher = less like Fashion-MNIST): the largest of its signals, each over its
  own threshold chosen on the validation split (never the test set): the distance to the 50th nearest
  training item in a 16-dimensional PCA of the L2-normalised penultimate features (content), the
  Mahalanobis distance of the first stage's mean activations to the nearest class (strokes, texture,
  noise), and, where the development photos were at hand when the bundle was computed
  (`python -m fmnist.trust --photos-dir`), a linear detector trained by outlier exposure on the same
  features (`familiarity.fit_detector`: hats, drawn digits and noise against training items and real
  photos of the ten classes; noise as 28x28 images and uploaded as photos). Over 1.0 = unfamiliar.
* **reference**: the projection (PCA mean and components), the training items' projected features in
  float16, their labels and their indices in the official training set, for nearest neighbours.

Computing needs the Keras model (TensorFlow); using the artifacts does not: the OpenVINO IR gives the
same features (`explain.openvino_feature_sets`).
"""

from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BUNDLE = "trust"
INFO_FILE = "trust.json"
REFERENCE_FILE = "reference.npz"
FORMAT = "fmnist-trust/2"
FORMATS = ("fmnist-trust/1", FORMAT)  # /1: no detector
KNN_K = 50  # the 50th nearest: a little steadier on real photos than the 10th (hats vs photos 0.837 vs 0.830)
DIMS = 16
# fraction of validation items over each signal's threshold (k-NN, first stage), picked on the
# development sets with the shipped model (digits >= 90%, hats >= 60%, product photos <= 10% flagged;
# docs/explain.md), never on the test set
FLAG_FRACTIONS = {"knn": 0.0075, "first_stage": 0.003}
# with the outlier-exposure detector, which carries most of the weight; chosen the same way from the
# detector's cross-validated figures (bench explain), never on the test set
DETECTOR_FLAG_FRACTIONS = {"detector": 0.015, "knn": 0.001, "first_stage": 0.001}
DETECTOR_STRENGTH = 1.0  # scikit-learn's C for the detector's logistic regression
DETECTOR_TRAIN_ITEMS = 6000  # training items (not validation: thresholds are chosen there) on its familiar side
SIGNALS = ("detector", "knn", "first_stage")
REFERENCE_ARRAYS = ("mean", "components", "reference", "labels", "train_index", "first_means",
                    "first_precision")


class TrustError(Exception):
    """A run has no trust artifacts, or they do not match its manifest (one-line message)."""


@dataclass(frozen=True)
class Trust:
    """A run's loaded trust artifacts."""

    temperature: float
    thresholds: dict[str, float]
    knn_k: int
    projection: object  # familiarity.Projection
    reference: np.ndarray  # (N, DIMS) float16
    labels: np.ndarray  # (N,) class of each reference row
    train_index: np.ndarray  # (N,) index of each reference row in the official training set
    first_stage: object  # familiarity.GaussianModel
    info: dict
    detector: object = None  # familiarity.LinearDetector, or None (computed without development photos)


def compute(run_dir: str | Path, dataset, progress=lambda text: None,
            photos_dir: str | Path | None = None) -> dict[str, bytes]:
    """The trust bundle's files for a run ({"trust/trust.json": bytes, "trust/reference.npz": bytes}),
    from its Keras model and its own train/validation split of `dataset` (test set untouched).

    photos_dir: where the development photo folders are (`fmnist.devsets`); when it holds photos of
    both sides, the outlier-exposure detector is fitted too (about 2 minutes more). None: no detector."""
    from fmnist import calibration as cal
    from fmnist import familiarity as fam
    from fmnist.config import TrainConfig
    from fmnist.data import make_splits
    from fmnist.explain import activation_layers, feature_sets
    from fmnist.keras_backend import load_model
    from fmnist.predictor import average_views, test_views
    from fmnist.runs import checked_run, read_json

    run_dir = Path(run_dir)
    checked_run(run_dir)
    config = TrainConfig.from_dict(read_json(run_dir / "config.json"))
    splits = make_splits(dataset, config.val_fraction, config.seed, config.limit)
    if len(splits.y_val) < 10:
        raise TrustError(f"{run_dir} was trained without a validation split: the temperature and "
                         "thresholds are chosen on validation items only")
    model = load_model(run_dir)
    first = activation_layers(model)[0]
    progress(f"features of {len(splits.x_train):,} training items")
    train = feature_sets(model, splits.x_train, [first])
    progress(f"features of {len(splits.x_val):,} validation items")
    val = feature_sets(model, splits.x_val, [first])
    val_probs = cal.softmax(val["logits"])
    if config.tta_flip or config.tta_shift:  # calibrate what users see: the run's view-averaged answers
        views, count = test_views(splits.x_val, config.tta_flip, config.tta_shift)
        val_probs = average_views(cal.softmax(feature_sets(model, views[..., 0])["logits"]), count)
    temperature = cal.fit_temperature(val_probs, splits.y_val)

    progress("reference and thresholds")
    projection = fam.fit_projection(train["penultimate"], DIMS)
    reference = fam.project(projection, train["penultimate"]).astype(np.float16)
    gaussian = fam.fit_gaussian(train[first], splits.y_train)
    detector, detector_info = None, None
    if photos_dir is not None:
        detector, detector_info = _fit_detector(model, first, splits, photos_dir, progress)
    fractions = DETECTOR_FLAG_FRACTIONS if detector is not None else FLAG_FRACTIONS
    val_signals = {"knn": fam.nearest_neighbours(reference, fam.project(projection, val["penultimate"]),
                                                 k=KNN_K)[1][:, -1],
                   "first_stage": fam.mahalanobis_score(gaussian, val[first])}
    if detector is not None:
        val_signals["detector"] = fam.detector_score(detector, fam.detector_inputs(val["penultimate"], val[first]))
    thresholds = {k: fam.choose_threshold(v, fractions[k]) for k, v in val_signals.items()}
    val_score = fam.combined_score(val_signals, thresholds)
    info = {
        "format": FORMAT, "temperature": temperature, "thresholds": thresholds, "knn_k": KNN_K,
        "dims": DIMS, "first_stage_layer": first, "flag_fractions": fractions, "detector": detector_info,
        "tta_flip": bool(config.tta_flip), "tta_shift": int(config.tta_shift),
        "validation": {"items": int(len(splits.y_val)),
                       "ece_uncalibrated": cal.expected_calibration_error(val_probs, splits.y_val),
                       "ece": cal.expected_calibration_error(cal.apply_temperature(val_probs, temperature),
                                                             splits.y_val),
                       "flagged": fam.flagged_fraction(val_score, 1.0)},
    }
    buffer = io.BytesIO()
    np.savez(buffer, mean=projection.mean, components=projection.components, reference=reference,
             labels=splits.y_train.astype(np.uint8), train_index=splits.train_index.astype(np.int32),
             first_means=gaussian.means.astype(np.float32), first_precision=gaussian.precision.astype(np.float32),
             **(detector.to_arrays() if detector is not None else {}))
    return {f"{BUNDLE}/{INFO_FILE}": json.dumps(info, indent=2).encode("utf-8"),
            f"{BUNDLE}/{REFERENCE_FILE}": buffer.getvalue()}


def _fit_detector(model, first: str, splits, photos_dir: str | Path, progress) -> tuple[object, dict | None]:
    """(detector, what trust.json records about it) fitted on the development sets and
    DETECTOR_TRAIN_ITEMS training items; (None, None) unless photos of both sides are found."""
    from fmnist import familiarity as fam
    from fmnist.data import stratified_limit
    from fmnist.devsets import UNFAMILIAR_FOLDERS, development_sets, photos_dir as resolve_photos
    from fmnist.explain import feature_sets

    familiar, unfamiliar = development_sets(photos_dir, progress=progress)
    if not familiar or not set(unfamiliar) & set(UNFAMILIAR_FOLDERS):
        progress(f"no development photos of both sides under {resolve_photos(photos_dir)}: no detector")
        return None, None
    keep = stratified_limit(splits.y_train, DETECTOR_TRAIN_ITEMS, 0)
    familiar = {"training_items": splits.x_train[keep], **familiar}

    def inputs(images: np.ndarray) -> np.ndarray:
        found = feature_sets(model, images, [first])
        return fam.detector_inputs(found["penultimate"], found[first])

    progress("fitting the unfamiliar-input detector (outlier exposure)")
    detector = fam.fit_detector({k: inputs(x) for k, x in familiar.items()},
                                {k: inputs(x) for k, x in unfamiliar.items()}, DETECTOR_STRENGTH)
    return detector, {"strength": DETECTOR_STRENGTH,
                      "familiar": {k: int(len(x)) for k, x in familiar.items()},
                      "unfamiliar": {k: int(len(x)) for k, x in unfamiliar.items()}}


def store(run_dir: str | Path, dataset, progress=lambda text: None, photos_dir: str | Path | None = None) -> dict:
    """Compute a run's trust artifacts and add them to it (runs.add_files: staged, swapped in by one
    rename, recorded in the manifests). Returns trust.json's content."""
    from fmnist.runs import add_files

    files = compute(run_dir, dataset, progress, photos_dir)
    add_files(run_dir, files)
    return json.loads(files[f"{BUNDLE}/{INFO_FILE}"])


def has_trust(run_dir: str | Path) -> bool:
    """Whether the run holds a trust bundle (not whether it is intact: `load` checks that)."""
    return (Path(run_dir) / BUNDLE).is_dir()


def _verified_bytes(run_dir: Path) -> dict[str, bytes]:
    """The bundle's files, read once and checked against the bundle's manifest and the run's."""
    from fmnist.runs import read_verified_bundle

    if not (run_dir / BUNDLE).is_dir():
        raise TrustError(f"{run_dir} has no trust artifacts: run `python -m fmnist.trust --run {run_dir}`")
    try:
        return read_verified_bundle(run_dir, BUNDLE, (INFO_FILE, REFERENCE_FILE))
    except ValueError as exc:
        raise TrustError(f"refusing the trust artifacts of {run_dir}: {exc}") from exc


def load(run_dir: str | Path) -> Trust:
    """A run's verified trust artifacts. TrustError (one line) when missing, tampered or malformed."""
    from fmnist.familiarity import GaussianModel, LinearDetector, Projection

    run_dir = Path(run_dir)
    files = _verified_bytes(run_dir)
    try:
        info = json.loads(files[INFO_FILE].decode("utf-8"))
        if info.get("format") not in FORMATS:
            raise ValueError(f"unknown format {info.get('format')!r}")
        temperature = float(info["temperature"])
        thresholds = {k: float(v) for k, v in info["thresholds"].items()}
        if not set(FLAG_FRACTIONS) <= set(thresholds) <= set(SIGNALS):
            raise ValueError(f"thresholds for {sorted(thresholds)}, expected {sorted(FLAG_FRACTIONS)} (and detector)")
        if not (np.isfinite(temperature) and temperature > 0 and all(t > 0 for t in thresholds.values())):
            raise ValueError("temperature and thresholds must be positive")
        with np.load(io.BytesIO(files[REFERENCE_FILE]), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in REFERENCE_ARRAYS}
            has_detector = "detector_weights" in npz.files
            detector = LinearDetector.from_arrays({k: npz[k] for k in ("detector_weights", "detector_bias")}) \
                if has_detector else None
        if has_detector != ("detector" in thresholds):
            raise ValueError("the detector's weights and its threshold must come together")
        projection = Projection.from_arrays(arrays)
        reference = arrays["reference"]
        if reference.ndim != 2 or reference.shape[1] != projection.components.shape[0] \
                or not np.all(np.isfinite(reference)):
            raise ValueError(f"reference {reference.shape} does not fit the projection")
        if arrays["labels"].shape != (len(reference),) or arrays["train_index"].shape != (len(reference),):
            raise ValueError("labels and indices must have one entry per reference row")
        gaussian = GaussianModel.from_arrays({"means": arrays["first_means"], "precision": arrays["first_precision"]})
        if detector is not None and len(detector.weights) != reference_width(arrays):
            raise ValueError(f"detector of {len(detector.weights)} inputs does not fit the features")
    except (KeyError, ValueError, TypeError, UnicodeDecodeError, OSError) as exc:
        raise TrustError(f"refusing the trust artifacts of {run_dir}: malformed ({exc})".splitlines()[0]) from exc
    return Trust(temperature, thresholds, int(info.get("knn_k", KNN_K)), projection, reference,
                 arrays["labels"].astype(np.int64), arrays["train_index"].astype(np.int64), gaussian, info, detector)


def reference_width(arrays: dict[str, np.ndarray]) -> int:
    """Width of `familiarity.detector_inputs` for the features the reference was built from."""
    return int(arrays["mean"].shape[0] + arrays["first_means"].shape[1])


def backend_features(backend, images: np.ndarray) -> dict[str, np.ndarray]:
    """"penultimate", "logits" and "first_stage" of images through a backend's own model: the OpenVINO
    IR (no TensorFlow) for openvino-*, the Keras model for keras, or the backend's own `features(images)`
    (same keys) where it has one."""
    from fmnist import explain

    if hasattr(backend, "features"):  # the backend's own (OpenVINO: compiled once; the app's Keras worker)
        return backend.features(images)
    if str(getattr(backend, "name", "")).startswith("openvino"):
        return explain.openvino_feature_sets(explain.openvino_feature_model(backend.model), images)
    model = backend.model
    first = explain.activation_layers(model)[0]
    found = explain.feature_sets(model, images, [first])
    return {"penultimate": found["penultimate"], "logits": found["logits"], "first_stage": found[first]}


def unfamiliar_scores(trust: Trust, features: dict[str, np.ndarray]) -> np.ndarray:
    """(N,) combined unfamiliar score: above 1.0 = unfamiliar (higher = less like Fashion-MNIST)."""
    from fmnist import familiarity as fam

    signals = {"knn": fam.nearest_neighbours(trust.reference, fam.project(trust.projection, features["penultimate"]),
                                             k=trust.knn_k)[1][:, -1],
               "first_stage": fam.mahalanobis_score(trust.first_stage, features["first_stage"])}
    if trust.detector is not None:
        signals["detector"] = fam.detector_score(
            trust.detector, fam.detector_inputs(features["penultimate"], features["first_stage"]))
    return fam.combined_score(signals, trust.thresholds)


def nearest_items(trust: Trust, features: dict[str, np.ndarray], k: int = 5) -> list[list[dict]]:
    """Per image, the k nearest training items: {"index" (official training set), "label", "distance"}."""
    from fmnist import familiarity as fam

    idx, dist = fam.nearest_neighbours(trust.reference, fam.project(trust.projection, features["penultimate"]), k=k)
    return [[{"index": int(trust.train_index[i]), "label": int(trust.labels[i]), "distance": float(d)}
             for i, d in zip(row_i, row_d)] for row_i, row_d in zip(idx, dist)]


def assess(trust: Trust, backend, images: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """Calibrated probabilities (N, 10), unfamiliar scores (N,) and flags (N,) for images a backend
    answered with `probs`."""
    from fmnist.calibration import apply_temperature

    scores = unfamiliar_scores(trust, backend_features(backend, images))
    return {"probabilities": apply_temperature(probs, trust.temperature), "unfamiliar_score": scores,
            "unfamiliar": scores > 1.0}


def answer_fields(run_dir: str | Path, backend, images: np.ndarray, probs: np.ndarray) -> list[dict]:
    """Per image what `predict --json` reports about trust: calibrated "probabilities", "unfamiliar",
    "unfamiliar_score" and "calibrated". A run without a trust bundle keeps its raw probabilities with
    null unfamiliar fields; a tampered bundle raises TrustError."""
    if not has_trust(run_dir):
        return [{"probabilities": row, "unfamiliar": None, "unfamiliar_score": None, "calibrated": False}
                for row in np.asarray(probs, dtype=np.float32)]
    found = assess(load(run_dir), backend, images, probs)
    return [{"probabilities": p, "unfamiliar": bool(u), "unfamiliar_score": float(s), "calibrated": True}
            for p, u, s in zip(found["probabilities"], found["unfamiliar"], found["unfamiliar_score"])]


def calibration_fields(run_dir: str | Path, probs: np.ndarray, labels: np.ndarray | None) -> dict:
    """`evaluate --json`'s "temperature", "ece" (after it) and "ece_uncalibrated" (15 bins) for test-set
    answers; null where the run has no trust bundle or the labels are unknown."""
    from fmnist.calibration import apply_temperature, expected_calibration_error

    temperature = load(run_dir).temperature if has_trust(run_dir) else None
    if labels is None or len(labels) != len(probs):
        return {"temperature": temperature, "ece": None, "ece_uncalibrated": None}
    return {"temperature": temperature,
            "ece": None if temperature is None else expected_calibration_error(
                apply_temperature(probs, temperature), labels),
            "ece_uncalibrated": expected_calibration_error(probs, labels)}


def main(argv: list[str] | None = None) -> int:
    """`python -m fmnist.trust [--run RUN]`: compute and store a run's trust artifacts."""
    import argparse

    from fmnist.data import load_fashion_mnist
    from fmnist.devsets import photos_dir
    from fmnist.runs import resolve_checked_run

    parser = argparse.ArgumentParser(prog="python -m fmnist.trust", description=main.__doc__)
    parser.add_argument("--run", help="run name or path (default: the shipped model, else the newest run)")
    parser.add_argument("--runs-dir")
    parser.add_argument("--data-dir", help="Fashion-MNIST folder (default: FMNIST_DATA_DIR)")
    parser.add_argument("--photos-dir", help="folder of the development photo folders for the outlier-exposure "
                        "detector (default: FMNIST_PHOTOS_DIR, then ../shared/data)")
    parser.add_argument("--no-detector", action="store_true", help="distance signals only (no development photos)")
    args = parser.parse_args(argv)
    run_dir = resolve_checked_run(args.run, args.runs_dir)
    info = store(run_dir, load_fashion_mnist(args.data_dir, download=False),
                 progress=lambda text: print(text, file=sys.stderr, flush=True),
                 photos_dir=None if args.no_detector else photos_dir(args.photos_dir))
    print(json.dumps({"run": str(run_dir), **info}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
