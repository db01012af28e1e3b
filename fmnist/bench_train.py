"""`python -m fmnist bench train`: train presets (test set held out) and compare the project's
input pipeline with a plain `model.fit` on numpy arrays of the same model, in the same process.

Throughput ratio = the project's training images/s / plain fit's, measured after the preset's
training by alternating full epochs of both (same model, optimizer, batch size and loss; the plain
baseline does no augmentation), medians over two rounds each.
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


def bench_preset(name: str, dataset, progress=None, epochs: int | None = None) -> dict:
    """Train one preset with fmnist.training.train, then measure the plain-fit baseline."""
    from fmnist.data import make_splits
    from fmnist.training import preset_config, train

    config = preset_config(name, epochs=epochs)
    result = train(config, dataset, listeners=[progress] if progress else [], save=False, export=False)
    if result.status != "completed":
        raise RuntimeError(f"preset {name} did not complete: {result.message}")
    epochs_rows = result.history["epochs"]
    splits = make_splits(dataset, config.val_fraction, config.seed, config.limit)
    if progress:
        progress({"kind": "status", "message": f"{name}: throughput vs plain model.fit (2 alternating "
                                               "epochs each)"})
    project_ips, baseline_ips = compare_throughput(config, splits.x_train, splits.y_train)
    images = len(result.history["batches"]) * config.batch_size
    return {
        "preset": name,
        "params": _params(config),
        "epochs": len([e for e in epochs_rows if not e.get("partial")]),
        "wall_s": round(result.seconds, 1),
        "images_per_s": round(images / result.seconds, 1),
        "steady_images_per_s": round(project_ips, 1),
        "plain_fit_images_per_s": round(baseline_ips, 1),
        "throughput_ratio": round(project_ips / baseline_ips, 3),
        "val_accuracy": result.metrics.get("val_accuracy"),
        "test_accuracy": result.metrics["test_accuracy"],
        "train_accuracy": result.metrics.get("train_accuracy"),
        "tta_flip": config.tta_flip,
    }


def _params(config) -> int:
    from fmnist.models import build_model

    return build_model(config.arch, widths=config.widths, dropout=config.dropout).count_params()


def format_table(rows: list[dict], machine: dict) -> str:
    head = ("preset", "params", "epochs", "wall s", "img/s", "val acc", "test acc", "vs plain fit")
    lines = [f"machine: {machine['cpu']}, {machine['cores']} cores, TensorFlow {machine['tensorflow']}", ""]
    body = [head] + [
        (r["preset"], f"{r['params']:,}", str(r["epochs"]), f"{r['wall_s']:.1f}", f"{r['images_per_s']:,.0f}",
         f"{r['val_accuracy'] * 100:.2f}%" if r["val_accuracy"] is not None else "-",
         f"{r['test_accuracy'] * 100:.2f}%",
         f"{r['throughput_ratio']:.2f}x ({r['steady_images_per_s']:,.0f} vs {r['plain_fit_images_per_s']:,.0f})")
        for r in rows
    ]
    widths = [max(len(row[i]) for row in body) for i in range(len(head))]
    for row in body:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def add_arguments(p) -> None:
    p.add_argument("--presets", default="fast,paper", help="comma-separated presets (default: fast,paper)")
    p.add_argument("--epochs", type=int, help="override every preset's epochs (quick checks only)")
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
    machine = machine_info()
    bar = ProgressBar(sys.stderr)
    rows = []
    for name in names:
        sys.stderr.write(f"== {name}\n")
        rows.append(bench_preset(name, dataset, bar, args.epochs))
    if args.json:
        print(json.dumps({"machine": machine, "results": rows}, indent=2))
    else:
        print(format_table(rows, machine))
    return 0
