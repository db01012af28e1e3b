"""Keras vs OpenVINO on one run, measured in this process: what the Compare page and
`python -m fmnist bench infer` show.

Measures, on the test images:
  * single-image latency (p50, p95, mean) of Keras `predict`, Keras `model(x)`, and every OpenVINO
    backend's `predict_proba` on one image (its LATENCY-hint path, input conversion included);
  * batch throughput in images/s on all test images for Keras `predict` (batch 1000, the Keras
    backend's own setting) and every OpenVINO backend (THROUGHPUT hint, AsyncInferQueue), best of
    `batch_repeats` timed runs after one warm-up run;
  * each backend's test accuracy, top-1 agreement with Keras and the largest absolute probability
    difference from Keras.

Each backend is timed as the model itself: without the flip averaging (`tta_flip`) that the app and
`evaluate` apply for runs trained with it, which doubles the work per image.

`measure_backends(run_dir, images, labels, progress=None, ...)` does the work;
`measure_backends_isolated` runs it in a child process (the web app's server never imports
TensorFlow). The result is JSON-ready:

    {
      "run": str, "images": int,
      "machine": {"cpu": str, "logical_cores": int, "bf16": bool, "openvino": str, "tensorflow": str, "keras": str},
      "settings": {"latency_calls": int, "keras_predict_calls": int, "batch_repeats": int,
                   "keras_batch_size": int, "openvino_chunk": int},
      "latency": [{"method": "keras-predict" | "keras-call" | "openvino-fp32" | "openvino-int8" | "openvino-bf16",
                   "label": str, "calls": int, "p50_ms": float, "p95_ms": float, "mean_ms": float}, ...],
      "batch": [{"backend": "keras" | "openvino-fp32" | ..., "label": str, "precision": str,
                 "images_per_s": float, "seconds": float, "speedup_vs_keras": float,
                 "accuracy": float, "top1_agreement": float, "disagreements": int,
                 "max_prob_diff": float}, ...],
      "ratios": {"fp32_latency_vs_keras_call": float, "fp32_latency_vs_keras_predict": float,
                 "fp32_throughput_vs_keras_predict": float, "int8_throughput_vs_fp32": float,
                 "int8_accuracy_minus_fp32_points": float},   # keys present when both sides were measured
      "skipped": {backend name: reason},
      "seconds": float
    }

progress(fraction in 0..1, message) is called before every step.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from fmnist import openvino_ir
from fmnist.child import Child, ChildEnded, Link
from fmnist.backends import BackendError, get_backend

LABELS = {
    "keras-predict": "Keras predict", "keras-call": "Keras model(x)", "keras": "Keras predict",
    "openvino-fp32": "OpenVINO FP32", "openvino-int8": "OpenVINO INT8", "openvino-bf16": "OpenVINO BF16",
}
KERAS_BATCH = 1000


def _latency(fn: Callable[[np.ndarray], object], images: np.ndarray, calls: int, warmup: int = 5) -> dict:
    for i in range(warmup):
        fn(images[i % len(images)][None])
    times = np.empty(calls)
    for i in range(calls):
        x = images[i % len(images)][None]
        t0 = time.perf_counter()
        fn(x)
        times[i] = time.perf_counter() - t0
    return {"calls": calls, "p50_ms": float(np.percentile(times, 50) * 1e3),
            "p95_ms": float(np.percentile(times, 95) * 1e3), "mean_ms": float(times.mean() * 1e3)}


def _throughput(fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, repeats: int):
    probs = fn(images)  # warm-up: compiles, allocates, traces
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        probs = fn(images)
        best = min(best, time.perf_counter() - t0)
    return np.asarray(probs, dtype=np.float32), best


def machine_info() -> dict:
    info = {"cpu": "", "logical_cores": os.cpu_count(), "bf16": False}
    try:
        import openvino as ov

        core = openvino_ir.core()
        info.update(cpu=str(core.get_property("CPU", "FULL_DEVICE_NAME")), bf16=openvino_ir.supports_bf16(),
                    openvino=ov.get_version().split("-")[0])
    except Exception as exc:  # OpenVINO missing or broken: the Keras figures still stand
        info["openvino"] = f"unavailable ({type(exc).__name__})"
    try:
        import keras
        import tensorflow as tf

        info.update(tensorflow=tf.__version__, keras=keras.__version__)
    except Exception:
        pass
    return info


def measure_backends(run_dir: str | Path, images: np.ndarray, labels: np.ndarray,
                     progress: Callable[[float, str], None] | None = None, repeats: int = 200,
                     batch_repeats: int = 5, keras_predict_calls: int = 30, include_bf16: bool = True) -> dict:
    """Latency, throughput, accuracy and agreement of every backend of a run (see the module doc).

    images: (N, 28, 28) uint8 test images; labels: (N,). repeats: single-image calls per method
    (Keras predict makes at most keras_predict_calls, at ~50 ms each). Backends that cannot be
    loaded (no export, tampered IR, no bf16 on this CPU) are listed in "skipped" with the reason.
    """
    say = progress or (lambda fraction, message: None)
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    images = np.asarray(images)
    labels = np.asarray(labels)
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(f"need as many labels as images, got {len(images)} images and {len(labels)} labels")
    x = images.astype(np.float32).reshape(-1, 28, 28, 1)
    machine = machine_info()
    names = ["openvino-fp32", "openvino-int8"] + (["openvino-bf16"] if include_bf16 and machine["bf16"] else [])
    say(0.0, "loading the Keras model")
    keras_backend = get_backend(run_dir, "keras", tta=False)  # the model itself, not flip-averaged
    model = keras_backend.model
    backends, skipped = {}, {}
    for name in names:
        say(0.02, f"loading {LABELS[name]}")
        try:
            backends[name] = get_backend(run_dir, name, tta=False)
        except BackendError as exc:
            skipped[name] = str(exc)
    n_calls = max(1, int(repeats))
    steps = 2 + len(backends)  # latency steps, then the same number of batch steps
    latency, batch = [], []

    def keras_predict(batch_x):
        return model.predict(batch_x, batch_size=KERAS_BATCH, verbose=0)

    def keras_call(batch_x):
        return np.asarray(model(batch_x, training=False))

    with keras_backend.lock:  # Keras is not thread-safe: keep app threads off it while measuring
        say(0.05, f"single-image latency: Keras predict ({min(n_calls, keras_predict_calls)} calls)")
        latency.append({"method": "keras-predict", "label": LABELS["keras-predict"],
                        **_latency(keras_predict, x, min(n_calls, keras_predict_calls), warmup=3)})
        say(0.05 + 0.45 / steps, f"single-image latency: Keras model(x) ({n_calls} calls)")
        latency.append({"method": "keras-call", "label": LABELS["keras-call"], **_latency(keras_call, x, n_calls)})
    for i, (name, backend) in enumerate(backends.items()):
        say(0.05 + 0.45 * (2 + i) / steps, f"single-image latency: {LABELS[name]} ({n_calls} calls)")
        latency.append({"method": name, "label": LABELS[name], **_latency(backend.predict_proba, x, n_calls)})

    say(0.5, f"batch: Keras predict on {len(x):,} images ({batch_repeats} timed runs)")
    with keras_backend.lock:
        ref, seconds = _throughput(keras_predict, x, batch_repeats)
    rows = [("keras", "fp32", ref, seconds)]
    for i, (name, backend) in enumerate(backends.items()):
        say(0.5 + 0.5 * (1 + i) / (1 + len(backends)), f"batch: {LABELS[name]} on {len(x):,} images")
        probs, seconds = _throughput(backend.predict_proba, x, batch_repeats)
        rows.append((name, backend.precision, probs, seconds))
    keras_ips = len(x) / rows[0][3]
    for name, precision, probs, seconds in rows:
        agree = probs.argmax(1) == ref.argmax(1)
        batch.append({
            "backend": name, "label": LABELS[name], "precision": precision,
            "images_per_s": len(x) / seconds, "seconds": seconds,
            "speedup_vs_keras": (len(x) / seconds) / keras_ips,
            "accuracy": float(np.mean(probs.argmax(1) == labels)),
            "top1_agreement": float(agree.mean()), "disagreements": int((~agree).sum()),
            "max_prob_diff": float(np.abs(probs - ref).max()),
        })
    say(1.0, "done")
    lat = {row["method"]: row for row in latency}
    bat = {row["backend"]: row for row in batch}
    ratios = {}
    if "openvino-fp32" in lat:
        ratios["fp32_latency_vs_keras_call"] = lat["keras-call"]["p50_ms"] / lat["openvino-fp32"]["p50_ms"]
        ratios["fp32_latency_vs_keras_predict"] = lat["keras-predict"]["p50_ms"] / lat["openvino-fp32"]["p50_ms"]
        ratios["fp32_throughput_vs_keras_predict"] = bat["openvino-fp32"]["speedup_vs_keras"]
        if "openvino-int8" in bat:
            ratios["int8_throughput_vs_fp32"] = (bat["openvino-int8"]["images_per_s"]
                                                 / bat["openvino-fp32"]["images_per_s"])
            ratios["int8_accuracy_minus_fp32_points"] = (bat["openvino-int8"]["accuracy"]
                                                         - bat["openvino-fp32"]["accuracy"]) * 100
    return {
        "run": str(run_dir), "images": int(len(x)), "machine": machine,
        "settings": {"latency_calls": n_calls, "keras_predict_calls": min(n_calls, keras_predict_calls),
                     "batch_repeats": int(batch_repeats), "keras_batch_size": KERAS_BATCH,
                     "openvino_chunk": next(iter(backends.values())).chunk if backends else None},
        "latency": latency, "batch": batch, "ratios": ratios, "skipped": skipped,
        "seconds": time.perf_counter() - t_start,
    }


def side_by_side(result: dict) -> list[dict]:
    """One row per backend for a table: test accuracy, agreement with Keras, largest probability
    difference, single-image latency p50/p95 (Keras: `model(x)`, its faster single-image path),
    batch throughput and speed-up over Keras `predict`."""
    latency = {row["method"]: row for row in result["latency"]}
    rows = []
    for row in result["batch"]:
        single = latency.get("keras-call" if row["backend"] == "keras" else row["backend"], {})
        rows.append({
            "backend": "Keras" if row["backend"] == "keras" else row["label"],
            "test accuracy": row["accuracy"], "agreement with Keras": row["top1_agreement"],
            "max prob. difference": row["max_prob_diff"],
            "latency p50 (ms)": single.get("p50_ms"), "latency p95 (ms)": single.get("p95_ms"),
            "throughput (img/s)": round(row["images_per_s"]), "speed-up vs Keras": row["speedup_vs_keras"],
        })
    return rows


def _measure_in_child(link: Link, run_dir: str, images: np.ndarray, labels: np.ndarray, options: dict) -> None:
    result = measure_backends(run_dir, images, labels, **options,
                              progress=lambda f, m: link.emit({"kind": "progress", "fraction": f, "message": m}))
    link.emit({"kind": "result", "result": result})


def measure_backends_isolated(run_dir: str | Path, images: np.ndarray, labels: np.ndarray,
                              progress: Callable[[float, str], None] | None = None, timeout_s: float = 1800.0,
                              **options) -> dict:
    """measure_backends in a child process, progress relayed to the caller: the web app's server never
    imports TensorFlow, and its threads do not share the measured process. RuntimeError on failure."""
    child = Child(_measure_in_child, (str(run_dir), np.asarray(images), np.asarray(labels), options),
                  name="fmnist-bench-infer")
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                event = child.next_event(timeout=max(0.0, deadline - time.monotonic()))
            except ChildEnded as exc:
                raise RuntimeError(f"the measuring process ended unexpectedly ({exc})") from None
            if event is None:
                raise RuntimeError(f"measuring took longer than {timeout_s:.0f} s")
            if event["kind"] == "progress":
                if progress is not None:
                    progress(event["fraction"], event["message"])
            elif event["kind"] == "result":
                return event["result"]
            else:  # "failed": the child's exception, one line
                raise RuntimeError((str(event.get("message") or "") or "measuring failed").splitlines()[0][:300])
    finally:
        child.close(grace_s=10)
