"""Command line: python -m fmnist {train,evaluate,runs,predict,...} --help.

Errors print one line to stderr and exit non-zero; tracebacks only with FMNIST_DEBUG=1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from pathlib import Path

from fmnist import data as fdata


from fmnist.console import CLIError, ProgressBar  # noqa: F401  (moved there: the bench commands share them)


def _bounded(name: str, kind: type, low: float, high: float):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a {kind.__name__}, got {text!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{name} must be finite, got {text!r}")
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{name} must be between {low} and {high}, got {text}")
        return value

    return parse


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def _float_list(text: str) -> float | list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or two comma-separated numbers, got {text!r}")
    return values[0] if len(values) == 1 else values


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from fmnist.models import ARCHITECTURES
    from fmnist.training import OPTIMIZERS, PRECISIONS, PRESETS, SCHEDULES, TrainConfig

    b = TrainConfig.BOUNDS
    p.add_argument("--preset", choices=list(PRESETS), help="start from a recipe (flags below override it)")
    p.add_argument("--arch", choices=list(ARCHITECTURES), help="architecture (default: paper)")
    p.add_argument("--widths", type=_int_list, help="comma-separated channel/unit counts, e.g. 32,64,128")
    p.add_argument("--dropout", type=_float_list, help="dropout: one value, or conv,dense")
    p.add_argument("--epochs", type=_bounded("epochs", int, *b["epochs"]))
    p.add_argument("--batch-size", type=_bounded("batch size", int, *b["batch_size"]))
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--learning-rate", "--lr", type=_bounded("learning rate", float, *b["learning_rate"]))
    p.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule")
    p.add_argument("--warmup-epochs", type=_bounded("warm-up epochs", float, *b["warmup_epochs"]))
    p.add_argument("--weight-decay", type=_bounded("weight decay", float, *b["weight_decay"]))
    p.add_argument("--label-smoothing", type=_bounded("label smoothing", float, *b["label_smoothing"]))
    p.add_argument("--augment-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips")
    p.add_argument("--augment-shift", type=_bounded("shift", int, *b["augment_shift"]),
                   help="random translation in pixels")
    p.add_argument("--augment-scale", type=_bounded("scale", float, *b["augment_scale"]),
                   help="random zoom about the centre, e.g. 0.1 = up to ±10%%")
    p.add_argument("--augment-photo", type=_bounded("photo augmentation", float, *b["augment_photo"]),
                   help="strength 0-1 of photo-like changes: tone, lighting, tilt, soft/sharp edges, specks")
    p.add_argument("--augment-erase", type=_bounded("erase probability", float, *b["augment_erase"]),
                   help="probability of random erasing (one black rectangle per image)")
    p.add_argument("--ema", type=_bounded("ema", float, *b["ema"]), help="weight averaging momentum (0 = off)")
    p.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="average test predictions with mirrored images")
    p.add_argument("--tta-shift", type=_bounded("test-time shift", int, *b["tta_shift"]),
                   help="also average test predictions over the image moved this many pixels up, down, left "
                        "and right (0: none)")
    p.add_argument("--val-fraction", type=_bounded("validation fraction", float, *b["val_fraction"]))
    p.add_argument("--seed", type=_bounded("seed", int, *b["seed"]))
    p.add_argument("--limit", type=_bounded("limit", int, *b["limit"]),
                   help="train on a stratified subset of this many images (quick runs)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="bfloat16 = mixed-precision training, faster for wide models on CPUs with AMX")
    p.add_argument("--tensorboard", action="store_true", default=None, help="write TensorBoard logs in the run")
    p.add_argument("--data-dir", help=f"folder with the Fashion-MNIST files (default: ${fdata.ENV_VAR}, "
                                      "then the Keras cache, then download)")
    p.add_argument("--runs-dir", help="where runs are saved (default: $FMNIST_RUNS_DIR or ./runs)")
    p.add_argument("--no-export", action="store_true", help="skip the OpenVINO export after training")


def config_from_args(args: argparse.Namespace):
    """TrainConfig from CLI flags: the preset (or defaults), overridden by given flags."""
    from fmnist.config import preset_config

    fields = ("arch", "widths", "dropout", "epochs", "batch_size", "optimizer", "learning_rate", "schedule",
              "warmup_epochs", "weight_decay", "label_smoothing", "augment_flip", "augment_shift",
              "augment_scale", "augment_photo", "augment_erase", "ema", "tta_flip", "tta_shift", "val_fraction", "seed", "limit", "precision", "tensorboard")
    try:
        return preset_config(args.preset, **{f: getattr(args, f, None) for f in fields})
    except ValueError as exc:
        raise CLIError(str(exc))


def cmd_train(args) -> int:
    from fmnist.training import train

    config = config_from_args(args)
    if config.precision == "bfloat16":
        from fmnist.openvino_ir import supports_bf16

        if not supports_bf16():  # measured: 7.7x slower than float32 on an AVX2-only CPU (README)
            print("note: this CPU has no native bfloat16 (AMX or AVX512-BF16), so bfloat16 training is several "
                  "times slower than float32 here; pass --precision float32 for speed", file=sys.stderr)
    try:
        dataset = fdata.load_fashion_mnist(args.data_dir)
    except fdata.DataError as exc:
        raise CLIError(str(exc))
    stop = threading.Event()
    bar = ProgressBar()
    try:
        result = train(config, dataset, listeners=[bar], stop_event=stop, runs_root=args.runs_dir,
                       export=not args.no_export)
    except KeyboardInterrupt:
        raise CLIError("interrupted")
    if result.status == "failed":
        raise CLIError(f"training failed: {result.message}")
    m = result.metrics
    print(f"{result.status}: test accuracy {m['test_accuracy'] * 100:.2f}%  "
          f"(validation {m['val_accuracy'] * 100 if m.get('val_accuracy') is not None else float('nan'):.2f}%, "
          f"train {m['train_accuracy'] * 100:.2f}%) in {result.seconds:.1f}s of training")
    print(result.run_dir)
    return 0


def _run_or_error(ref, runs_dir=None) -> Path:
    """The usable, untampered run `ref` names; CLIError saying why not."""
    from fmnist.runs import RunError, resolve_checked_run

    try:
        return resolve_checked_run(ref, runs_dir)
    except RunError as exc:
        raise CLIError(str(exc))


def first_use(run: Path, args) -> bool:
    """Give a run trained before the trust bundle existed its calibration and unfamiliar-input
    thresholds now, once, stored with the run (`trust.store` through `jobs.compute_artifacts`: no
    development photos, so no detector; seconds for a quick run, a minute or two for a full one),
    with one progress line per step on stderr. Where that cannot be done (no data here, a run folder
    that is not writable, another data set) one stderr line says why and what to run later, and the
    answer comes as before: raw probabilities, null unfamiliar fields. Returns whether it computed."""
    from fmnist.jobs import ArtifactsError, artifacts_problem, compute_artifacts
    from fmnist.trust import has_trust

    if getattr(args, "no_first_use", False) or has_trust(run):
        return False
    later = f"run `python -m fmnist.trust --run {run}` later"

    def say(text: str) -> None:
        print(f"first use of {run.name}: {text}", file=sys.stderr, flush=True)

    def fall_back(why: str) -> bool:
        say(f"not calibrated, no unfamiliar-input check: {why}; {later}")
        return False

    if not os.access(run, os.W_OK):
        return fall_back(f"the run folder {run} is not writable")
    try:
        dataset = fdata.load_fashion_mnist(getattr(args, "data_dir", None), download=False)
    except fdata.DataError as exc:
        return fall_back(f"the Fashion-MNIST files are not here ({str(exc).splitlines()[0]})")
    problem = artifacts_problem(run, dataset)
    if problem:
        return fall_back(problem)
    say("computing its calibration and unfamiliar-input thresholds (once, stored with the run) ...")
    t0 = time.perf_counter()
    try:
        from fmnist.training import import_tensorflow_quietly

        import_tensorflow_quietly()
        compute_artifacts(run, dataset, progress=say, with_map=False)
    except (ArtifactsError, OSError) as exc:
        return fall_back(f"computing them failed ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
    say(f"done in {time.perf_counter() - t0:.0f} s, stored in {run / 'trust'}")
    return True


def cmd_evaluate(args) -> int:
    from fmnist.evaluation import evaluate_probabilities, format_report
    from fmnist.runs import load_metrics, load_test_probs

    run = _run_or_error(args.run, args.runs_dir)
    first_use(run, args)
    backend_name = args.backend or ("remote" if args.serving_url else "stored")
    if backend_name != "stored":
        probs = _backend_probs(run, backend_name, args.data_dir, args.serving_url)
        metrics = evaluate_probabilities(probs, fdata.load_fashion_mnist(args.data_dir).y_test)
        metrics["backend"] = backend_name
    else:
        metrics = load_metrics(run)
        metrics["backend"] = "stored"
        probs = load_test_probs(run)
    metrics["run"] = str(run)
    metrics.update(_calibration(run, probs, args.data_dir))
    if args.json:
        out = dict(metrics)
        out["misclassified"] = out["misclassified"][: args.top_errors]
        print(json.dumps(out, indent=2))
    else:
        if metrics["backend"] == "stored":
            print(model_line(run, "stored").split(" · ")[0] + " · the test-set answers saved at training time "
                  "(Keras); --backend re-runs the test set")
        else:
            print(model_line(run, metrics["backend"]))
        print(format_report(metrics))
        if metrics["ece"] is not None:
            print(f"calibration: temperature {metrics['temperature']:.3f} (fitted on validation), expected "
                  f"calibration error {metrics['ece_uncalibrated']:.2%} -> {metrics['ece']:.2%}")
    return 0


def _calibration(run: Path, probs, data_dir=None) -> dict:
    """evaluate's "temperature", "ece", "ece_uncalibrated" (null when the run has no trust artifacts or
    the test labels cannot be read)."""
    from fmnist.trust import TrustError, calibration_fields

    try:
        labels = fdata.load_fashion_mnist(data_dir).y_test
    except fdata.DataError:
        labels = None
    try:
        return calibration_fields(run, probs, labels)
    except TrustError as exc:
        raise CLIError(str(exc))


def _backend_probs(run: Path, backend: str, data_dir=None, url: str | None = None):
    from fmnist.backends import BackendError, get_backend

    try:
        dataset = fdata.load_fashion_mnist(data_dir)
        return get_backend(run, backend, url=url).predict_proba(dataset.x_test)
    except (BackendError, fdata.DataError) as exc:
        raise CLIError(str(exc))


def cmd_runs(args) -> int:
    from fmnist.runs import list_runs, run_row

    rows = [run_row(info) for info in list_runs(args.runs_dir)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no runs yet: python -m fmnist train --preset fast")
        return 0

    def percent(value) -> str:
        return f"{value * 100:.2f}%" if isinstance(value, float) else "-"

    print(f"{'run':<34} {'status':<10} {'epochs':>6} {'test acc':>9} {'val acc':>8}  configuration")
    for row in rows:
        print(f"{row['name']:<34} {row['status']:<10} {row.get('epochs_done') or '-':>6} "
              f"{percent(row.get('test_accuracy')):>9} {percent(row.get('best_val_accuracy')):>8}  "
              f"{row['configuration'] or '-'}" + (f"  ({row['reason']})" if row["reason"] else ""))
    return 0


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def image_files(paths: list[str]) -> list[Path]:
    """The files to classify: each file named, and the images (PNG, JPEG, WebP) in each folder
    named, sorted. A folder without images is an error, as is a path that does not exist."""
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise CLIError(f"{name}: no PNG, JPEG or WebP images in this folder")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise CLIError(f"{name}: no such file or folder")
    return files


def default_backend(run: Path) -> str:
    """OpenVINO FP32 when the run has its verified IR (as the app does: it answers without
    TensorFlow), else Keras."""
    from fmnist.runs import checked_run

    return "openvino-fp32" if checked_run(run).bundles.get("openvino") == "ok" else "keras"


def model_line(run: Path, backend: str) -> str:
    """Which model and backend answered, in the app's words."""
    from fmnist.runs import checked_run

    labels = {"keras": "Keras (TensorFlow)", "openvino-fp32": "OpenVINO FP32", "openvino-int8": "OpenVINO INT8",
              "remote": "remote (KServe v2 model server)"}
    return f"model {checked_run(run).label()} · backend {labels.get(backend, backend)}"


def cmd_predict(args) -> int:
    from fmnist.data import CLASS_NAMES

    run = _run_or_error(args.run, args.runs_dir)
    backend_name = args.backend or ("remote" if args.serving_url else default_backend(run))
    prepared, failures = prepare_images(args.images)
    results = []
    if prepared:
        import numpy as np

        from fmnist.trust import TrustError, answer_fields

        backend = _backend_or_error(run, backend_name, args.serving_url)
        first_use(run, args)
        images = np.stack([p.input for _, p in prepared])
        probs = backend.predict_proba(images)
        try:
            trusted = answer_fields(run, backend, images, probs)
        except TrustError as exc:
            raise CLIError(str(exc))
        for (name, prep), row, extra in zip(prepared, probs, trusted):
            label = int(row.argmax())  # the temperature never changes it
            results.append({"file": name, "label": label, "class_name": CLASS_NAMES[label],
                            "probabilities": [round(float(v), 6) for v in extra["probabilities"]],
                            "unfamiliar": extra["unfamiliar"], "unfamiliar_score": extra["unfamiliar_score"],
                            "calibrated": extra["calibrated"], "warnings": list(prep.warnings)})
    if args.json:
        out = [{**r, "run": str(run), "backend": backend_name} for r in results]
        out += [{"file": n, "error": e} for n, e in failures]
        print(json.dumps(out, indent=2))
    else:
        print(model_line(run, backend_name))
        for r in results:
            order = sorted(range(10), key=lambda i: -r["probabilities"][i])[:3]
            top = ", ".join(f"{CLASS_NAMES[i]} {r['probabilities'][i] * 100:.1f}%" for i in order)
            print(f"{r['file']}: {top}")
            for w in r["warnings"] + ([UNFAMILIAR_WARNING] if r["unfamiliar"] else []):
                print(f"  warning: {w}")
        for n, e in failures:
            print(f"{n}: error: {e}", file=sys.stderr)
    return 0 if not failures else 2


UNFAMILIAR_WARNING = "this does not look like any of the ten Fashion-MNIST items: do not trust the answer"


def prepare_images(paths: list[str]) -> tuple[list, list]:
    """([(file, prepared input)], [(file, why it was refused)]) for the files `image_files` finds."""
    from fmnist.preprocess import PreprocessError, load_for_model

    prepared, failures = [], []
    for path in image_files(paths):
        try:
            prepared.append((str(path), load_for_model(path)))
        except PreprocessError as exc:
            failures.append((str(path), str(exc)))
    return prepared, failures


def _backend_or_error(run: Path, name: str, url: str | None = None):
    from fmnist.backends import BackendError, get_backend

    if name == "keras":  # the default for a run without its OpenVINO export: TensorFlow's start-up notices kept off
        from fmnist.training import import_tensorflow_quietly

        import_tensorflow_quietly()
    try:
        return get_backend(run, name, url=url)
    except BackendError as exc:
        raise CLIError(str(exc))


def cmd_explain(args) -> int:
    import numpy as np

    from fmnist.data import CLASS_NAMES
    from fmnist.explanations import explain_images, heatmap_text
    from fmnist.trust import TrustError

    if not 1 <= args.neighbours <= 50:
        raise CLIError(f"--neighbours must be between 1 and 50, got {args.neighbours}")
    run = _run_or_error(args.run, args.runs_dir)
    backend_name = args.backend or ("remote" if args.serving_url else default_backend(run))
    prepared, failures = prepare_images(args.images)
    results = []
    if prepared:
        backend = _backend_or_error(run, backend_name, args.serving_url)
        first_use(run, args)
        try:
            found = explain_images(run, backend, np.stack([p.input for _, p in prepared]), args.neighbours)
        except TrustError as exc:
            raise CLIError(str(exc))
        results = [{"file": name, "class_name": CLASS_NAMES[item["label"]], **item,
                    "warnings": list(prep.warnings)} for (name, prep), item in zip(prepared, found)]
    if args.json:
        out = [{**r, "run": str(run), "backend": backend_name} for r in results]
        print(json.dumps(out + [{"file": n, "error": e} for n, e in failures]))
    else:
        print(model_line(run, backend_name))
        for r in results:
            print(f"{r['file']}: {r['class_name']} {r['probabilities'][r['label']]:.1%} (calibrated)")
            for w in r["warnings"] + ([UNFAMILIAR_WARNING] if r["unfamiliar"] else []):
                print(f"  warning: {w}")
            print(f"  unfamiliar score {r['unfamiliar_score']:.2f} (over 1.00: unlike Fashion-MNIST): "
                  f"{'unfamiliar' if r['unfamiliar'] else 'familiar'}")
            print("  nearest training items: " + ", ".join(
                f"#{n['index']} {CLASS_NAMES[n['label']]} ({n['distance']:.3f})" for n in r["nearest"]))
            print(f"  where it looked ({r['method']}; darker = more evidence for {r['class_name']}):")
            for line in heatmap_text(r["heatmap"]):
                print("  " + line)
        for n, e in failures:
            print(f"{n}: error: {e}", file=sys.stderr)
    return 0 if not failures else 2


def _add_first_use_args(p: argparse.ArgumentParser, data_dir: bool = True) -> None:
    """--no-first-use (and --data-dir where the command has none): see `first_use`."""
    p.add_argument("--no-first-use", action="store_true",
                   help="for a run without calibration (trained before it existed): answer uncalibrated instead "
                        "of computing its trust bundle first (once, stored with the run; needs the data set)")
    if data_dir:
        p.add_argument("--data-dir", help="Fashion-MNIST folder, for a run's first use (default: $FMNIST_DATA_DIR, "
                                          "then the Keras cache; never downloads)")


def build_parser() -> argparse.ArgumentParser:
    from fmnist.backends import BACKENDS, REMOTE

    served = BACKENDS + (REMOTE,)
    url_help = ("the model server of --backend remote, e.g. http://127.0.0.1:8080 (default: $FMNIST_SERVING_URL; "
                "given alone, it implies --backend remote); start one with `python -m fmnist serve`")
    parser = argparse.ArgumentParser(prog="python -m fmnist", description=(
        "Fashion-MNIST Studio: train CNNs on Fashion-MNIST, evaluate them, and classify images "
        "with Keras or OpenVINO."))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model and save a run",
                       description="Train a model; prints progress and the run directory.")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="test accuracy, per-class scores, confusion matrix of a run")
    p.add_argument("run", nargs="?", help="run name or path (default: the shipped model)")
    p.add_argument("--backend", choices=("stored",) + served, default=None,
                   help="re-run the test set through a backend (default: stored, the metrics saved with the run)")
    p.add_argument("--serving-url", help=url_help)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--top-errors", type=int, default=50, help="misclassified items listed in --json")
    p.add_argument("--data-dir")
    p.add_argument("--runs-dir")
    _add_first_use_args(p, data_dir=False)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("runs", help="list saved runs with status and accuracy")
    p.add_argument("--json", action="store_true")
    p.add_argument("--runs-dir")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("predict", help="classify image files or folders of images (top-3 classes)")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                   help="PNG, JPEG or WebP files; a folder stands for the images in it")
    p.add_argument("--run", help="run name or path (default: the shipped model, else the newest run)")
    p.add_argument("--backend", choices=served, default=None,
                   help="default: openvino-fp32 when the run has its OpenVINO export (no TensorFlow), else keras; "
                        "remote: a model server (--serving-url)")
    p.add_argument("--serving-url", help=url_help)
    p.add_argument("--json", action="store_true")
    p.add_argument("--runs-dir")
    _add_first_use_args(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("explain", help="why the model answered: heat map, nearest training items, "
                       "calibrated probability, unfamiliar-input warning")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                   help="PNG, JPEG or WebP files; a folder stands for the images in it")
    p.add_argument("--run", help="run name or path (default: the shipped model, else the newest run)")
    p.add_argument("--backend", choices=served, default=None,
                   help="default: openvino-fp32 when the run has its OpenVINO export (no TensorFlow), else keras; "
                        "remote: a model server (--serving-url)")
    p.add_argument("--serving-url", help=url_help)
    p.add_argument("--neighbours", type=int, default=5, help="nearest training items per image (1-50)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--runs-dir")
    _add_first_use_args(p)
    p.set_defaults(func=cmd_explain)

    from fmnist import bench, export, serving, sweep

    for module in (export, bench, sweep, serving):  # commands defined beside what they run (lower layers)
        module.add_cli(sub, CLIError)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    if args.command == "train" or getattr(args, "backend", None) == "keras":
        # TensorFlow only where it answers: importing it costs seconds (predict and evaluate with
        # OpenVINO never load it); its C++ start-up notices are kept off the terminal
        from fmnist.training import import_tensorflow_quietly

        import_tensorflow_quietly()
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence: one line, never a traceback
        if os.environ.get("FMNIST_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {exc} (set FMNIST_DEBUG=1 for details)", file=sys.stderr)
        return 1
