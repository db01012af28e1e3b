"""Training jobs for a server with many browser sessions: a queue, one training at a time.

Each job belongs to a session id, runs in its own child process (multiprocessing "spawn": the
memory TensorFlow takes is returned when the training ends, a job can be killed, and the web
server's process stays responsive) and reports its events over a queue. A scheduler thread
drains the events into the job and starts the next queued job when the current one ends.

A job is watched by every session attached to it: the one that started it, and any later one that
names it (a reload, a second tab, a reconnection after a dropped network). Only when none of them
has been alive for `orphan_grace_s` (default 10 minutes, FMNIST_ORPHAN_GRACE_S) is the job
orphaned: a queued one is cancelled, a running one stopped gracefully (its best weights are saved
as a `stopped` run, so nothing trained is lost).

Pages never hold the job's internals: they poll `job.snapshot()`, a plain copy that is safe to
read from any thread. Nothing here imports Streamlit; the app passes a session-liveness check.

    manager = get_manager()
    job = manager.submit(config, session_id="abc", runs_root="runs")
    job.snapshot()["status"]   # queued | starting | running | completed | stopped | failed | cancelled
    job.stop()                 # honoured within a batch; the best weights are kept and saved
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import queue as queue_mod
import shutil
import sys
import threading
import types
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

ACTIVE = ("queued", "starting", "running")
TERMINAL = ("completed", "stopped", "failed", "cancelled")
MAX_BATCH_POINTS = 1500  # per-batch points kept for live charts (older points are thinned)
ORPHAN_GRACE_S = 600.0  # a job nobody has watched for this long may be stopped (see the module doc)
STATUS_COMPILING = "compiling the model (the first batch takes a few seconds)"


def _child_main(config_dict: dict, runs_root: str | None, data_dir: str | None, run_name: str,
                events, stop_event, dataset, export: bool = True) -> None:
    """Entry point of the training child process: train and forward every event to the parent.

    The child runs at a lower CPU priority (FMNIST_TRAIN_NICE, default 5) so that sessions that
    classify meanwhile are answered first (on 2 cores, at nice 0 answers took 2.3-4 s instead of
    under 2 s); the price is some training speed while pages refresh (see docs/app.md)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        os.nice(int(os.environ.get("FMNIST_TRAIN_NICE", "5")))
    except (OSError, ValueError, AttributeError):
        pass
    try:
        from fmnist.training import TrainConfig, import_tensorflow_quietly, train

        config = TrainConfig.from_dict(config_dict)
        events.put({"kind": "status", "message": "loading TensorFlow"})
        # TensorFlow's C++ start-up notices (oneDNN, "failed call to cuInit") went to the server's
        # terminal on every training; they are noise there, so they are silenced at the import
        import_tensorflow_quietly()
        train(config, dataset, data_dir=data_dir, listeners=[events.put], stop_event=stop_event,
              runs_root=runs_root, run_name=run_name, export=export)
    except BaseException as exc:  # report anything, including an import failure, as a failed job
        events.put({"kind": "failed", "run_dir": None, "message": f"{type(exc).__name__}: {exc}"})
    finally:
        events.put({"kind": "_exit"})
        events.close()
        events.join_thread()


@dataclass
class Job:
    """One training request. Mutated only by the manager's scheduler thread, under `_lock`."""

    id: str
    session_id: str
    config: dict
    runs_root: str | None
    data_dir: str | None
    run_name: str
    dataset: Any = None  # optional in-memory dataset (tests); otherwise the child loads data_dir
    export: bool = True  # export the finished run to OpenVINO (FP32 and INT8)
    created: float = field(default_factory=time.time)
    status: str = "queued"
    message: str = ""
    status_message: str = ""
    run_dir: str | None = None
    test_accuracy: float | None = None
    start_info: dict = field(default_factory=dict)
    epochs: list = field(default_factory=list)
    batches: list = field(default_factory=list)
    last_batch: dict = field(default_factory=dict)
    started: float | None = None
    ended: float | None = None
    stop_requested: bool = False
    stop_requested_at: float | None = None
    sessions: set = field(default_factory=set)  # every session attached (starter, reloads, tabs)
    session_gone_since: float | None = None
    _stride: int = 1
    _seen_batches: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stop_event: Any = field(default=None, repr=False)
    _manager: Any = field(default=None, repr=False)

    # -- called by pages -------------------------------------------------------------------
    def stop(self) -> None:
        """Stop a running job at its next batch (best weights kept), or cancel a queued one."""
        if self._manager is not None:
            self._manager.stop(self.id)

    def snapshot(self) -> dict:
        """A plain, consistent copy of the job's state for rendering."""
        with self._lock:
            snap = {
                "id": self.id, "session_id": self.session_id, "config": dict(self.config),
                "status": self.status, "message": self.message, "status_message": self.status_message,
                "run_dir": self.run_dir, "test_accuracy": self.test_accuracy,
                "start": dict(self.start_info), "epochs": [dict(e) for e in self.epochs],
                "batches": list(self.batches), "last_batch": dict(self.last_batch),
                "created": self.created, "started": self.started, "ended": self.ended,
                "stop_requested": self.stop_requested, "stop_requested_at": self.stop_requested_at,
                "sessions": sorted(self.sessions),
            }
        snap["queue_position"] = self._manager.queue_position(self.id) if self._manager else 0
        snap["active"] = snap["status"] in ACTIVE
        return snap

    # -- called by the scheduler ------------------------------------------------------------
    def _apply(self, event: dict) -> None:
        kind = event.get("kind")
        with self._lock:
            if kind == "batch":
                self.status = "running"
                self.last_batch = event
                if self.status_message == STATUS_COMPILING:
                    self.status_message = "training"  # compiled: the first batch is done
                self._seen_batches += 1
                if (self._seen_batches - 1) % self._stride == 0:
                    self.batches.append((event["global_step"], event["batch_loss"], event["batch_accuracy"]))
                    if len(self.batches) > MAX_BATCH_POINTS:  # thin: keep every other point
                        self.batches = self.batches[::2]
                        self._stride *= 2
            elif kind == "start":
                self.status = "running"
                self.start_info = {k: v for k, v in event.items() if k != "kind"}
                self.status_message = STATUS_COMPILING
            elif kind == "epoch":
                self.epochs.append({k: v for k, v in event.items() if k != "kind"})
            elif kind == "status":
                self.status_message = str(event.get("message", ""))
            elif kind in ("finished", "stopped", "failed"):
                self.status = {"finished": "completed"}.get(kind, kind)
                self.message = str(event.get("message") or "")
                self.run_dir = event.get("run_dir")
                self.test_accuracy = event.get("test_accuracy")
                self.ended = time.time()


class JobManager:
    """A FIFO of training jobs with at most `max_running` trainings at once (default 1).

    use_process=False trains in a thread of this process instead of a child (quicker start, for
    tests); stop works the same way, but a thread cannot be killed.
    """

    def __init__(self, max_running: int = 1, use_process: bool = True, orphan_grace_s: float = ORPHAN_GRACE_S,
                 poll_s: float = 0.1, export: bool = True):
        self.max_running = max_running
        self.export = export
        self.use_process = use_process
        self.orphan_grace_s = orphan_grace_s
        self.poll_s = poll_s
        self._jobs: dict[str, Job] = {}
        self._order: list[str] = []
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._running: dict[str, dict] = {}  # job id -> {"proc"/"thread", "events"}
        self._session_alive: Callable[[str], bool] | None = None
        self._closed = False
        self._counter = itertools.count(1)
        self._thread = threading.Thread(target=self._loop, name="fmnist-jobs", daemon=True)
        self._thread.start()

    # -- public API ----------------------------------------------------------------------------
    def set_session_checker(self, alive: Callable[[str], bool] | None) -> None:
        """`alive(session_id) -> bool`; jobs none of whose sessions has been alive for
        orphan_grace_s are stopped."""
        self._session_alive = alive

    def submit(self, config, session_id: str, runs_root: str | os.PathLike | None = None,
               data_dir: str | os.PathLike | None = None, dataset=None, export: bool | None = None) -> Job:
        """Queue a training (a TrainConfig or its dict); validated here so bad input fails early.
        export=None uses the manager's default (FMNIST_JOBS_EXPORT=0 turns the OpenVINO export off)."""
        from fmnist.runs import new_run_name
        from fmnist.training import TrainConfig

        if not isinstance(config, TrainConfig):
            config = TrainConfig.from_dict(config)
        config = config.validate()
        job = Job(id=f"job{next(self._counter)}-{uuid.uuid4().hex[:8]}", session_id=session_id,
                  config=config.to_dict(), runs_root=str(runs_root) if runs_root else None,
                  data_dir=str(data_dir) if data_dir else None, run_name=new_run_name(config.params_key),
                  dataset=dataset, export=self.export if export is None else bool(export), sessions={session_id},
                  _manager=self)
        with self._lock:
            if self._closed:
                raise RuntimeError("the job manager is shut down")
            self._jobs[job.id] = job
            self._order.append(job.id)
        self._wake.set()
        return job

    def get(self, job_id: str | None) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id) if job_id else None

    def jobs_for(self, session_id: str) -> list[Job]:
        with self._lock:
            return [self._jobs[j] for j in self._order if session_id in self._jobs[j].sessions]

    def active_jobs(self) -> list[Job]:
        with self._lock:
            return [self._jobs[j] for j in self._order if self._jobs[j].status in ACTIVE]

    def attach(self, job_id: str, session_id: str) -> Job | None:
        """Add a session to the job's watchers (a reload, a second tab, a reconnection): the job
        is orphaned only when every watcher has gone. Any job, active or ended, can be found again."""
        job = self.get(job_id)
        if job is None:
            return None
        with job._lock:
            job.sessions.add(session_id)
            job.session_gone_since = None
        return job

    def adopt(self, job_id: str, session_id: str) -> Job | None:
        """Attach a session and make it the job's owner (the session a reload opened)."""
        job = self.attach(job_id, session_id)
        if job is not None:
            with job._lock:
                job.session_id = session_id
        return job

    def queue_position(self, job_id: str) -> int:
        """0 while running (or done); 1 for the next job to start, and so on."""
        with self._lock:
            waiting = [j for j in self._order if self._jobs[j].status == "queued"]
            return waiting.index(job_id) + 1 if job_id in waiting else 0

    def stop(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            with job._lock:
                if job.status == "queued":
                    job.status, job.message, job.ended = "cancelled", "cancelled before it started", time.time()
                    job.dataset = None
                    return
                if job.status not in ACTIVE:
                    return
                if not job.stop_requested:
                    job.stop_requested, job.stop_requested_at = True, time.time()
                if job._stop_event is not None:
                    job._stop_event.set()
        self._wake.set()

    def kill(self, job_id: str) -> None:
        """End a job's child process now (no saving) and remove its half-written run."""
        with self._lock:
            entry = self._running.get(job_id)
            job = self._jobs.get(job_id)
        if job is not None and job.status == "queued":
            self.stop(job_id)
            return
        if entry and entry.get("proc") is not None:
            entry["proc"].kill()
            entry["killed"] = True
        self._wake.set()

    def forget_finished(self, keep: int = 50) -> None:
        """Drop old finished jobs' logs so memory stays flat on a long-running server."""
        with self._lock:
            done = [j for j in self._order if self._jobs[j].status in TERMINAL]
            for job_id in done[:-keep] if keep else done:
                self._order.remove(job_id)
                self._jobs.pop(job_id, None)

    def wait(self, job_id: str, timeout: float | None = None) -> dict:
        """Block until the job ends (tests and scripts); returns its final snapshot."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.get(job_id)
        while job is not None and job.status not in TERMINAL:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout}s")
            time.sleep(0.05)
        return job.snapshot() if job else {}

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop everything (queued jobs cancelled, running ones stopped, then killed)."""
        with self._lock:
            self._closed = True
            ids = list(self._order)
        for job_id in ids:
            self.stop(job_id)
        deadline = time.monotonic() + timeout
        while self._running and time.monotonic() < deadline:
            time.sleep(0.05)
        for job_id in list(self._running):
            self.kill(job_id)
        self._wake.set()
        self._thread.join(timeout=5)

    # -- scheduler -------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            self._wake.wait(self.poll_s)
            self._wake.clear()
            try:
                self._drain()
                self._check_sessions()
                self._start_next()
            except Exception as exc:  # the scheduler must survive anything a job does
                print(f"fmnist.jobs scheduler error: {type(exc).__name__}: {exc}")
            if self._closed and not self._running:
                return

    def _start_next(self) -> None:
        with self._lock:
            if self._closed or len(self._running) >= self.max_running:
                return
            nxt = next((self._jobs[j] for j in self._order if self._jobs[j].status == "queued"), None)
            if nxt is None:
                return
            with nxt._lock:
                nxt.status, nxt.started = "starting", time.time()
                nxt.status_message = "starting a training process"
            if self.use_process:
                ctx = mp.get_context("spawn")
                events, stop_event = ctx.Queue(), ctx.Event()
                proc = ctx.Process(target=_child_main, name=f"fmnist-train-{nxt.id}", daemon=True,
                                   args=(nxt.config, nxt.runs_root, nxt.data_dir, nxt.run_name, events,
                                         stop_event, nxt.dataset, nxt.export))
                nxt._stop_event = stop_event
                if nxt.stop_requested:
                    stop_event.set()
                with _plain_main():
                    proc.start()
                self._running[nxt.id] = {"proc": proc, "events": events}
            else:
                events, stop_event = queue_mod.Queue(), threading.Event()
                nxt._stop_event = stop_event
                thread = threading.Thread(target=_thread_main, name=f"fmnist-train-{nxt.id}", daemon=True,
                                          args=(nxt, events, stop_event))
                thread.start()
                self._running[nxt.id] = {"thread": thread, "events": events}

    def _drain(self) -> None:
        with self._lock:
            running = list(self._running.items())
        for job_id, entry in running:
            job = self._jobs[job_id]
            exited = False
            for _ in range(2000):  # bounded per tick so other work still happens
                try:
                    event = entry["events"].get_nowait()
                except (queue_mod.Empty, EOFError, OSError):
                    break
                if event.get("kind") == "_exit":
                    exited = True
                    break
                job._apply(event)
            proc = entry.get("proc")
            alive = proc.is_alive() if proc is not None else entry["thread"].is_alive()
            if exited or not alive:
                if proc is not None:
                    if exited:
                        proc.join(timeout=10)
                    if proc.is_alive():
                        proc.kill()
                    proc.join(timeout=5)
                    code = proc.exitcode
                    entry["events"].close()
                else:
                    code = 0
                with job._lock:
                    if job.status in ACTIVE:  # ended without a final event: killed or crashed
                        job.status = "stopped" if entry.get("killed") else "failed"
                        job.message = ("training was ended without saving (its session closed)"
                                       if entry.get("killed") else
                                       f"the training process ended unexpectedly (exit code {code})")
                        job.ended = time.time()
                    job.dataset = None
                    job._stop_event = None
                if job.status != "completed" or entry.get("killed"):
                    _remove_staging(job)
                with self._lock:
                    self._running.pop(job_id, None)
                self._wake.set()

    def _check_sessions(self) -> None:
        alive = self._session_alive
        if alive is None:
            return
        now = time.time()
        for job in self.active_jobs():
            with job._lock:
                watchers = set(job.sessions) | {job.session_id}
            try:
                ok = any(alive(sid) for sid in watchers)
            except Exception:
                ok = True
            with job._lock:
                if ok:
                    job.session_gone_since = None
                    continue
                if job.session_gone_since is None:
                    job.session_gone_since = now
                gone_for = now - job.session_gone_since
            if gone_for >= self.orphan_grace_s:
                if job.status == "queued":
                    self.stop(job.id)
                elif not job.stop_requested:
                    self.stop(job.id)  # graceful first: best weights are saved as a stopped run
                elif gone_for >= self.orphan_grace_s + 120:
                    self.kill(job.id)


_MAIN_LOCK = threading.Lock()


@contextmanager
def _plain_main() -> Iterator[None]:
    """Start a spawned child with a bare `__main__`.

    "spawn" re-runs the parent's `__main__` file in the child. Inside `streamlit run` that is the
    app script itself (Streamlit installs each script run as `__main__`), so every training child
    ran streamlit_app.py without a server: the terminal filled with "to view a Streamlit app on a
    browser...", "Session state does not function..." and "missing ScriptRunContext" warnings, and
    the child paid for the app's imports. The child needs nothing from `__main__`.
    """
    with _MAIN_LOCK:
        saved = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if saved is not None:
                sys.modules["__main__"] = saved


def _thread_main(job: Job, events: queue_mod.Queue, stop_event: threading.Event) -> None:
    try:
        from fmnist.training import TrainConfig, train

        train(TrainConfig.from_dict(job.config), job.dataset, data_dir=job.data_dir, listeners=[events.put],
              stop_event=stop_event, runs_root=job.runs_root, run_name=job.run_name, export=job.export)
    except BaseException as exc:
        events.put({"kind": "failed", "run_dir": None, "message": f"{type(exc).__name__}: {exc}"})
    finally:
        events.put({"kind": "_exit"})


def _remove_staging(job: Job) -> None:
    """Delete the hidden staging folder a killed training may leave behind."""
    from fmnist.runs import STAGING_PREFIX, runs_root

    root = runs_root(job.runs_root)
    if root.is_dir():
        for path in root.glob(f"{STAGING_PREFIX}{job.run_name}-*"):
            shutil.rmtree(path, ignore_errors=True)


_MANAGER: JobManager | None = None
_MANAGER_LOCK = threading.Lock()


def get_manager() -> JobManager:
    """The process-wide manager (one queue per server). FMNIST_JOBS_INPROCESS=1 uses threads;
    FMNIST_ORPHAN_GRACE_S sets how long an unwatched job waits before it is stopped;
    FMNIST_JOBS_EXPORT=0 skips the OpenVINO export of finished runs (quicker tests)."""
    global _MANAGER
    with _MANAGER_LOCK:
        if _MANAGER is None:
            try:
                grace = float(os.environ.get("FMNIST_ORPHAN_GRACE_S", ORPHAN_GRACE_S))
            except ValueError:
                grace = ORPHAN_GRACE_S
            _MANAGER = JobManager(use_process=os.environ.get("FMNIST_JOBS_INPROCESS") != "1",
                                  export=os.environ.get("FMNIST_JOBS_EXPORT", "1") != "0", orphan_grace_s=grace)
        return _MANAGER
