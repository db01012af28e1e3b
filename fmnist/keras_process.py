"""The Keras backend in a child process, for long-running servers (the web app).

Why: once Keras is imported, Streamlit calls `keras.backend.clear_session()` after every script
run of every session (measured here: ~155 ms of CPU each with the shipped model loaded), and the
live Train page reruns every 2 s. So the app never imports TensorFlow itself: Keras predictions go
to one worker process that holds every Keras model the app has asked for.

    backend = KerasProcessBackend(run_dir)    # same interface as backends.KerasBackend
    backend.predict_proba(images)             # (N, 10), computed in the worker

The worker loads runs with `fmnist.keras_backend.KerasBackend` (manifest verified, model rebuilt from our
own code), answers one request at a time, reloads a run whose manifest changed, keeps at most
MAX_MODELS, and exits with its parent. Errors come back as one-line BackendError messages.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import threading
from pathlib import Path

import numpy as np

from fmnist.predictor import BackendError, as_batch
from fmnist.runs import MANIFEST, RunError, checked_run

MAX_MODELS = 4
START_TIMEOUT_S = 180.0  # importing TensorFlow on a busy 2-core machine


def _manifest_token(run_dir: Path) -> str:
    try:
        return hashlib.sha256((run_dir / MANIFEST).read_bytes()).hexdigest()
    except OSError:
        return "missing"


def _worker_main(conn) -> None:
    """Serve (run_dir, token, images) requests until None or the parent goes away."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from fmnist.keras_backend import KerasBackend

    models: dict[str, tuple[str, KerasBackend]] = {}
    conn.send("ready")
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        run_dir, token, images = request
        try:
            cached = models.get(run_dir)
            if cached is None or cached[0] != token:
                models.pop(run_dir, None)
                models[run_dir] = (token, KerasBackend(run_dir))
                while len(models) > MAX_MODELS:
                    models.pop(next(iter(models)))
            conn.send(models[run_dir][1].predict_proba(images))
        except (BackendError, RunError, ValueError, OSError) as exc:
            conn.send(f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
        except Exception as exc:  # the worker must survive anything one request does
            conn.send(f"Keras could not answer: {type(exc).__name__}: {exc}".splitlines()[0][:300])


class _Worker:
    """The one worker process of this process, started on first use, restarted if it died."""

    _lock = threading.Lock()
    _proc = None
    _conn = None

    @classmethod
    def request(cls, run_dir: Path, images: np.ndarray) -> np.ndarray:
        with cls._lock:  # one request at a time: Keras is not thread-safe, the pipe is not either
            if cls._proc is None or not cls._proc.is_alive():
                cls._start()
            try:
                cls._conn.send((str(run_dir), _manifest_token(run_dir), images))
                answer = cls._conn.recv()
            except (EOFError, OSError) as exc:  # a broken pipe is an OSError
                cls._proc = None
                raise BackendError(f"the Keras worker process stopped ({type(exc).__name__}); try again") from exc
        if isinstance(answer, str):
            raise BackendError(answer)
        return answer

    @classmethod
    def _start(cls) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, args=(child,), name="fmnist-keras", daemon=True)
        proc.start()
        child.close()
        if not parent.poll(START_TIMEOUT_S) or parent.recv() != "ready":
            proc.kill()
            raise BackendError("the Keras worker process did not start")
        cls._proc, cls._conn = proc, parent

    @classmethod
    def stop(cls) -> None:
        with cls._lock:
            if cls._proc is not None and cls._proc.is_alive():
                try:
                    cls._conn.send(None)
                except OSError:
                    pass
                cls._proc.join(timeout=10)
                if cls._proc.is_alive():
                    cls._proc.kill()
            cls._proc = cls._conn = None

    @classmethod
    def pid(cls) -> int | None:
        return cls._proc.pid if cls._proc is not None and cls._proc.is_alive() else None


class KerasProcessBackend:
    """keras_backend.KerasBackend's interface, answered by the worker process."""

    name = "keras"
    precision = "fp32"
    device = "CPU"
    tta_flip = False
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
        return _Worker.request(self.run_dir, x)

    def describe(self) -> dict:
        return {"name": self.name, "precision": self.precision, "device": self.device, "run": str(self.run_dir),
                "process": "worker", "worker_pid": _Worker.pid()}


stop_worker = _Worker.stop
