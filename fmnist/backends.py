"""Predictors behind one interface: predict_proba(images) -> (N, 10) probabilities.

Images are raw pixels, shape (N, 28, 28) or (N, 28, 28, 1), uint8 or float in 0..255.

Backends (all expose `name`, `precision`, `device`, `run_dir`, `predict_proba`, `describe()`, `tta_flip`):
    keras          the run's Keras model (rebuilt from our code, weights only)
    openvino-fp32  the FP32 IR, compiled with INFERENCE_PRECISION_HINT=f32 (true f32: without it
                   OpenVINO runs bf16 on CPUs with AMX/AVX512-BF16 and the answers change)
    openvino-int8  the NNCF INT8 IR (remaining float ops in f32)
    openvino-bf16  optional, not in BACKENDS: the FP32 IR run in bf16, only where the CPU has BF16

OpenVINO details: one `ov.Core` per process; every IR byte is read once, checked against the run's
manifest and openvino/export.json (sha256), and only then handed to OpenVINO from memory, so the
file checked is the file loaded. The model has a dynamic batch dimension. Each backend keeps two
compiled models, built on first use: LATENCY hint for 1..SMALL_BATCH images (synchronous calls on
a pool of infer requests, one per concurrent caller; for small models one thread per request and
one stream per core) and THROUGHPUT hint for larger batches
(`AsyncInferQueue` over chunks of `chunk` images, one batch job at a time). Safe to call from
several threads.

Explanations without TensorFlow: an OpenVINO backend also answers `features(images)` (penultimate
features, logits, first stage: what the unfamiliar score and the nearest training items need),
`stage_activations(image)` and `first_layer_filters()`, like the Keras backends, from one inspection
model (explain.OpenVINOInspector) compiled on first use and kept with the backend, so one image's
features take milliseconds instead of a compile (0.2-2 s) per call.

`get_backend(run_dir, name)` returns a cached backend from `REGISTRY` (an explicit `BackendRegistry`
keyed by run path, backend name and the run's manifest hash), so the app can call it freely.

`remote` (not in BACKENDS; offered only when a model server is configured, $FMNIST_SERVING_URL):
the run's FP32 IR answered by a KServe v2 model server (fmnist.remote), checked on creation
against this run's local FP32 backend, which also answers its explanations.
"""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path

import numpy as np

from fmnist import openvino_ir
from fmnist.keras_backend import KerasBackend
from fmnist.openvino_ir import IR_FILES, OV_DIR, read_export_info
# BackendError and as_batch are fmnist.predictor's; callers also import them from here.
from fmnist.predictor import BackendError, Predictor, as_batch, average_views, test_views  # noqa: F401
from fmnist.remote import NAME as REMOTE
from fmnist.remote import RemoteBackend, check_url, serving_url
from fmnist.runs import (BUNDLE_MANIFEST, RunError, checked_run, entry_mismatch, file_entry, manifest_digest,
                         manifest_files, read_json)

BACKENDS = ("keras", "openvino-fp32", "openvino-int8")
OPTIONAL_BACKENDS = ("openvino-bf16",)  # where the CPU supports bf16; not offered by default
# REMOTE ("remote"): a model server's answers; offered only when $FMNIST_SERVING_URL names one
SMALL_BATCH = 16  # up to this many images: the latency path; more: the throughput path
CHUNK = 64  # images per asynchronous request on the throughput path (measured best on 2 cores)
try:
    _CORES = len(os.sched_getaffinity(0))
except (AttributeError, OSError):
    _CORES = os.cpu_count() or 1
_LATENCY_STREAMS = max(1, min(_CORES, 8))  # latency path: one single-threaded stream per core...
SMALL_MODEL_MACS = 12_000_000  # ...for models below this many multiply-adds per image (measured)


def _read_checked(run_dir: Path, rel: str, bundle_files: dict, export_files: dict) -> bytes:
    """The bytes of one IR file, after checking them against the bundle manifest and export.json.

    The bytes checked are the bytes handed to OpenVINO (no second read of the file).
    """
    inner = rel.split("/", 1)[1]
    entry, recorded = bundle_files.get(inner), export_files.get(rel)
    if not entry or not recorded:
        raise BackendError(f"{rel} is not listed in the OpenVINO export's manifest: export again with "
                           f"`python -m fmnist export {run_dir} --force`")
    try:
        data = (run_dir / rel).read_bytes()
    except OSError as exc:
        raise BackendError(f"cannot read {run_dir / rel}: {exc.strerror or exc}") from exc
    actual = file_entry(data)
    if entry_mismatch(entry, actual) == "size":
        raise BackendError(f"refusing to load {run_dir}: {rel} has changed size since it was exported "
                           f"(truncated or edited); export again with `python -m fmnist export {run_dir} --force`")
    if entry_mismatch(entry, actual) or actual["sha256"] != recorded.get("sha256"):
        raise BackendError(f"refusing to load {run_dir}: {rel} does not match its recorded sha256 "
                           f"(modified after export); export again with `python -m fmnist export {run_dir} --force`")
    return data


def read_verified_ir(run_dir: Path, ir: str) -> tuple[bytes, bytes]:
    """(xml, bin) bytes of a run's "fp32" or "int8" IR after every check: the run itself (config,
    weights, status), an export for this IR made from the run's current model.keras, and both files'
    bytes against the bundle manifest and export.json. BackendError saying why and how to fix it."""
    try:
        checked_run(run_dir)
    except RunError as exc:
        raise BackendError(str(exc)) from exc
    info = read_export_info(run_dir)
    if not info or (ir == "int8" and not info.get("int8")):
        flag = " --int8" if ir == "int8" else ""
        raise BackendError(f"run {run_dir} has no OpenVINO {ir.upper()} export yet: run "
                           f"`python -m fmnist export {run_dir}{flag}`")
    try:
        run_files = manifest_files(run_dir)
        bundle_files = manifest_files(run_dir / OV_DIR, BUNDLE_MANIFEST)
    except (OSError, ValueError) as exc:
        raise BackendError(f"the OpenVINO export of {run_dir} has no valid {BUNDLE_MANIFEST}: run "
                           f"`python -m fmnist export {run_dir} --force`") from exc
    if info.get("source_sha256") != (run_files.get("model.keras") or {}).get("sha256"):
        raise BackendError(f"the OpenVINO export of {run_dir} is older than its model.keras: run "
                           f"`python -m fmnist export {run_dir} --force`")
    recorded = info.get("files") or {}
    xml_rel, bin_rel = IR_FILES[ir]
    return (_read_checked(run_dir, xml_rel, bundle_files, recorded),
            _read_checked(run_dir, bin_rel, bundle_files, recorded))


class OpenVINOBackend:
    """An exported IR of a run on the CPU: `precision` fp32, int8 or bf16 (FP32 IR run in bf16).

    Creating one verifies the IR (read_verified_ir) and reads it into an ov.Model; compiling happens
    on first use, once per performance hint."""

    device = "CPU"
    tta_flip = False
    tta_shift = 0
    _IR = {"fp32": "fp32", "int8": "int8", "bf16": "fp32"}

    def __init__(self, run_dir: str | Path, precision: str = "fp32", chunk: int = CHUNK):
        if precision not in self._IR:
            raise BackendError(f"unknown OpenVINO precision {precision!r}; choose fp32, int8 or bf16")
        self.run_dir = Path(run_dir)
        self.precision = precision
        self.name = f"openvino-{precision}"
        self.chunk = int(chunk)
        if precision == "bf16" and not openvino_ir.supports_bf16():
            raise BackendError("this CPU has no bf16 support: use openvino-fp32 or openvino-int8")
        self.source_files = IR_FILES[self._IR[precision]]
        xml, weights = read_verified_ir(self.run_dir, self._IR[precision])
        self.model = self._read_model(xml, weights)
        self.macs = model_macs(self.model)
        self._compile_lock = threading.Lock()
        self._batch_lock = threading.Lock()
        self._latency = None
        self._throughput = None
        self._queue = None
        self._inspector = None
        self._requests: queue.SimpleQueue = queue.SimpleQueue()

    def _read_model(self, xml: bytes, weights: bytes):
        """The ov.Model from verified bytes, refused unless it maps (N, 28, 28, 1) pixels to (N, 10)."""
        xml_rel = self.source_files[0]
        try:
            model = openvino_ir.core().read_model(model=xml, weights=weights)
        except Exception as exc:  # OpenVINO raises RuntimeError with a multi-line message
            raise BackendError(f"OpenVINO cannot read {self.run_dir / xml_rel}: {_first_line(exc)}") from exc
        shapes = ([str(i.get_partial_shape()) for i in model.inputs],
                  [str(o.get_partial_shape()) for o in model.outputs])
        if shapes != (["[?,28,28,1]"], ["[?,10]"]):
            raise BackendError(f"{self.run_dir / xml_rel} has inputs {shapes[0]} and outputs {shapes[1]}; "
                               "expected [?,28,28,1] -> [?,10]")
        return model

    # -- compiled models (built on first use) --
    def _config(self, hint: str) -> dict:
        config = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32"}
        if hint == "LATENCY" and self.macs < SMALL_MODEL_MACS:
            # Measured on 2 cores with the report's model (~4 M multiply-adds per image): splitting
            # one image over several threads costs more in synchronisation than it saves (p50 0.26 ->
            # 0.20 ms with one thread). So: one thread per request, one stream per core, and
            # concurrent callers run in parallel instead of queueing behind a single stream (p95
            # under load 4 ms -> 0.3 ms). Bigger models (the shipped one has ~10x the work) are
            # faster with all cores on one image (0.59 -> 0.49 ms), the LATENCY hint's default.
            config.update(NUM_STREAMS=_LATENCY_STREAMS, INFERENCE_NUM_THREADS=_LATENCY_STREAMS)
        return config

    def _compile(self, hint: str):
        try:
            return openvino_ir.core().compile_model(self.model, "CPU", self._config(hint))
        except Exception as exc:
            raise BackendError(f"OpenVINO cannot compile {self.name} for {self.run_dir}: {_first_line(exc)}") from exc

    def latency_model(self):
        with self._compile_lock:
            if self._latency is None:
                self._latency = self._compile("LATENCY")
            return self._latency

    def throughput_model(self):
        with self._compile_lock:
            if self._throughput is None:
                import openvino as ov

                self._throughput = self._compile("THROUGHPUT")
                self._queue = ov.AsyncInferQueue(self._throughput)
                self._queue.set_callback(self._collect)
            return self._throughput

    @staticmethod
    def _collect(request, userdata) -> None:
        out, start = userdata
        result = request.get_output_tensor(0).data
        out[start:start + len(result)] = result

    # -- inference --
    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(as_batch(images))
        if len(x) == 0:
            return np.zeros((0, 10), np.float32)
        if len(x) <= SMALL_BATCH:
            return self.predict_small(x)
        return self.predict_batch(x)

    def predict_small(self, x: np.ndarray) -> np.ndarray:
        """Synchronous call tuned for latency; each concurrent caller gets its own infer request."""
        compiled = self.latency_model()
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = compiled.create_infer_request()
        try:
            import openvino as ov

            request.set_input_tensor(ov.Tensor(x, shared_memory=True))  # no copy, no dict conversion
            request.infer()
            return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
        finally:
            self._requests.put(request)

    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        """Asynchronous chunks across all infer requests, tuned for throughput."""
        self.throughput_model()
        out = np.empty((len(x), 10), np.float32)
        with self._batch_lock:
            for start in range(0, len(x), self.chunk):
                self._queue.start_async({0: x[start:start + self.chunk]}, (out, start))
            self._queue.wait_all()
        return out

    # -- explanations (features, feature maps, filters): one inspection model, compiled on first use --
    def inspector(self):
        """The compiled explain.OpenVINOInspector of this IR (same precision hints as the answers)."""
        from fmnist.explain import OpenVINOInspector

        with self._compile_lock:
            if self._inspector is None:
                try:
                    self._inspector = OpenVINOInspector(self.model, self._config("LATENCY"))
                except ValueError as exc:
                    raise BackendError(f"{self.name} of {self.run_dir} cannot explain itself: {exc}") from exc
                except Exception as exc:
                    raise BackendError(f"OpenVINO cannot compile the inspection model of {self.run_dir}: "
                                       f"{_first_line(exc)}") from exc
            return self._inspector

    def features(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """"penultimate" (N, D), "logits" (N, 10), "first_stage" (N, C) through this IR."""
        return self.inspector().features(images)

    def stage_activations(self, image: np.ndarray) -> list[dict]:
        """Every stage's feature maps for one image, named like the Keras layers (explain.stage_specs)."""
        from fmnist.explain import openvino_stage_activations

        return openvino_stage_activations(self.inspector(), image, self.stage_names())

    def stage_names(self) -> list[tuple[str, str]] | None:
        """(Keras layer name, kind) of each stage from the run's config.json; None when unreadable."""
        from fmnist.config import TrainConfig
        from fmnist.explain import stage_specs

        try:
            config = TrainConfig.from_dict(read_json(self.run_dir / "config.json"))
            return stage_specs(config.arch, config.widths, config.dropout)
        except (OSError, ValueError, TypeError):
            return None

    def first_layer_filters(self) -> np.ndarray:
        """The first convolution's kernels (filters, k, k) as this IR holds them (BatchNorm folded in)."""
        from fmnist.explain import openvino_first_layer_filters

        try:
            return openvino_first_layer_filters(self.model)
        except ValueError as exc:
            raise BackendError(str(exc)) from exc

    def describe(self) -> dict:
        info = {"name": self.name, "precision": self.precision, "device": self.device, "run": str(self.run_dir),
                "ir": "/".join(self.source_files[0].split("/")[:-1]), "chunk": self.chunk, "macs": self.macs}
        for label, compiled in (("latency", self._latency), ("throughput", self._throughput)):
            if compiled is not None:
                info[label] = {k: _plain(compiled.get_property(k)) for k in
                               ("PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT", "NUM_STREAMS",
                                "INFERENCE_NUM_THREADS", "OPTIMAL_NUMBER_OF_INFER_REQUESTS")}
        return info


def model_macs(model) -> int:
    """Multiply-adds per image of an ov.Model's convolutions and matrix products (an estimate)."""
    total = 0
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("Convolution", "GroupConvolution", "MatMul"):
            continue
        try:
            weights = [d.get_length() for d in op.input(1).get_partial_shape()]
            out = op.output(0).get_partial_shape()
            spatial = int(np.prod([d.get_length() for d in list(out)[2:]])) if kind != "MatMul" else 1
        except (RuntimeError, ValueError):  # a dynamic dimension other than the batch
            continue
        total += int(np.prod(weights)) * spatial
    return total


def _plain(value):
    """An OpenVINO property value as a JSON-ready value (ov.Type -> 'f32', enums -> names)."""
    if isinstance(value, (int, float, str, bool)):
        return value
    if hasattr(value, "to_string"):
        return value.to_string()
    return str(getattr(value, "name", value))


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # OpenVINO messages start with "Exception from src/...": the check that failed is more useful
    useful = [line for line in lines if not line.startswith("Exception from")]
    return (useful or lines or [type(exc).__name__])[0][:300]


# ---------------------------------------------------------------------------------------------
# registry


def _create(run_dir: Path, name: str):
    if name.startswith(REMOTE + "@"):  # "remote@URL": one entry per server
        try:
            local = REGISTRY.get(run_dir, "openvino-fp32")
        except BackendError as exc:
            raise BackendError(f"the remote backend checks the server's answers and explains them with the "
                               f"run's local OpenVINO FP32 model: {exc}") from None
        return RemoteBackend(run_dir, name.split("@", 1)[1], local=local)
    if name == "keras-process":
        from fmnist.keras_process import KerasProcessBackend

        return KerasProcessBackend(run_dir)
    if name == "keras":
        try:
            return KerasBackend(run_dir)
        except RunError as exc:
            raise BackendError(str(exc)) from exc
    return OpenVINOBackend(run_dir, name.split("-", 1)[1])


class BackendRegistry:
    """Loaded backends (with their compiled models), keyed by (run path, backend name).

    An entry is reused while the run's manifest.json is byte-identical and the files the backend
    loaded have the same size and modification time as when they were verified; otherwise the
    backend is loaded (and verified) again. At most `max_entries` backends are kept (LRU).
    """

    def __init__(self, max_entries: int = 12):
        self.max_entries = max_entries
        self._entries: dict[tuple[str, str], tuple[tuple, object]] = {}
        self._lock = threading.Lock()
        self._key_locks: dict[tuple[str, str], threading.Lock] = {}

    @staticmethod
    def _fingerprint(run_dir: Path, files) -> tuple:
        try:
            parts = [manifest_digest(run_dir)]
            for rel in files:
                st = os.stat(run_dir / rel)
                parts.append((rel, st.st_size, st.st_mtime_ns))
        except OSError:
            return ("missing",)
        return tuple(parts)

    def get(self, run_dir: str | Path, name: str):
        run_dir = Path(run_dir)
        key = (str(run_dir.resolve()), name)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # one load per key at a time; other keys proceed
            with self._lock:
                cached = self._entries.get(key)
            if cached is not None:
                fingerprint, backend = cached
                if self._fingerprint(run_dir, backend.source_files) == fingerprint:
                    with self._lock:  # refresh LRU order
                        self._entries.pop(key, None)
                        self._entries[key] = cached
                    return backend
            before = self._fingerprint(run_dir, ())
            backend = _create(run_dir, name)
            fingerprint = self._fingerprint(run_dir, backend.source_files)
            if fingerprint[:1] == before[:1]:  # don't cache when the manifest changed while loading
                with self._lock:
                    self._entries.pop(key, None)
                    self._entries[key] = (fingerprint, backend)
                    while len(self._entries) > self.max_entries:
                        self._entries.pop(next(iter(self._entries)))
            return backend

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


REGISTRY = BackendRegistry()


class ViewAveraged:
    """A backend whose answers average each image with its test-time views (`predictor.test_views`:
    the mirror image for runs trained with `tta_flip`, one-pixel shifts for `tta_shift`), in one call
    of the views' batch: how the run was evaluated, so its predictions match its reported test
    accuracy (and move less when an input shifts by a fraction of a pixel: docs/photos.md)."""

    def __init__(self, backend, flip: bool = True, shift: int = 0):
        self.backend = backend
        self.tta_flip = bool(flip)
        self.tta_shift = int(shift)

    def __getattr__(self, attr):  # name, precision, device, run_dir, model, source_files...
        return getattr(self.backend, attr)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        views, count = test_views(images, self.tta_flip, self.tta_shift)
        return average_views(self.backend.predict_proba(views), count)

    def describe(self) -> dict:
        return {**self.backend.describe(), "tta_flip": self.tta_flip, "tta_shift": self.tta_shift}


def run_views(run_dir: str | Path) -> tuple[bool, int]:
    """(flip, shift): the test-time views the run's config asks for ((False, 0): none)."""
    try:
        config = read_json(Path(run_dir) / "config.json")
    except (OSError, ValueError):
        return False, 0
    if not isinstance(config, dict):
        return False, 0
    shift = config.get("tta_shift") or 0
    return bool(config.get("tta_flip")), int(shift) if isinstance(shift, int) and 0 < shift <= 3 else 0


def run_uses_tta(run_dir: str | Path) -> bool:
    """Whether the run's config asks for test-time views (flip averaging, shifted views)."""
    return any(run_views(run_dir))


def get_backend(run_dir: str | Path, name: str = "keras", cache: bool = True, tta: bool | None = None,
                isolated: bool = False, url: str | None = None) -> Predictor:
    """A predictor for a run by backend name (BACKENDS, openvino-bf16 where the CPU supports it, or
    "remote" when a model server is configured).

    tta: average over test-time views (None: those the run's config asks for, mirror image and/or
    shifted views; True on a run without any: the mirror image; benchmarks pass False to time the
    model itself). isolated: Keras runs in a worker process (fmnist.keras_process), so this
    process never imports TensorFlow (the web app). url: the model server of "remote" (default:
    $FMNIST_SERVING_URL). Raises BackendError with a one-line reason (unknown name, no export,
    tampered or truncated file, no model server configured, server down or serving another model).
    """
    if name == REMOTE:
        url = url or serving_url()
        if not url:
            raise BackendError("the remote backend needs a model server: set FMNIST_SERVING_URL (e.g. "
                               "http://127.0.0.1:8080) or pass --serving-url; start one with `python -m fmnist serve`")
        key = f"{REMOTE}@{check_url(url)}"
    elif name not in BACKENDS + OPTIONAL_BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    else:
        key = "keras-process" if isolated and name == "keras" else name
    backend = REGISTRY.get(run_dir, key) if cache else _create(Path(run_dir), key)
    if tta is False:
        return backend
    flip, shift = run_views(run_dir)
    if tta and not (flip or shift):
        flip = True  # asked for explicitly on a run that has none configured: the mirror image
    return ViewAveraged(backend, flip, shift) if (flip or shift) else backend


def backend_status(run_dir: str | Path) -> dict[str, str]:
    """{backend name: "" if it can be loaded, else why not} without loading anything (cheap).

    Checks only what the export recorded; get_backend still verifies every byte before loading.
    """
    run_dir = Path(run_dir)
    info = read_export_info(run_dir)
    status = {"keras": ""}
    hint = f"not exported: run `python -m fmnist export {run_dir}`"
    status["openvino-fp32"] = "" if info else hint
    status["openvino-int8"] = "" if info and info.get("int8") else hint
    if openvino_ir.supports_bf16():
        status["openvino-bf16"] = status["openvino-fp32"]
    if serving_url():  # whether the server is up is known only by asking it (get_backend does)
        status[REMOTE] = status["openvino-fp32"]
    return status
