"""`python -m fmnist bench serve [--run RUN] [--clients 8] [--requests 200] [--items 1000] [--json]`:
the remote backend (a KServe v2 model server) beside the in-process OpenVINO FP32 backend.

Starts `python -m fmnist serve` for the run on a free loopback port (or uses --serving-url), then:
  1. agreement on the first N test images: top-1 agreement and the largest probability
     difference between the server's answers and the local FP32 backend's, each model itself
     (no flip averaging), plus each side's batch throughput on those images;
  2. C concurrent clients x R single-image requests each, through the remote backend (one shared
     client, as the web app's threads share it) and through the in-process backend (the same
     threads, images and counts): p50/p95 latency, requests per second, errors.

On one machine the server and its clients share the CPU cores: the remote figures include the
protocol (HTTP, JSON header, binary tensors) and that competition; docs/deployment.md says what
they mean for scaling.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from fmnist.backends import BackendError, get_backend
from fmnist.console import CLIError
from fmnist.remote import MAX_BATCH


def concurrent_calls(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, clients: int,
                     requests: int, warmup: int = 5) -> dict:
    """`clients` threads, each making `requests` single-image calls of `predict` one after another,
    all starting together: latency p50/p95/mean (ms, successful calls), requests per second over
    the wall time, and the errors (count and the first message)."""
    for i in range(warmup):
        predict(images[i % len(images)][None])
    start = threading.Barrier(clients + 1)
    errors: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> list[float]:
        times = []
        start.wait(timeout=60)
        for i in range(requests):
            x = images[(c * requests + i) % len(images)][None]
            t0 = time.perf_counter()
            try:
                predict(x)
            except Exception as exc:  # counted and reported, never raised: the run goes on
                with lock:
                    errors.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                continue
            times.append(time.perf_counter() - t0)
        return times

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, c) for c in range(clients)]
        start.wait(timeout=60)
        t0 = time.perf_counter()
        latencies = np.array([t for f in futures for t in f.result()])
        wall = time.perf_counter() - t0
    ok = len(latencies)
    return {"clients": clients, "requests_per_client": requests, "calls": clients * requests, "ok": ok,
            "errors": len(errors), "first_error": errors[0] if errors else None,
            "p50_ms": float(np.percentile(latencies, 50) * 1e3) if ok else None,
            "p95_ms": float(np.percentile(latencies, 95) * 1e3) if ok else None,
            "mean_ms": float(latencies.mean() * 1e3) if ok else None,
            "requests_per_s": ok / wall if wall > 0 else None, "seconds": wall}


def _timed(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> tuple[np.ndarray, float]:
    predict(x[:MAX_BATCH])  # warm-up: the throughput path compiles on first use
    t0 = time.perf_counter()
    probs = predict(x)
    return np.asarray(probs, np.float32), time.perf_counter() - t0


def measure_serving(run_dir, url: str, images: np.ndarray, labels: np.ndarray, clients: int, requests: int,
                    progress: Callable[[str], None] = lambda message: None) -> dict:
    """Agreement, batch throughput and concurrent single-image latency of the remote backend at
    `url` vs the in-process OpenVINO FP32 backend (see the module doc). JSON-ready."""
    local = get_backend(run_dir, "openvino-fp32", tta=False)
    progress(f"connecting to {url}")
    remote = get_backend(run_dir, "remote", tta=False, url=url, cache=False)
    try:
        progress(f"agreement on {len(images):,} test images")
        remote_probs, remote_s = _timed(remote.predict_proba, images)
        local_probs, local_s = _timed(local.predict_proba, images)
        agree = remote_probs.argmax(1) == local_probs.argmax(1)
        rows = {}
        for key, predict in (("remote", remote.predict_proba), ("local", local.predict_proba)):
            progress(f"{clients} clients x {requests} single-image requests: {key}")
            rows[key] = concurrent_calls(predict, images, clients, requests)
    finally:
        remote.close()
    return {
        "run": str(run_dir), "url": url, "items": int(len(images)),
        "agreement": {"top1_agreement": float(agree.mean()), "disagreements": int((~agree).sum()),
                      "max_prob_diff": float(np.abs(remote_probs - local_probs).max()),
                      "accuracy_remote": float(np.mean(remote_probs.argmax(1) == labels)),
                      "accuracy_local": float(np.mean(local_probs.argmax(1) == labels))},
        "batch": {"remote_images_per_s": len(images) / remote_s, "local_images_per_s": len(images) / local_s,
                  "max_batch": MAX_BATCH},
        "concurrent": rows, "machine": _machine(),
    }


def _machine() -> dict:
    """CPU, cores and versions (without importing TensorFlow, which this benchmark never needs)."""
    from importlib import metadata

    from fmnist import openvino_ir

    info = {"cpu": "", "logical_cores": os.cpu_count()}
    try:
        info["cpu"] = str(openvino_ir.core().get_property("CPU", "FULL_DEVICE_NAME"))
    except Exception:  # the figures stand without the CPU's name
        pass
    for package in ("openvino", "kserve"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    return info


def format_report(result: dict) -> str:
    """The measured figures as text."""
    m, a, b = result["machine"], result["agreement"], result["batch"]
    lines = [f"run {result['run']} served at {result['url']}",
             f"CPU: {m.get('cpu') or '?'}, {m.get('logical_cores')} logical cores (server and clients share them); "
             f"OpenVINO {m.get('openvino')}, KServe {m.get('kserve')}", "",
             f"agreement on {result['items']:,} test images (each model itself, no flip averaging): top-1 "
             f"{a['top1_agreement'] * 100:.2f}% ({a['disagreements']} differ), largest probability difference "
             f"{a['max_prob_diff']:.1e}; accuracy remote {a['accuracy_remote'] * 100:.2f}%, "
             f"in-process {a['accuracy_local'] * 100:.2f}%",
             f"batch of {result['items']:,} images: remote {b['remote_images_per_s']:,.0f} images/s (requests of up to "
             f"{b['max_batch']}), in-process {b['local_images_per_s']:,.0f} images/s", ""]
    any_row = next(iter(result["concurrent"].values()))
    lines.append(f"{any_row['clients']} clients x {any_row['requests_per_client']} single-image requests"
                 f"{'':<4}{'p50 ms':>8} {'p95 ms':>8} {'req/s':>8} {'errors':>7}")
    labels = {"remote": "remote (KServe v2 REST)", "local": "in-process OpenVINO FP32"}
    width = len(lines[-1]) - 34
    for key, row in result["concurrent"].items():
        def num(value, fmt):
            return format(value, fmt) if value is not None else "-"

        lines.append(f"{labels[key]:<{width}}{num(row['p50_ms'], '>8.2f')} {num(row['p95_ms'], '>8.2f')} "
                     f"{num(row['requests_per_s'], '>8,.0f')} {row['errors']:>7}")
        if row["first_error"]:
            lines.append(f"  first error: {row['first_error']}")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("--run", help="run name or path (default: the shipped model, else the newest run)")
    parser.add_argument("--runs-dir")
    parser.add_argument("--data-dir", help="Fashion-MNIST folder (default: $FMNIST_DATA_DIR, then the Keras cache)")
    parser.add_argument("--serving-url", help="measure this model server instead of starting one "
                                              "(it must serve the run: the remote backend checks)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (threads), 1-64")
    parser.add_argument("--requests", type=int, default=200, help="single-image requests per client")
    parser.add_argument("--items", type=int, default=1000, help="test images for the agreement check (1-10000)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args) -> int:
    from fmnist import data as fdata
    from fmnist.openvino_ir import read_export_info
    from fmnist.runs import RunError, resolve_checked_run
    from fmnist.serving import ServerProcess

    if not 1 <= args.clients <= 64 or args.requests < 1 or not 1 <= args.items <= 10_000:
        raise CLIError("--clients must be 1-64, --requests at least 1, --items 1-10000")
    try:
        run_dir = resolve_checked_run(args.run, args.runs_dir)
    except RunError as exc:
        raise CLIError(str(exc))
    if read_export_info(run_dir) is None:
        raise CLIError(f"run {run_dir} has no OpenVINO export to serve: run `python -m fmnist export {run_dir}`")
    try:
        dataset = fdata.load_fashion_mnist(args.data_dir, download=False)
    except fdata.DataError as exc:
        raise CLIError(str(exc))

    def progress(message: str) -> None:
        print(f"{message}...", file=sys.stderr, flush=True)

    serving = contextlib.nullcontext(args.serving_url) if args.serving_url else ServerProcess(run_dir)
    if not args.serving_url:
        progress(f"starting `python -m fmnist serve --run {run_dir}` on a free loopback port")
    try:
        with serving as url:
            result = measure_serving(run_dir, url, dataset.x_test[:args.items], dataset.y_test[:args.items],
                                     args.clients, args.requests, progress)
    except RuntimeError as exc:  # ServerProcess: the server exited or did not get ready
        raise CLIError(f"the model server did not start: {exc}")
    except BackendError as exc:
        raise CLIError(str(exc))
    result["server"] = "given (--serving-url)" if args.serving_url else "started by the benchmark"
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0
