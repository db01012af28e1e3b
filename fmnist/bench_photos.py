"""`python -m fmnist bench photos DIR`: accuracy on a folder of real photos, `<label>_<name>/*.jpg`,
for a plain grey resize, resize-and-invert, and the project's pipeline (fmnist.preprocess).

`--methods recipe-only` also measures the recipe without background separation (docs/photos.md).
"""

from __future__ import annotations

import json
import re
import sys
import time
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


def add_arguments(parser) -> None:
    parser.add_argument("folder", metavar="DIR", help="folder of <label>_<name>/ subfolders of images")
    parser.add_argument("--run", help="run name or path (default: the shipped model, else the newest run)")
    parser.add_argument("--runs-dir")
    parser.add_argument("--backend", default="keras")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated, from: {', '.join(METHODS)}")
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


def run(args) -> int:
    from fmnist.backends import BackendError, get_backend
    from fmnist.console import CLIError
    from fmnist.data import CLASS_NAMES
    from fmnist.images import ImageError, open_image
    from fmnist.runs import RunError, resolve_checked_run

    folder = Path(args.folder)
    if not folder.is_dir():
        raise CLIError(f"{folder} is not a folder")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise CLIError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    photos = list_photos(folder, args.limit)
    if not photos:
        raise CLIError(f"no images in <label>_<name>/ subfolders of {folder}")
    try:
        run_dir = resolve_checked_run(args.run, args.runs_dir)
        backend = get_backend(run_dir, args.backend)
    except (RunError, BackendError) as exc:
        raise CLIError(str(exc))

    inputs = {m: [] for m in methods}
    labels, skipped, seconds = [], [], {m: 0.0 for m in methods}
    for path, label in photos:
        try:
            img = open_image(path.read_bytes())
        except (ImageError, OSError) as exc:
            skipped.append({"file": str(path), "error": str(exc)})
            continue
        labels.append(label)
        for m in methods:
            t = time.perf_counter()
            inputs[m].append(method_input(m, img))
            seconds[m] += time.perf_counter() - t
    y = np.array(labels)
    classes = sorted(set(labels))
    result = {"folder": str(folder), "run": str(run_dir), "backend": args.backend, "images": len(labels),
              "skipped": skipped, "methods": {}}
    for m in methods:
        pred = backend.predict_proba(np.stack(inputs[m])).argmax(1)
        result["methods"][m] = {
            "description": METHODS[m],
            "accuracy": float((pred == y).mean()),
            "per_class": {CLASS_NAMES[c]: float((pred[y == c] == c).mean()) for c in classes},
            "ms_per_image": 1000 * seconds[m] / max(1, len(labels)),
        }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{len(labels)} photos in {folder}  model {run_dir}  backend {args.backend}")
    header = f"{'class':<14} {'n':>4} " + " ".join(f"{m:>12}" for m in methods)
    print(header)
    print("-" * len(header))
    for c in classes:
        row = " ".join(f"{result['methods'][m]['per_class'][CLASS_NAMES[c]] * 100:11.1f}%" for m in methods)
        print(f"{CLASS_NAMES[c]:<14} {int((y == c).sum()):>4} {row}")
    print("-" * len(header))
    print(f"{'overall':<14} {len(labels):>4} " +
          " ".join(f"{result['methods'][m]['accuracy'] * 100:11.1f}%" for m in methods))
    print(f"{'ms per image':<19} " + " ".join(f"{result['methods'][m]['ms_per_image']:12.1f}" for m in methods))
    for s in skipped:
        print(f"skipped {s['file']}: {s['error']}", file=sys.stderr)
    return 0
