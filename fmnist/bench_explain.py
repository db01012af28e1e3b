"""`python -m fmnist bench explain`: issue 14's figures for a run, measured with the Keras model's
penultimate features; "stored" is the score and temperature the run ships (fmnist.trust), as `predict`
and `explain` use them.

* Calibration: temperature fitted on the run's validation split, ECE (15 bins) on the test set before
  and after, for the Keras logits and for each backend's own answers (with the run's flip averaging).
* Unfamiliar inputs: AUROC of each score (1 - max softmax, energy, Mahalanobis and k-NN distance on
  penultimate features, Mahalanobis on the first stage's mean activations, and their combination) for
  drawn digits vs Fashion-MNIST items, hat photos vs real photos of the ten classes, noise and plain
  colours; thresholds are chosen on the validation split only (single scores: 5% of it flagged), then
  the flagged fractions are reported for every set (the test set is measured, never tuned on).
* The outlier-exposure detector (fmnist.trust with development photos), cross-validated: it is
  trained on the very sets it is measured on (hats, digits, noise against training items and real
  photos), so each item is scored by a detector fitted on the other four folds; validation and test
  items are never trained on. The combined score then uses each fold's own validation threshold.
* Nearest neighbours: for correctly classified test items, how often the nearest training image (in
  feature space) has the same label.
* Occlusion: p50 latency of one image's map through a backend (OpenVINO FP32 by default).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from fmnist.devsets import SHARED_DATA, development_sets

FLAG_FRACTION = 0.05  # of held-out Fashion-MNIST validation items called unfamiliar, for single scores
REDUCED_DIMS = (16, 32)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", help="run name or path (default: the shipped model, else the newest run)")
    parser.add_argument("--runs-dir")
    parser.add_argument("--data-dir", help="Fashion-MNIST folder (default: FMNIST_DATA_DIR)")
    parser.add_argument("--photos-dir", default=str(SHARED_DATA),
                        help="folder holding unfamiliar-photos/, clothing-photos/, product-photos/")
    parser.add_argument("--backend", default="openvino-fp32", help="backend for the occlusion timing")
    parser.add_argument("--calibration-backends", default="openvino-fp32,openvino-int8",
                        help="comma-separated backends whose own answers are calibrated and measured too")
    parser.add_argument("--train-limit", type=int, default=0,
                        help="use this many training items for the feature statistics (0: all)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def occlusion_p50_ms(predictor, image: np.ndarray, repeats: int = 30) -> float:
    """Median milliseconds for one image's occlusion map (after one warm-up)."""
    from fmnist.explain import occlusion_maps

    occlusion_maps(predictor.predict_proba, image)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        occlusion_maps(predictor.predict_proba, image)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def measure(run_dir: Path, dataset, photos_dir: Path, backend: str = "openvino-fp32", train_limit: int = 0,
            calibration_backends: tuple[str, ...] = (), progress=lambda text: None) -> dict:
    """Every figure of the module docstring for one run, as a JSON-ready dict."""
    from fmnist import calibration as cal
    from fmnist import familiarity as fam
    from fmnist import trust
    from fmnist.backends import get_backend
    from fmnist.trust import FLAG_FRACTIONS, KNN_K
    from fmnist.config import TrainConfig
    from fmnist.data import make_splits, stratified_limit
    from fmnist.explain import activation_layers, feature_sets
    from fmnist.keras_backend import load_model
    from fmnist.runs import read_json

    config = TrainConfig.from_dict(read_json(run_dir / "config.json"))
    splits = make_splits(dataset, config.val_fraction, config.seed, config.limit)
    keep = stratified_limit(splits.y_train, train_limit or None, 0)
    y_train = splits.y_train[keep]
    model = load_model(run_dir)
    early = activation_layers(model)[0]
    familiar, unfamiliar = development_sets(photos_dir, progress=progress)  # what fmnist.trust fits on
    inputs = {"train": splits.x_train[keep], "val": splits.x_val, "test": dataset.x_test, **unfamiliar, **familiar}
    feats = {}
    for name, images in inputs.items():
        progress(f"features of {name} ({len(images):,})")
        feats[name] = feature_sets(model, images, [early])
    train = feats.pop("train")

    gaussian = fam.fit_gaussian(train["penultimate"], y_train)
    early_gaussian = fam.fit_gaussian(train[early], y_train)
    temperature = cal.fit_temperature(cal.softmax(feats["val"]["logits"]), splits.y_val)
    progress("scores")
    scores = {
        "max_softmax": {k: fam.max_softmax_score(cal.softmax(f["logits"] / temperature)) for k, f in feats.items()},
        "energy": {k: fam.energy_score(f["logits"]) for k, f in feats.items()},
        "mahalanobis": {k: fam.mahalanobis_score(gaussian, f["penultimate"]) for k, f in feats.items()},
        "knn": {k: fam.knn_score(train["penultimate"], f["penultimate"], KNN_K) for k, f in feats.items()},
        f"mahalanobis_{early}": {k: fam.mahalanobis_score(early_gaussian, f[early]) for k, f in feats.items()},
    }
    # the proposal: k-NN on penultimate features (content) or first-stage statistics (strokes, texture,
    # noise), each over its own validation threshold
    parts = {"knn": FLAG_FRACTIONS["knn"], f"mahalanobis_{early}": FLAG_FRACTIONS["first_stage"]}
    thresholds = {k: fam.choose_threshold(scores[k]["val"], fraction) for k, fraction in parts.items()}
    scores["combined"] = {k: fam.combined_score({p: scores[p][k] for p in parts}, thresholds) for k in feats}

    stored = trust.load(run_dir) if trust.has_trust(run_dir) else None
    if stored is not None:  # what predict and explain report: the run's own thresholds, reduced reference
        scores["stored"] = {k: trust.unfamiliar_scores(stored, {"penultimate": f["penultimate"],
                                                                "first_stage": f[early]}) for k, f in feats.items()}
    real_photos = ("clothing_photos", "product_photos")
    report: dict = {"run": str(run_dir), "sizes": {k: int(len(v["logits"])) for k, v in feats.items()},
                    "scores": {}}
    for score, by_set in scores.items():
        photos = np.concatenate([by_set[k] for k in real_photos])
        threshold = 1.0 if score in ("combined", "stored") else fam.choose_threshold(by_set["val"], FLAG_FRACTION)
        report["scores"][score] = {
            "auroc": {
                "digits_vs_test": fam.auroc(by_set["test"], by_set["digits"]),
                "digits_vs_val": fam.auroc(by_set["val"], by_set["digits"]),
                "hats_vs_real_photos": fam.auroc(photos, by_set["hats"]),
                "noise_vs_test": fam.auroc(by_set["test"], by_set["noise"]),
                "noise_photos_vs_test": fam.auroc(by_set["test"], by_set["noise_photos"]),
                "digit_photos_vs_test": fam.auroc(by_set["test"], by_set["digit_photos"]),
            },
            "threshold": threshold,
            "flagged": {k: fam.flagged_fraction(v, threshold) for k, v in by_set.items()},
        }

    test_probs = cal.softmax(feats["test"]["logits"])
    report["calibration"] = {k: v for k, v in cal.calibration_report(
        cal.softmax(feats["val"]["logits"]), splits.y_val, test_probs, dataset.y_test).items()
        if not k.startswith("reliability")}

    for name in calibration_backends:
        progress(f"calibration through {name} (the run's flip averaging as configured)")
        predictor = get_backend(run_dir, name)
        test_answers = predictor.predict_proba(dataset.x_test)
        found = cal.calibration_report(predictor.predict_proba(splits.x_val), splits.y_val,
                                       test_answers, dataset.y_test)
        report.setdefault("calibration_by_backend", {})[name] = {
            k: v for k, v in found.items() if not k.startswith("reliability")}
        if stored is not None:  # the run's one shared temperature, as predict applies it
            report["calibration_by_backend"][name]["ece_stored_temperature"] = cal.expected_calibration_error(
                cal.apply_temperature(test_answers, stored.temperature), dataset.y_test)

    progress("outlier-exposure detector, cross-validated")
    report["detector_cv"] = detector_figures(model, early, splits, feats, train, early_gaussian, scores,
                                              familiar=list(familiar), unfamiliar=list(unfamiliar))

    correct = test_probs.argmax(axis=1) == dataset.y_test
    progress("nearest training items of the test set")
    nearest, _ = fam.nearest_neighbours(train["penultimate"], feats["test"]["penultimate"][correct], k=1)
    report["neighbours_same_label"] = float(np.mean(y_train[nearest[:, 0]] == dataset.y_test[correct]))
    # what a run could store: PCA of the normalised features, float16
    photos = np.concatenate([feats[k]["penultimate"] for k in real_photos])
    report["reduced_reference"] = {}
    for dims in REDUCED_DIMS:
        projection = fam.fit_projection(train["penultimate"], dims)
        reference = fam.project(projection, train["penultimate"]).astype(np.float16)

        def kth(features: np.ndarray) -> np.ndarray:
            return fam.nearest_neighbours(reference, fam.project(projection, features), k=KNN_K)[1][:, -1]

        nearest, _ = fam.nearest_neighbours(reference, fam.project(projection, feats["test"]["penultimate"][correct]), k=1)
        report["reduced_reference"][dims] = {
            "megabytes": reference.nbytes / 1e6,
            "neighbours_same_label": float(np.mean(y_train[nearest[:, 0]] == dataset.y_test[correct])),
            "knn_auroc_digits_vs_test": fam.auroc(kth(feats["test"]["penultimate"]), kth(feats["digits"]["penultimate"])),
            "knn_auroc_hats_vs_real_photos": fam.auroc(kth(photos), kth(feats["hats"]["penultimate"])),
        }

    progress(f"occlusion through {backend}")
    report["occlusion_p50_ms"] = {backend: occlusion_p50_ms(get_backend(run_dir, backend, tta=False), dataset.x_test[:1])}
    return report


def detector_figures(model, early: str, splits, feats: dict, train: dict, early_gaussian, scores: dict,
                     familiar: list[str], unfamiliar: list[str], folds: int = 5) -> dict:
    """Cross-validated AUROC and flagged fractions of the detector alone and of the combined score the
    way fmnist.trust builds it (detector, k-NN on the 16-dimensional reference, first stage), with the
    development sets named `familiar` and `unfamiliar` (besides DETECTOR_TRAIN_ITEMS training items)."""
    from fmnist import familiarity as fam
    from fmnist import trust
    from fmnist.data import stratified_limit
    from fmnist.explain import feature_sets

    keep = stratified_limit(splits.y_train, trust.DETECTOR_TRAIN_ITEMS, 0)
    items = feature_sets(model, splits.x_train[keep], [early])
    inputs = {k: fam.detector_inputs(f["penultimate"], f[early]) for k, f in {**feats, "training_items": items}.items()}
    familiar = {k: inputs[k] for k in ["training_items", *familiar]}
    unfamiliar = {k: inputs[k] for k in unfamiliar}
    cv = fam.cross_validated_detector(familiar, unfamiliar, {"val": inputs["val"], "test": inputs["test"]},
                                      folds, trust.DETECTOR_STRENGTH)
    projection = fam.fit_projection(train["penultimate"], trust.DIMS)
    reference = fam.project(projection, train["penultimate"]).astype(np.float16)
    knn = {k: fam.nearest_neighbours(reference, fam.project(projection, f["penultimate"]), k=trust.KNN_K)[1][:, -1]
           for k, f in {**feats, "training_items": items}.items()}
    first = {**scores[f"mahalanobis_{early}"], "training_items": fam.mahalanobis_score(early_gaussian, items[early])}
    fractions = trust.DETECTOR_FLAG_FRACTIONS
    # each fold's detector over its own validation threshold; k-NN and first stage over theirs
    thresholds = {"detector": 1.0, "knn": fam.choose_threshold(knn["val"], fractions["knn"]),
                  "first_stage": fam.choose_threshold(first["val"], fractions["first_stage"])}
    fold_thresholds = np.array([fam.choose_threshold(o["val"], fractions["detector"]) for o in cv["others"]])
    combined, detector_flagged = {}, {}
    for name in list(familiar) + list(unfamiliar) + ["val", "test"]:
        if name in cv["scores"]:  # each item scored by the fold that held it out
            det = cv["scores"][name] / fold_thresholds[cv["fold"][name]]
        else:  # validation/test: every fold's detector scores every item; the folds' mean
            det = np.mean([o[name] / t for o, t in zip(cv["others"], fold_thresholds)], axis=0)
        combined[name] = fam.combined_score({"detector": det, "knn": knn[name], "first_stage": first[name]}, thresholds)
        detector_flagged[name] = float(np.mean(det > 1.0))
    photos = [k for k in ("clothing_photos", "product_photos") if k in combined]

    def aurocs(by_set: dict[str, np.ndarray]) -> dict:
        found = {"digits_vs_test": fam.auroc(by_set["test"], by_set["digits"]),
                 "noise_vs_test": fam.auroc(by_set["test"], by_set["noise"]),
                 "noise_photos_vs_test": fam.auroc(by_set["test"], by_set["noise_photos"]),
                 "digit_photos_vs_test": fam.auroc(by_set["test"], by_set["digit_photos"])}
        if "hats" in by_set and photos:
            found["hats_vs_real_photos"] = fam.auroc(np.concatenate([by_set[k] for k in photos]), by_set["hats"])
            found.update({f"hats_vs_{k}": fam.auroc(by_set[k], by_set["hats"]) for k in photos})
        return found

    detector_scores = {**cv["scores"], **{k: np.mean([o[k] for o in cv["others"]], axis=0) for k in ("val", "test")}}
    return {"folds": folds, "sizes": {k: int(len(v)) for k, v in {**familiar, **unfamiliar}.items()},
            "flag_fractions": fractions,
            "detector": {"auroc": aurocs(detector_scores), "flagged": detector_flagged},
            "combined": {"auroc": aurocs(combined), "flagged": {k: fam.flagged_fraction(v, 1.0) for k, v in combined.items()}}}


def format_report(report: dict) -> str:
    """The figures as aligned text."""
    lines = [f"run: {report['run']}", "items: " + ", ".join(f"{k} {v:,}" for k, v in report["sizes"].items()), ""]
    for score, s in report["scores"].items():
        a = s["auroc"]
        lines.append(f"{score:20s} AUROC digits/test {a['digits_vs_test']:.4f}  digits/val {a['digits_vs_val']:.4f}  "
                     f"hats/real photos {a['hats_vs_real_photos']:.4f}  noise/test {a['noise_vs_test']:.4f}")
        lines.append(f"{'':20s} flagged at threshold {s['threshold']:.4g}: " +
                     ", ".join(f"{k} {v:.1%}" for k, v in s["flagged"].items()))
    c = report["calibration"]
    lines += ["", f"Keras logits: temperature {c['temperature']:.3f} (fitted on validation): test ECE {c['ece_uncalibrated']:.2%} -> "
              f"{c['ece']:.2%}, NLL {c['nll_uncalibrated']:.4f} -> {c['nll']:.4f}",
              *(f"  through {name}: temperature {b['temperature']:.3f}, test ECE {b['ece_uncalibrated']:.2%} -> "
                f"{b['ece']:.2%}" + (f" (the run's stored temperature: {b['ece_stored_temperature']:.2%})"
                                     if "ece_stored_temperature" in b else "")
                for name, b in report.get("calibration_by_backend", {}).items()),
              f"nearest training item has the same label: {report['neighbours_same_label']:.2%} "
              "of correctly classified test items"]
    lines += [f"reduced reference, PCA {dims} float16 ({r['megabytes']:.1f} MB): nearest same label "
              f"{r['neighbours_same_label']:.2%}, k-NN AUROC digits/test {r['knn_auroc_digits_vs_test']:.4f}, "
              f"hats/real photos {r['knn_auroc_hats_vs_real_photos']:.4f}" for dims, r in report["reduced_reference"].items()]
    if "detector_cv" in report:
        d = report["detector_cv"]
        lines.append(f"outlier-exposure detector, {d['folds']}-fold cross-validated on "
                     + ", ".join(f"{k} {v:,}" for k, v in d["sizes"].items()) + f"; flag fractions {d['flag_fractions']}")
        for part in ("detector", "combined"):
            lines.append(f"  {part:9s} AUROC " + "  ".join(f"{k} {v:.4f}" for k, v in d[part]["auroc"].items()))
            lines.append(f"  {'':9s} flagged " + ", ".join(f"{k} {v:.1%}" for k, v in d[part]["flagged"].items()))
    lines += [f"occlusion map of one image, {k}: {v:.1f} ms p50" for k, v in report["occlusion_p50_ms"].items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Measure and print (text or --json)."""
    from fmnist.data import load_fashion_mnist
    from fmnist.runs import resolve_checked_run

    run_dir = resolve_checked_run(args.run, args.runs_dir)
    dataset = load_fashion_mnist(args.data_dir, download=False)
    backends = tuple(b.strip() for b in args.calibration_backends.split(",") if b.strip())
    report = measure(run_dir, dataset, Path(args.photos_dir), args.backend, args.train_limit, backends,
                     progress=lambda text: print(text, file=sys.stderr, flush=True))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m fmnist.bench_explain", description=__doc__.split("\n")[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
