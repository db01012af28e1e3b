"""The Keras backend in a child process, for long-running servers (the web app).

Why: once Keras is imported, Streamlit calls `keras.backend.clear_session()` after every script
run of every session (measured here: ~155 ms of CPU each with the shipped model loaded), and the
live Train page reruns every 2 s. So the app never imports TensorFlow itself: Keras predictions go
to one worker process that holds every Keras model the app has asked for.

    backend = KerasProcessBackend(run_dir)    # same interface as backends.KerasBackend
    backend.predict_proba(images)             # (N, 10), computed in the worker
    backend.features(images)                  # {"penultimate", "logits", "first_stage"}
    backend.stage_activations(image)          # [{"name", "kind", "maps" (C, H, W)}] per stage
    backend.first_layer_filters()             # (filters, k, k)
    backend.grad_cam(images, targets=None)    # {"maps" (N, 28, 28), "targets" (N,)}

The explanation methods are keras_backend.KerasBackend's (fmnist.explain on the run's Keras model,
its sub-models built once), computed where TensorFlow already is. Only the methods named in
WORKER_METHODS are answered; anything else is refused with an error.

The worker loads runs with `fmnist.keras_backend.KerasBackend` (manifest verified, model rebuilt from our
own code), answers one request at a time, reloads a run whose manifest changed, keeps at most
MAX_MODELS, and exits with its parent. Errors come back as one-line BackendError messages.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from fmnist.child import Child, ChildEnded, Link
from fmnist.predictor import BackendError, as_batch
from fmnist.runs import RunError, checked_run, manifest_digest

MAX_MODELS = 4
START_TIMEOUT_S = 180.0  # importing TensorFlow on a busy 2-core machine
WORKER_METHODS = ("predict_proba", "features", "stage_activations", "first_layer_filters", "grad_cam")


def _answer(backend, method: str, args: tuple):
    """One whitelisted request on a loaded KerasBackend (its explanation methods use fmnist.explain
    with sub-models built once per model)."""
    if method not in WORKER_METHODS:
        raise ValueError(f"unknown request {method!r}")
    return getattr(backend, method)(*args)


def _worker_main(link: Link) -> None:
    """Serve (run_dir, token, method, args) requests until None or the parent goes away."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from fmnist.keras_backend import KerasBackend

    models: dict[str, tuple[str, KerasBackend]] = {}
    link.emit({"kind": "ready"})
    while (request := link.receive()) is not None:
        try:
            run_dir, token, method, args = request
            cached = models.get(run_dir)
            if cached is None or cached[0] != token:
                models.pop(run_dir, None)
                models[run_dir] = (token, KerasBackend(run_dir))
                while len(models) > MAX_MODELS:
                    models.pop(next(iter(models)))
            link.emit({"kind": "answer", "value": _answer(models[run_dir][1], method, tuple(args))})
        except (BackendError, RunError, ValueError, TypeError, OSError) as exc:
            link.emit({"kind": "error", "message": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]})
        except Exception as exc:  # the worker must survive anything one request does
            link.emit({"kind": "error",
                       "message": f"Keras could not answer: {type(exc).__name__}: {exc}".splitlines()[0][:300]})


class _Worker:
    """The one worker process of this process, started on first use, restarted if it died."""

    _lock = threading.Lock()
    _child: Child | None = None

    @classmethod
    def request(cls, run_dir: Path, method: str, *args):
        with cls._lock:  # one request at a time: Keras is not thread-safe, the pipe is not either
            if cls._child is None or not cls._child.is_alive():
                cls._start()
            try:
                cls._child.send((str(run_dir), manifest_digest(run_dir), method, args))
                answer = cls._child.next_event()
            except ChildEnded as exc:
                cls._child.close(grace_s=0)
                cls._child = None
                raise BackendError(f"the Keras worker process stopped ({exc}); try again") from exc
        if answer.get("kind") != "answer":
            raise BackendError(str(answer.get("message") or "the Keras worker could not answer"))
        return answer["value"]

    @classmethod
    def _start(cls) -> None:
        if cls._child is not None:
            cls._child.close(grace_s=0)
            cls._child = None
        child = Child(_worker_main, name="fmnist-keras")
        try:
            ready = child.next_event(START_TIMEOUT_S)
        except ChildEnded:
            ready = None
        if not ready or ready.get("kind") != "ready":
            child.close(grace_s=0)
            raise BackendError("the Keras worker process did not start")
        cls._child = child

    @classmethod
    def stop(cls) -> None:
        with cls._lock:
            if cls._child is not None:
                try:
                    cls._child.send(None)
                except ChildEnded:
                    pass
                cls._child.close(grace_s=10)
            cls._child = None

    @classmethod
    def pid(cls) -> int | None:
        return cls._child.pid if cls._child is not None else None


class KerasProcessBackend:
    """keras_backend.KerasBackend's interface, answered by the worker process."""

    name = "keras"
    precision = "fp32"
    device = "CPU"
    tta_flip = False
    tta_shift = 0
    source_files = ("model.keras",)

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        try:
            checked_run(self.run_dir)  # refuse a tampered run here, before any bytes travel
        except RunError as exc:
            raise BackendError(str(exc)) from exc

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        x = as_batch(images)
        if len(x) == 0:
            return np.zeros((0, 10), np.float32)
        return _Worker.request(self.run_dir, "predict_proba", x)

    # -- explanations, computed in the worker (fmnist.explain on the run's Keras model) --
    def features(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """"penultimate" (N, D), "logits" (N, 10), "first_stage" (N, C): trust.backend_features' keys."""
        return _Worker.request(self.run_dir, "features", as_batch(images))

    def stage_activations(self, image: np.ndarray) -> list[dict]:
        """Every convolutional stage's feature maps for one image: [{"name", "kind", "maps" (C, H, W)}]."""
        return _Worker.request(self.run_dir, "stage_activations", as_batch(image)[:1])

    def first_layer_filters(self) -> np.ndarray:
        """The first Conv2D's kernels, (filters, k, k)."""
        return _Worker.request(self.run_dir, "first_layer_filters")

    def grad_cam(self, images: np.ndarray, targets=None) -> dict[str, np.ndarray]:
        """Grad-CAM maps (N, 28, 28) and their targets (N,) (explain.grad_cam)."""
        x = as_batch(images)
        return _Worker.request(self.run_dir, "grad_cam", x, None if targets is None else np.asarray(targets))

    def describe(self) -> dict:
        return {"name": self.name, "precision": self.precision, "device": self.device, "run": str(self.run_dir),
                "process": "worker", "worker_pid": _Worker.pid()}


stop_worker = _Worker.stop
