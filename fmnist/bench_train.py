"""`python -m fmnist bench train`: train presets (test set held out) and compare the project's
input pipeline with a plain `model.fit` on numpy arrays of the same model, in the same process.

Throughput ratio = the project's training images/s / plain fit's, measured after the preset's
training by alternating full epochs of both (same model, optimizer, batch size and loss; the plain
baseline does no augmentation), medians over two rounds each (once per preset, on its first seed).

`--seeds 0,1,2` trains each preset once per seed and adds a summary per preset (mean and spread of
the accuracies and training times). Every row carries the machine's 1-minute load average before
and after its training: timings taken on a busy machine show as such.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

import numpy as np


def machine_info() -> dict:
    """CPU model, usable cores and library versions, for the table's caption."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import tensorflow as tf

    return {"cpu": cpu, "cores": cores, "python": platform.python_version(), "tensorflow": tf.__version__}


def compare_throughput(config, x: np.ndarray, y: np.ndarray, rounds: int = 2) -> tuple[float, float]:
    """(project, plain) training images/s for the same model, alternating full epochs.

    Both models are compiled and warmed up first; then each round times one epoch of the
    project's tf.data pipeline and one epoch of `model.fit` on numpy arrays, back to back, so a
    slower or busier stretch of the machine hits both. Medians over the rounds.
    """
    import keras

    from fmnist.training import compile_model, make_train_dataset

    steps = int(np.ceil(len(x) / config.batch_size))
    ours, plain = compile_model(config, steps), compile_model(config, steps)
    dataset = make_train_dataset(x, y, config)
    xf = x[..., None].astype(np.float32)
    yf = keras.utils.to_categorical(y, 10).astype(np.float32)
    warm = config.batch_size * 10
    ours.fit(dataset.take(10), epochs=1, verbose=0)
    plain.fit(xf[:warm], yf[:warm], batch_size=config.batch_size, epochs=1, verbose=0)
    ours_ips, plain_ips = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        ours.fit(dataset, epochs=1, verbose=0)
        ours_ips.append(len(x) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        plain.fit(xf, yf, batch_size=config.batch_size, epochs=1, verbose=0, shuffle=True)
        plain_ips.append(len(x) / (time.perf_counter() - t0))
    return statistics.median(ours_ips), statistics.median(plain_ips)


def _load() -> float | None:
    """The machine's 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def bench_preset(name: str, dataset, progress=None, epochs: int | None = None, seed: int | None = None,
                 throughput: bool = True) -> dict:
    """Train one preset with fmnist.training.train, then (throughput=True) measure the plain-fit baseline."""
    from fmnist.data import make_splits
    from fmnist.training import preset_config, train

    config = preset_config(name, epochs=epochs, seed=seed)
    load_before = _load()
    result = train(config, dataset, listeners=[progress] if progress else [], save=False, export=False)
    load_after = _load()
    if result.status != "completed":
        raise RuntimeError(f"preset {name} did not complete: {result.message}")
    epochs_rows = result.history["epochs"]
    images = len(result.history["batches"]) * config.batch_size
    row = {
        "preset": name,
        "seed": config.seed,
        "params": _params(config),
        "epochs": len([e for e in epochs_rows if not e.get("partial")]),
        "wall_s": round(result.seconds, 1),
        "images_per_s": round(images / result.seconds, 1),
        "load_before": load_before,
        "load_after": load_after,
        "val_accuracy": result.metrics.get("val_accuracy"),
        "test_accuracy": result.metrics["test_accuracy"],
        "train_accuracy": result.metrics.get("train_accuracy"),
        "tta_flip": config.tta_flip,
        "tta_shift": config.tta_shift,
    }
    if throughput:
        splits = make_splits(dataset, config.val_fraction, config.seed, config.limit)
        if progress:
            progress({"kind": "status", "message": f"{name}: throughput vs plain model.fit (2 alternating "
                                                   "epochs each)"})
        project_ips, baseline_ips = compare_throughput(config, splits.x_train, splits.y_train)
        row.update({"steady_images_per_s": round(project_ips, 1), "plain_fit_images_per_s": round(baseline_ips, 1),
                    "throughput_ratio": round(project_ips / baseline_ips, 3)})
    return row


def summarise(rows: list[dict]) -> list[dict]:
    """Per preset over its seeds: mean, min and max of test and validation accuracy and training time."""
    out = []
    for name in dict.fromkeys(r["preset"] for r in rows):
        mine = [r for r in rows if r["preset"] == name]
        entry: dict = {"preset": name, "seeds": [r["seed"] for r in mine]}
        for key in ("test_accuracy", "val_accuracy", "wall_s"):
            values = [r[key] for r in mine if r[key] is not None]
            if values:
                entry[key] = {"mean": round(statistics.fmean(values), 5), "min": min(values), "max": max(values)}
        out.append(entry)
    return out


def _params(config) -> int:
    from fmnist.models import build_model

    return build_model(config.arch, widths=config.widths, dropout=config.dropout).count_params()


def format_table(rows: list[dict], machine: dict, summary: list[dict] | None = None) -> str:
    head = ("preset", "seed", "params", "epochs", "wall s", "load", "img/s", "val acc", "test acc", "vs plain fit")
    lines = [f"machine: {machine['cpu']}, {machine['cores']} cores, TensorFlow {machine['tensorflow']}", ""]

    def load(r: dict) -> str:
        return "-" if r.get("load_before") is None else f"{r['load_before']:.1f}/{r['load_after']:.1f}"

    def ratio(r: dict) -> str:
        if "throughput_ratio" not in r:
            return "-"
        return f"{r['throughput_ratio']:.2f}x ({r['steady_images_per_s']:,.0f} vs {r['plain_fit_images_per_s']:,.0f})"

    body = [head] + [
        (r["preset"], str(r["seed"]), f"{r['params']:,}", str(r["epochs"]), f"{r['wall_s']:.1f}", load(r),
         f"{r['images_per_s']:,.0f}", f"{r['val_accuracy'] * 100:.2f}%" if r["val_accuracy"] is not None else "-",
         f"{r['test_accuracy'] * 100:.2f}%", ratio(r))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in body) for i in range(len(head))]
    for row in body:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    lines.append("load: the 1-minute load average before/after training (above the core count: a busy machine)")
    for entry in summary or []:
        if len(entry["seeds"]) > 1:
            test, wall = entry["test_accuracy"], entry["wall_s"]
            lines.append(f"{entry['preset']}: test {test['mean'] * 100:.2f}% (min {test['min'] * 100:.2f}%, "
                         f"max {test['max'] * 100:.2f}%) over seeds {', '.join(map(str, entry['seeds']))}; "
                         f"training {wall['mean']:.1f} s (min {wall['min']:.1f}, max {wall['max']:.1f})")
    return "\n".join(lines)


def add_arguments(p) -> None:
    p.add_argument("--presets", default="fast,paper", help="comma-separated presets (default: fast,paper)")
    p.add_argument("--epochs", type=int, help="override every preset's epochs (quick checks only)")
    p.add_argument("--seeds", help="comma-separated seeds: each preset trained once per seed, with a summary "
                                   "(default: the preset's seed)")
    p.add_argument("--no-throughput", action="store_true",
                   help="skip the comparison with plain model.fit (4 extra epochs per preset)")
    p.add_argument("--data-dir")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args) -> int:
    from fmnist.console import CLIError, ProgressBar
    from fmnist.data import DataError, load_fashion_mnist
    from fmnist.training import PRESETS

    names = [n.strip() for n in args.presets.split(",") if n.strip()]
    unknown = [n for n in names if n not in PRESETS]
    if unknown or not names:
        raise CLIError(f"unknown preset(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(PRESETS)}")
    try:
        dataset = load_fashion_mnist(args.data_dir)
    except DataError as exc:
        raise CLIError(str(exc))
    try:
        seeds = [int(v) for v in args.seeds.split(",") if v.strip()] if args.seeds else [None]
    except ValueError:
        raise CLIError(f"--seeds takes comma-separated whole numbers, got {args.seeds!r}")
    if not seeds or any(s is not None and not 0 <= s < 2**31 for s in seeds):
        raise CLIError(f"--seeds takes comma-separated whole numbers from 0 to {2**31 - 1}, got {args.seeds!r}")
    machine = machine_info()
    bar = ProgressBar(sys.stderr)
    rows = []
    for name in names:
        for i, seed in enumerate(seeds):
            sys.stderr.write(f"== {name}" + (f" seed {seed}" if seed is not None else "") + "\n")
            rows.append(bench_preset(name, dataset, bar, args.epochs, seed, throughput=not args.no_throughput and i == 0))
    summary = summarise(rows)
    if args.json:
        print(json.dumps({"machine": machine, "results": rows, "summary": summary}, indent=2))
    else:
        print(format_table(rows, machine, summary))
    return 0
