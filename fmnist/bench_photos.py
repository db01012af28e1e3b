"""`python -m fmnist bench photos DIR [DIR...]`: accuracy on folders of real photos, `<label>_<name>/*.jpg`,
for a plain grey resize, resize-and-invert, and the project's pipeline (fmnist.preprocess).

Per folder and over all folders: accuracy, per-class accuracy with counts, the confusion between classes
(a text matrix and the most frequent confused pairs), so that a regression on one class shows.
`--methods recipe-only` also measures the recipe without background separation (docs/photos.md).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

METHODS = {
    "resize": "plain grey resize to 28x28",
    "invert": "grey resize to 28x28, inverted",
    "pipeline": "fmnist.preprocess.prepare_photo (recipe + background separation)",
    "recipe-only": "the Fashion-MNIST recipe without background separation",
}
DEFAULT_METHODS = ("resize", "invert", "pipeline")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif"}
# Short class names for the text confusion matrix columns (same order as fmnist.data.CLASS_NAMES).
SHORT_NAMES = ("Tee", "Trou", "Pull", "Dres", "Coat", "Sand", "Shir", "Snea", "Bag", "Boot")
TOP_PAIRS = 5


def add_arguments(parser) -> None:
    parser.add_argument("folders", metavar="DIR", nargs="+",
                        help="one or more folders of <label>_<name>/ subfolders of images")
    parser.add_argument("--run", help="run name or path (default: the shipped model, else the newest run)")
    parser.add_argument("--runs-dir")
    parser.add_argument("--backend", default="keras")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated, from: {', '.join(METHODS)}")
    parser.add_argument("--confusion", metavar="METHOD",
                        help="method whose confusion matrix is printed (default: pipeline, else the last method)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many images per class (0: all)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def list_photos(folder: Path, limit: int = 0) -> list[tuple[Path, int]]:
    """(path, label) for every image in `<label>_<name>/` subfolders, sorted."""
    items = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        match = re.match(r"^(\d+)_", sub.name)
        if not match or not 0 <= int(match.group(1)) <= 9:
            continue
        files = sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        items += [(p, int(match.group(1))) for p in (files[:limit] if limit else files)]
    return items


def naive_input(img, invert: bool) -> np.ndarray:
    """What most demo apps do: grey, squash to 28x28, maybe invert."""
    from PIL import Image

    grey = np.asarray(img.convert("L").resize((28, 28), Image.Resampling.LANCZOS))
    return 255 - grey if invert else grey


def method_input(method: str, img) -> np.ndarray:
    """The 28x28 model input a method makes from a decoded photo."""
    from fmnist import preprocess as pp

    if method in ("resize", "invert"):
        return naive_input(img, method == "invert")
    return pp.prepare_photo(img, separate=method == "pipeline").input


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], classes: int = 10) -> np.ndarray:
    """(classes, classes) counts: row = true class, column = predicted class."""
    matrix = np.zeros((classes, classes), np.int64)
    np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
    return matrix


def score(labels: Sequence[int], predictions: Sequence[int]) -> dict:
    """Accuracy, per-class counts and accuracy, the confusion matrix and the most frequent confused pairs
    for true `labels` and predicted classes (class indices 0..9). Only classes present in `labels` get
    a per-class row; the matrix has all 10 classes (a photo can be predicted as any of them)."""
    from fmnist.data import CLASS_NAMES

    matrix = confusion_matrix(labels, predictions, len(CLASS_NAMES))
    n = int(matrix.sum())
    present = [c for c in range(len(CLASS_NAMES)) if matrix[c].sum()]
    classes = [{"label": c, "class": CLASS_NAMES[c], "n": int(matrix[c].sum()), "correct": int(matrix[c, c]),
                "accuracy": float(matrix[c, c] / matrix[c].sum())} for c in present]
    off = [(int(matrix[t, p]), t, p) for t in present for p in range(len(CLASS_NAMES))
           if t != p and matrix[t, p]]
    off.sort(key=lambda row: (-row[0], row[1], row[2]))
    pairs = [{"true": CLASS_NAMES[t], "predicted": CLASS_NAMES[p], "count": k,
              "share_of_true": float(k / matrix[t].sum())} for k, t, p in off]
    return {
        "images": n,
        "correct": int(np.trace(matrix)),
        "accuracy": float(np.trace(matrix) / n) if n else 0.0,
        "per_class": {row["class"]: row["accuracy"] for row in classes},
        "classes": classes,
        "confusion": {"classes": list(CLASS_NAMES), "matrix": matrix.tolist()},
        "confused_pairs": pairs,
    }


def decode_folder(folder: Path, limit: int = 0) -> tuple[list, list[int], list[dict]]:
    """Decoded photos of a folder, their labels, and the files that could not be read (with the reason)."""
    from fmnist.images import ImageError, open_image

    images, labels, skipped = [], [], []
    for path, label in list_photos(folder, limit):
        try:
            images.append(open_image(path.read_bytes()))
        except (ImageError, OSError) as exc:
            skipped.append({"file": str(path), "error": str(exc)})
            continue
        labels.append(label)
    return images, labels, skipped


def bench_folders(folders: Sequence[Path], methods: Sequence[str],
                  predict: Callable[[np.ndarray], np.ndarray], limit: int = 0) -> dict:
    """Score each method on each folder and on all folders together. `predict` maps a (N, 28, 28) uint8
    batch to class probabilities (N, 10); kept as a parameter so the scoring is testable without a model."""
    per_folder, all_labels = [], []
    all_preds: dict[str, list[int]] = {m: [] for m in methods}
    seconds_all = {m: 0.0 for m in methods}
    for folder in folders:
        images, labels, skipped = decode_folder(folder, limit)
        entry = {"folder": str(folder), "images": len(labels), "skipped": skipped, "methods": {}}
        for m in methods:
            t = time.perf_counter()
            inputs = [method_input(m, img) for img in images]
            seconds = time.perf_counter() - t
            seconds_all[m] += seconds
            preds = (np.asarray(predict(np.stack(inputs))).argmax(1).tolist() if inputs else [])
            all_preds[m] += preds
            entry["methods"][m] = {"description": METHODS[m], **score(labels, preds),
                                   "ms_per_image": 1000 * seconds / max(1, len(labels))}
        all_labels += labels
        per_folder.append(entry)
    overall = {m: {"description": METHODS[m], **score(all_labels, all_preds[m]),
                   "ms_per_image": 1000 * seconds_all[m] / max(1, len(all_labels))} for m in methods}
    return {"folders": per_folder, "images": len(all_labels),
            "skipped": [s for f in per_folder for s in f["skipped"]], "methods": overall}


# ----------------------------------------------------------------------------------------------------
# Text output


def class_table(methods: dict) -> list[str]:
    """Per-class accuracy with counts (correct/n), one column per method, and the overall row."""
    names = list(methods)
    first = methods[names[0]]
    width = 17
    header = f"{'class':<14} {'n':>4} " + " ".join(f"{m:>{width}}" for m in names)
    lines = [header, "-" * len(header)]
    for row in first["classes"]:
        cells = []
        for m in names:
            r = next(x for x in methods[m]["classes"] if x["label"] == row["label"])
            cells.append(f"{r['accuracy'] * 100:5.1f}% ({r['correct']:>3}/{r['n']:<3})".rjust(width))
        lines.append(f"{row['class']:<14} {row['n']:>4} " + " ".join(cells))
    lines.append("-" * len(header))
    cells = [f"{methods[m]['accuracy'] * 100:5.1f}% ({methods[m]['correct']:>3}/{methods[m]['images']:<3})"
             .rjust(width) for m in names]
    lines.append(f"{'overall':<14} {first['images']:>4} " + " ".join(cells))
    lines.append(f"{'ms per image':<19} " + " ".join(f"{methods[m]['ms_per_image']:{width}.1f}" for m in names))
    return lines


def confusion_text(scored: dict, top: int = TOP_PAIRS) -> list[str]:
    """The confusion matrix (rows: true classes present; columns: predicted, short names; '.' for 0) and
    the `top` most frequent confused pairs."""
    matrix = np.array(scored["confusion"]["matrix"])
    lines = ["true \\ predicted " + " ".join(f"{s:>4}" for s in SHORT_NAMES)]
    for row in scored["classes"]:
        counts = matrix[row["label"]]
        lines.append(f"{row['class']:<16} " + " ".join(f"{int(v) if v else '.':>4}" for v in counts))
    pairs = scored["confused_pairs"][:top]
    if pairs:
        lines.append("most confused: " + "; ".join(
            f"{p['true']} -> {p['predicted']} {p['count']} ({p['share_of_true'] * 100:.0f}%)" for p in pairs))
    return lines


def print_report(result: dict, confusion_method: str) -> None:
    """Per folder, then overall when there are several folders."""
    print(f"model {result['run']}  backend {result['backend']}")
    sections = [(f"{f['folder']}: {f['images']} photos", f["methods"]) for f in result["folders"]]
    if len(result["folders"]) > 1:
        sections.append((f"all {len(result['folders'])} folders: {result['images']} photos", result["methods"]))
    for title, methods in sections:
        print()
        print(title)
        if not methods[confusion_method]["images"]:
            print("  no images")
            continue
        for line in class_table(methods):
            print(line)
        print(f"confusion, {confusion_method}:")
        for line in confusion_text(methods[confusion_method]):
            print(line)
    for s in result["skipped"]:
        print(f"skipped {s['file']}: {s['error']}", file=sys.stderr)


def run(args) -> int:
    from fmnist.backends import BackendError, get_backend
    from fmnist.console import CLIError
    from fmnist.runs import RunError, resolve_checked_run

    folders = [Path(f) for f in args.folders]
    for folder in folders:
        if not folder.is_dir():
            raise CLIError(f"{folder} is not a folder")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise CLIError(f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)}")
    confusion_method = args.confusion or ("pipeline" if "pipeline" in methods else methods[-1])
    if confusion_method not in methods:
        raise CLIError(f"--confusion {confusion_method} is not one of the measured methods ({', '.join(methods)})")
    empty = [str(f) for f in folders if not list_photos(f, args.limit)]
    if empty:
        raise CLIError(f"no images in <label>_<name>/ subfolders of {', '.join(empty)}")
    try:
        run_dir = resolve_checked_run(args.run, args.runs_dir)
        backend = get_backend(run_dir, args.backend)
    except (RunError, BackendError) as exc:
        raise CLIError(str(exc))

    result = bench_folders(folders, methods, backend.predict_proba, args.limit)
    result = {"folder": str(folders[0]) if len(folders) == 1 else None, "run": str(run_dir),
              "backend": args.backend, **result}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print_report(result, confusion_method)
    return 0
