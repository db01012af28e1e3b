"""Training jobs for a server with many browser sessions: a queue, one training at a time.

Each job belongs to a session id, runs in its own child process (`fmnist.child`, "spawn": the
memory TensorFlow takes is returned when the training ends, a job can be killed, and the web
server's process stays responsive) and reports its events over the child's pipe. A scheduler
thread relays the events into the job, reaps ended children, starts the next queued job when the
current one ends, and forgets all but the `keep_finished` (50) most recent finished jobs, so the
server's memory stays flat however long it runs.

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

A sweep (`submit_sweep`: Optuna trials of the project's training, `fmnist.sweep.run_sweep`) is a
job of kind "sweep" in the same queue: it waits its turn, is watched, stopped and orphaned the same
way, and its snapshot carries the sweep's own state under "sweep" (study, trials finished so far,
the trial in flight, the best value); `sweep_progress(snapshot)` gives its progress and ETA.

A run trained before the trust bundle or the feature map existed gets them on first use
(`submit_artifacts(run_dir, session_id)`: a job of kind "artifacts" in the same queue, running
`compute_artifacts` in a child). One such job per run at a time: a second request (another click,
another tab) joins the active one; `artifacts_job(run_dir)` finds it again after a reload.
"""

from __future__ import annotations

import copy
import itertools
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fmnist.child import Child, Link

ACTIVE = ("queued", "starting", "running")
TERMINAL = ("completed", "stopped", "failed", "cancelled")
MAX_BATCH_POINTS = 1500  # per-batch points kept for live charts (older points are thinned)
ORPHAN_GRACE_S = 600.0  # a job nobody has watched for this long may be stopped (see the module doc)
STATUS_COMPILING = "compiling the model (the first batch takes a few seconds)"
KEEP_FINISHED = 50  # finished jobs kept for pages to find again; older ones are forgotten
SWEEP_TRIALS = (1, 50)  # trials one app sweep may ask for (a sweep job holds the queue until it ends)
SWEEP_EVENTS = ("sweep_started", "trial_started", "trial_epoch", "trial_finished", "sweep_finished", "status")
WHAT = {"train": "training", "sweep": "sweep", "artifacts": "computation"}  # a job's kind in messages


def _child_setup(link: Link, own_process: bool) -> None:
    """Prepare a training child: a lower CPU priority and TensorFlow imported quietly.

    A child process runs at a lower CPU priority (FMNIST_TRAIN_NICE, default 5) so that sessions that
    classify meanwhile are answered first (on 2 cores, at nice 0 answers took 2.3-4 s instead of
    under 2 s); the price is some training speed while pages refresh (see docs/app.md)."""
    if not own_process:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        os.nice(int(os.environ.get("FMNIST_TRAIN_NICE", "5")))
    except (OSError, ValueError, AttributeError):
        pass
    from fmnist.training import import_tensorflow_quietly

    link.emit({"kind": "status", "message": "loading TensorFlow"})
    # TensorFlow's C++ start-up notices (oneDNN, "failed call to cuInit") went to the server's
    # terminal on every training; they are noise there, so they are silenced at the import
    import_tensorflow_quietly()


def _train_main(link: Link, config_dict: dict, runs_root: str | None, data_dir: str | None, run_name: str,
                dataset, export: bool = True, own_process: bool = True) -> None:
    """What a training child runs (fmnist.child relays its events; an exception becomes a `failed` event)."""
    from fmnist.config import TrainConfig

    config = TrainConfig.from_dict(config_dict)
    _child_setup(link, own_process)
    from fmnist.training import train

    train(config, dataset, data_dir=data_dir, listeners=[link.emit], stop_event=link.stop, runs_root=runs_root,
          run_name=run_name, export=export)


def _sweep_main(link: Link, params: dict, runs_root: str | None, data_dir: str | None, dataset,
                own_process: bool = True) -> None:
    """What a sweep child runs: `fmnist.sweep.run_sweep` with its events relayed.

    The trials' own training events are passed on only as "trial_batch" (progress within a trial):
    a trial's "finished" or "failed" is not the sweep's, which ends with "sweep_finished" (or the
    child's own "failed" when run_sweep raises)."""
    _child_setup(link, own_process)
    from fmnist.sweep import run_sweep

    def relay(event: dict) -> None:
        kind = event.get("kind")
        if kind in SWEEP_EVENTS:
            link.emit(event)
        elif kind == "batch":
            link.emit({"kind": "trial_batch", **{k: event.get(k) for k in (
                "epoch", "step", "global_step", "total_steps", "eta_s", "images_per_s")}})

    run_sweep(params["trials"], study=params.get("study"), storage=params.get("storage"),
              preset=params.get("preset"), epochs=params.get("epochs"), limit=params.get("limit"),
              runs_root=runs_root, data_dir=data_dir, dataset=dataset, listeners=[relay], stop_event=link.stop)


class ArtifactsError(Exception):
    """A run's trust bundle or map cannot be computed here (one-line message)."""


def missing_artifacts(run_dir: str | os.PathLike) -> list[str]:
    """The bundles first use computes that the run lacks: "trust" and/or "map" (a present but
    refused bundle is not missing: it is shown as refused, never silently replaced)."""
    from fmnist import featuremap, trust

    return [name for name, present in (("trust", trust.has_trust(run_dir)), ("map", featuremap.has_map(run_dir)))
            if not present]


def artifacts_problem(run_dir: str | os.PathLike, dataset) -> str | None:
    """Why `dataset` cannot give a run its trust bundle and map (one line), or None: the run's stored
    test answers must cover the same test set (a run trained on other data would get a wrong split)."""
    from fmnist.runs import load_test_probs

    try:
        rows = len(load_test_probs(run_dir))
    except (OSError, ValueError) as exc:
        return f"{run_dir} has no readable test answers ({exc})".splitlines()[0]
    if rows != len(dataset.y_test):
        return (f"{run_dir} was evaluated on a test set of {rows:,} images, the data here has "
                f"{len(dataset.y_test):,}: not the data set it was trained on")
    return None


def compute_artifacts(run_dir: str | os.PathLike, dataset, progress: Callable[[str], None] = lambda text: None,
                      with_map: bool = True, stop=None) -> dict:
    """Compute and store what a run lacks (first use of a run trained before them): its trust bundle
    (`trust.store`, no detector: no development photos needed, fast) and, with `with_map`, its feature
    map (`featuremap.store`); each added through `runs.add_files` (staged, swapped in by one rename).
    Returns {"trust": trust.json, "map": map.json} for what was computed. ArtifactsError (one line)
    when `dataset` is not the data set the run was evaluated on, or the run cannot take them.
    `stop`: an Event checked between the steps."""
    from fmnist import featuremap, trust
    from fmnist.runs import RunError

    problem = artifacts_problem(run_dir, dataset)
    if problem:
        raise ArtifactsError(problem)
    steps = [name for name in missing_artifacts(run_dir) if with_map or name == "trust"]
    done = {}
    try:
        for number, name in enumerate(steps, 1):
            if stop is not None and stop.is_set():
                break
            what = "calibration and unfamiliar-input thresholds" if name == "trust" else "feature map"

            def step(text: str, number=number, what=what) -> None:
                progress(f"step {number} of {len(steps)}, {what}: {text}")

            step("starting")
            done[name] = trust.store(run_dir, dataset, progress=step) if name == "trust" else \
                featuremap.store(run_dir, dataset, progress=step)
    except (trust.TrustError, featuremap.MapError, RunError, OSError) as exc:
        raise ArtifactsError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
    return done


def _run_key(run_dir: str | os.PathLike) -> str:
    """One name per run folder, however a page spells its path (first-use jobs are one per run)."""
    return str(Path(run_dir).resolve())


def _artifacts_main(link: Link, run_dir: str, data_dir: str | None, dataset, own_process: bool = True) -> None:
    """What a first-use child runs: `compute_artifacts` with its progress relayed as status events;
    a failure the user can act on becomes one plain `failed` line."""
    from fmnist.data import DataError, load_fashion_mnist

    _child_setup(link, own_process)
    try:
        if dataset is None:
            link.emit({"kind": "status", "message": "loading Fashion-MNIST"})
            dataset = load_fashion_mnist(data_dir, download=False)
        done = compute_artifacts(run_dir, dataset, lambda text: link.emit({"kind": "status", "message": text}),
                                 stop=link.stop)
    except (DataError, ArtifactsError) as exc:
        link.emit({"kind": "failed", "run_dir": run_dir, "message": str(exc)})
        return
    if link.stop.is_set() and set(missing_artifacts(run_dir)):
        link.emit({"kind": "stopped", "run_dir": run_dir, "message": "stopped before it finished"})
        return
    made = " and ".join({"trust": "calibration", "map": "feature map"}[k] for k in done) or "nothing (already there)"
    link.emit({"kind": "finished", "run_dir": run_dir, "message": f"computed {made}"})


def sweep_progress(snap: dict, now: float | None = None) -> dict:
    """Trials done out of the total, the fraction including the trial in flight, the ETA in seconds
    (None until something has finished), and the best value so far, from a sweep job's snapshot."""
    sweep = snap.get("sweep") or {}
    total = max(int(sweep.get("trials") or 0), 1)
    done = len(sweep.get("finished", []))
    last = snap.get("last_batch") or {}
    within = 0.0
    if sweep.get("current") is not None and last.get("total_steps"):
        within = min(last.get("global_step", 0) / max(last["total_steps"], 1), 1.0)
    fraction = min((done + within) / total, 1.0)
    began = sweep.get("began") or snap.get("started")
    now = time.time() if now is None else now
    eta = None
    if began and 0 < fraction < 1 and snap.get("status") in ACTIVE:
        eta = (now - began) / fraction * (1 - fraction)
    return {"done": done, "total": total, "fraction": fraction, "eta_s": eta, "best_value": sweep.get("best_value"),
            "current": sweep.get("current")}


@dataclass
class Job:
    """One training (or sweep) request. Its state changes only through the methods below, under its own lock."""

    id: str
    session_id: str
    config: dict  # a training's TrainConfig as a dict; a sweep's settings (submit_sweep)
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
    kind: str = "train"  # or "sweep", or "artifacts" (first use: a run's trust bundle and map)
    sweep: dict = field(default_factory=dict)  # a sweep's state: study, trials, finished, current, best
    session_gone_since: float | None = None
    _stride: int = 1
    _seen_batches: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
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
                "sessions": sorted(self.sessions), "kind": self.kind, "sweep": copy.deepcopy(self.sweep),
            }
        snap["queue_position"] = self._manager.queue_position(self.id) if self._manager else 0
        snap["active"] = snap["status"] in ACTIVE
        return snap

    # -- called by the manager ---------------------------------------------------------------
    def apply(self, event: dict) -> None:
        """Record one training event (the dicts `fmnist.training.train` sends its listeners), or one
        sweep event (`fmnist.sweep.run_sweep`'s, relayed by the sweep child) for a sweep job."""
        kind = event.get("kind")
        with self._lock:
            if self.kind == "sweep" and kind != "failed":
                self._apply_sweep(kind, event)
            elif kind == "batch":
                self.status = "running"
                self.last_batch = event
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
                if self.kind == "artifacts" and self.status == "starting":
                    self.status = "running"
            elif kind in ("finished", "stopped", "failed"):
                self.status = {"finished": "completed"}.get(kind, kind)
                self.message = str(event.get("message") or "")
                self.run_dir = event.get("run_dir")
                self.test_accuracy = event.get("test_accuracy")
                self.ended = time.time()

    def _apply_sweep(self, kind: str, event: dict) -> None:
        """A sweep event (under the job's lock): the trial table, the trial in flight, the outcome."""
        sweep = self.sweep
        if kind == "sweep_started":
            self.status = "running"
            sweep.update(study=event.get("study"), storage=event.get("storage"),
                         trials=event.get("trials", sweep.get("trials")), began=time.time())
            self.status_message = "starting the first trial"
        elif kind == "trial_started":
            self.status = "running"
            sweep["current"] = {"number": event.get("number"), "params": dict(event.get("params") or {}),
                                "epochs": []}
            self.last_batch = {}
            self.status_message = f"trial {event.get('number')}: training"
        elif kind == "trial_batch":
            self.last_batch = event
        elif kind == "trial_epoch" and sweep.get("current") is not None:
            sweep["current"]["epochs"].append({"epoch": event.get("epoch"), "val_accuracy": event.get("val_accuracy")})
        elif kind == "trial_finished":
            row = {k: event.get(k) for k in ("number", "state", "value", "run_dir", "seconds")}
            sweep.setdefault("finished", []).append(row)
            value = row["value"]
            if row["state"] == "COMPLETE" and isinstance(value, (int, float)) and (
                    sweep.get("best_value") is None or value > sweep["best_value"]):
                sweep["best_value"], sweep["best_run"] = float(value), row["run_dir"]
            sweep["current"] = None
            self.last_batch = {}
            self.status_message = f"trial {row['number']} {str(row['state']).lower()}"
        elif kind == "sweep_finished":
            stopped = bool(event.get("stopped"))
            self.status = "stopped" if stopped else "completed"
            sweep.update({k: event.get(k) for k in ("completed", "pruned", "failed")})
            if event.get("best_value") is not None:
                sweep["best_value"] = float(event["best_value"])
            sweep["best_run"] = event.get("best_run") or sweep.get("best_run")
            sweep["current"] = None
            self.run_dir = sweep["best_run"]
            self.message = (f"{event.get('completed', 0)} completed, {event.get('pruned', 0)} pruned, "
                            f"{event.get('failed', 0)} failed" + (" (stopped)" if stopped else ""))
            self.ended = time.time()
        elif kind == "status":
            self.status_message = str(event.get("message", ""))

    def watch(self, session_id: str, owner: bool = False) -> None:
        """Add a watching session (owner: it becomes the job's session too)."""
        with self._lock:
            self.sessions.add(session_id)
            self.session_gone_since = None
            if owner:
                self.session_id = session_id

    def watchers(self) -> set[str]:
        with self._lock:
            return set(self.sessions) | {self.session_id}

    def unwatched_for(self, watched: bool, now: float) -> float:
        """Record whether any watcher is alive now; seconds since the last one went (0 while watched)."""
        with self._lock:
            if watched:
                self.session_gone_since = None
                return 0.0
            if self.session_gone_since is None:
                self.session_gone_since = now
            return now - self.session_gone_since

    def begin(self) -> None:
        with self._lock:
            self.status, self.started = "starting", time.time()
            self.status_message = f"starting a {WHAT.get(self.kind, 'training')} process"

    def request_stop(self) -> bool:
        """Cancel a queued job (False), or mark an active one for stopping (True: signal its child)."""
        with self._lock:
            if self.status == "queued":
                self.status, self.message, self.ended = "cancelled", "cancelled before it started", time.time()
                self.dataset = None
                return False
            if self.status not in ACTIVE:
                return False
            if not self.stop_requested:
                self.stop_requested, self.stop_requested_at = True, time.time()
            return True

    def end(self, killed: bool, exitcode: int | None) -> None:
        """The child has gone: a job still active ended without its final event (killed or crashed)."""
        with self._lock:
            if self.status in ACTIVE:
                what = WHAT.get(self.kind, "training")
                self.status = "stopped" if killed else "failed"
                self.message = (f"{what} was ended without saving (its session closed)" if killed else
                                f"the {what} process ended unexpectedly (exit code {exitcode})")
                if self.kind == "sweep":
                    self.sweep["current"] = None
                self.ended = time.time()
            self.dataset = None


class JobManager:
    """A FIFO of training jobs with at most `max_running` trainings at once (default 1).

    use_process=False trains in a thread of this process instead of a child (quicker start, for
    tests); stop works the same way, but a thread cannot be killed. Only the `keep_finished` most
    recent finished jobs are kept (older ones are forgotten), so memory stays flat on a server that
    runs for months.
    """

    def __init__(self, max_running: int = 1, use_process: bool = True, orphan_grace_s: float = ORPHAN_GRACE_S,
                 poll_s: float = 0.1, export: bool = True, keep_finished: int = KEEP_FINISHED):
        self.max_running = max_running
        self.export = export
        self.use_process = use_process
        self.orphan_grace_s = orphan_grace_s
        self.poll_s = poll_s
        self.keep_finished = keep_finished
        self._jobs: dict[str, Job] = {}
        self._order: list[str] = []
        self._lock = threading.RLock()
        self._relay_lock = threading.Lock()  # one reader of the children's pipes at a time
        self._wake = threading.Event()
        self._children: dict[str, tuple[Job, Child]] = {}  # job id -> the job and its training child
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
        from fmnist.config import TrainConfig
        from fmnist.runs import new_run_name

        if not isinstance(config, TrainConfig):
            config = TrainConfig.from_dict(config)
        config = config.validate()
        job = Job(id=f"job{next(self._counter)}-{uuid.uuid4().hex[:8]}", session_id=session_id,
                  config=config.to_dict(), runs_root=str(runs_root) if runs_root else None,
                  data_dir=str(data_dir) if data_dir else None, run_name=new_run_name(config.params_key),
                  dataset=dataset, export=self.export if export is None else bool(export), sessions={session_id},
                  _manager=self)
        return self._enqueue(job)

    def _enqueue(self, job: Job) -> Job:
        with self._lock:
            if self._closed:
                raise RuntimeError("the job manager is shut down")
            self._jobs[job.id] = job
            self._order.append(job.id)
        self._wake.set()
        return job

    def submit_sweep(self, session_id: str, trials: int, preset: str | None = "fast", epochs: int | None = None,
                     limit: int | None = None, study: str | None = None, storage: str | None = None,
                     runs_root: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
                     dataset=None) -> Job:
        """Queue an Optuna sweep (`fmnist.sweep.run_sweep` in a child). It waits its turn like a
        training. Checked here, so that bad input fails at once with one line (ValueError): at most
        SWEEP_TRIALS trials, then fmnist.sweep's own checks, which also open (or create) the study
        and refuse settings other than those its earlier trials ran with."""
        from fmnist.sweep import prepare_sweep

        low, high = SWEEP_TRIALS
        if isinstance(trials, bool) or not isinstance(trials, int) or not low <= trials <= high:
            raise ValueError(f"trials must be a whole number between {low} and {high}, got {trials!r}")
        opened = prepare_sweep(trials, study=study, storage=storage, preset=preset, epochs=epochs, limit=limit,
                               runs_root=runs_root)[-1]  # (..., the opened study)
        params = {"trials": trials, "preset": preset, "epochs": epochs, "limit": limit, "study": opened.study_name,
                  "storage": str(storage) if storage else None}
        job = Job(id=f"sweep{next(self._counter)}-{uuid.uuid4().hex[:8]}", session_id=session_id, config=params,
                  runs_root=str(runs_root) if runs_root else None, data_dir=str(data_dir) if data_dir else None,
                  run_name="", dataset=dataset, sessions={session_id}, kind="sweep",
                  sweep={"study": params["study"], "storage": params["storage"], "trials": trials, "finished": [],
                         "current": None, "best_value": None, "best_run": None}, _manager=self)
        return self._enqueue(job)

    def submit_artifacts(self, run_dir: str | os.PathLike, session_id: str, data_dir: str | os.PathLike | None = None,
                         dataset=None) -> Job:
        """Queue the first-use computation of a run's trust bundle and feature map (`compute_artifacts`
        in a child), or join the one already queued or running for that run (the session is attached
        to it): one per run at a time, however many tabs ask. ValueError (one line) for a run that is
        not usable or already has both."""
        from fmnist.runs import RunError, checked_run

        try:
            checked_run(run_dir)
        except RunError as exc:
            raise ValueError(str(exc)) from exc
        key = _run_key(run_dir)
        with self._lock:
            found = self.artifacts_job(key)
            if found is not None and found.status in ACTIVE:
                found.watch(session_id)
                return found
            if not missing_artifacts(key):
                raise ValueError(f"{key} already has its calibration and feature map")
            job = Job(id=f"artifacts{next(self._counter)}-{uuid.uuid4().hex[:8]}", session_id=session_id,
                      config={"run_dir": key}, runs_root=None, data_dir=str(data_dir) if data_dir else None,
                      run_name="", dataset=dataset, run_dir=key, sessions={session_id}, kind="artifacts",
                      _manager=self)
            return self._enqueue(job)

    def artifacts_job(self, run_dir: str | os.PathLike) -> Job | None:
        """The newest first-use job of a run (active or finished) the manager still keeps, or None."""
        key = _run_key(run_dir)
        with self._lock:
            return next((self._jobs[j] for j in reversed(self._order)
                         if self._jobs[j].kind == "artifacts" and self._jobs[j].config.get("run_dir") == key), None)

    def get(self, job_id: str | None) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id) if job_id else None

    def jobs(self) -> list[Job]:
        """Every job the manager still keeps, oldest first."""
        with self._lock:
            return [self._jobs[j] for j in self._order]

    def jobs_for(self, session_id: str) -> list[Job]:
        with self._lock:
            return [self._jobs[j] for j in self._order if session_id in self._jobs[j].sessions]

    def active_jobs(self) -> list[Job]:
        with self._lock:
            return [self._jobs[j] for j in self._order if self._jobs[j].status in ACTIVE]

    def children(self) -> int:
        """How many training children (processes or threads) have not been reaped yet."""
        with self._lock:
            return len(self._children)

    def pid(self, job_id: str) -> int | None:
        """The process id of a job's training child while it runs (None in thread mode or when none)."""
        with self._lock:
            entry = self._children.get(job_id)
        return entry[1].pid if entry is not None else None

    def attach(self, job_id: str, session_id: str) -> Job | None:
        """Add a session to the job's watchers (a reload, a second tab, a reconnection): the job
        is orphaned only when every watcher has gone. Any job the manager keeps can be found again."""
        job = self.get(job_id)
        if job is not None:
            job.watch(session_id)
        return job

    def adopt(self, job_id: str, session_id: str) -> Job | None:
        """Attach a session and make it the job's owner (the session a reload opened)."""
        job = self.get(job_id)
        if job is not None:
            job.watch(session_id, owner=True)
        return job

    def queue_position(self, job_id: str) -> int:
        """0 while running (or done); 1 for the next job to start, and so on."""
        with self._lock:
            waiting = [j for j in self._order if self._jobs[j].status == "queued"]
            return waiting.index(job_id) + 1 if job_id in waiting else 0

    def stop(self, job_id: str) -> None:
        """Cancel a queued job, or ask a running one to stop at its next batch. The events its child
        sent before the request are recorded before this returns, so a snapshot taken now shows where
        the training was when it was asked to stop."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or not job.request_stop():
                return
            child = self._children.get(job_id, (None, None))[1]
            if child is not None:
                child.request_stop()
        if child is not None:
            self._relay(job, child)
        self._wake.set()

    def kill(self, job_id: str) -> None:
        """End a job's child process now (no saving) and remove its half-written run."""
        with self._lock:
            child = self._children.get(job_id, (None, None))[1]
            job = self._jobs.get(job_id)
        if job is not None and job.status == "queued":
            self.stop(job_id)
            return
        if child is not None:
            child.kill()
        self._wake.set()

    def forget_finished(self, keep: int | None = None) -> None:
        """Drop all but the `keep` (default keep_finished) most recent finished jobs and their logs.
        The scheduler calls it on every tick, so memory stays flat on a long-running server."""
        keep = self.keep_finished if keep is None else keep
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
        while self.children() and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            left = list(self._children)
        for job_id in left:
            self.kill(job_id)
        self._wake.set()
        self._thread.join(timeout=5)

    # -- scheduler: one tick relays events, reaps ended children, checks sessions, starts jobs ------
    def _loop(self) -> None:
        while True:
            self._wake.wait(self.poll_s)
            self._wake.clear()
            try:
                with self._lock:
                    running = list(self._children.values())
                for job, child in running:
                    self._relay(job, child)
                    if child.ended or not child.is_alive():
                        self._reap(job, child)
                self._check_sessions()
                self._start_next()
                self.forget_finished()
            except Exception as exc:  # the scheduler must survive anything a job does
                print(f"fmnist.jobs scheduler error: {type(exc).__name__}: {exc}")
            if self._closed and not self.children():
                return

    def _start_next(self) -> None:
        """Start the first queued job in a child when a slot is free."""
        with self._lock:
            if self._closed or len(self._children) >= self.max_running:
                return
            nxt = next((self._jobs[j] for j in self._order if self._jobs[j].status == "queued"), None)
            if nxt is None:
                return
            nxt.begin()
            if nxt.kind == "sweep":
                target = _sweep_main
                args = (nxt.config, nxt.runs_root, nxt.data_dir, nxt.dataset, self.use_process)
            elif nxt.kind == "artifacts":
                target = _artifacts_main
                args = (nxt.config["run_dir"], nxt.data_dir, nxt.dataset, self.use_process)
            else:
                target = _train_main
                args = (nxt.config, nxt.runs_root, nxt.data_dir, nxt.run_name, nxt.dataset, nxt.export,
                        self.use_process)
            child = Child(target, args, name=f"fmnist-{nxt.kind}-{nxt.id}", in_thread=not self.use_process,
                          stop_requested=nxt.stop_requested)
            self._children[nxt.id] = (nxt, child)

    def _relay(self, job: Job, child: Child, limit: int = 2000) -> None:
        """Apply the events a job's child has sent so far (bounded, so other work still happens)."""
        with self._relay_lock:
            for event in child.drain(limit):
                job.apply(event)

    def _reap(self, job: Job, child: Child) -> None:
        """The child has ended (or died): collect it, settle the job, remove a half-written run."""
        with self._relay_lock:
            for event in child.drain(limit=1 << 30):  # the last events, up to the end marker
                job.apply(event)
        code = child.close(grace_s=10 if child.ended else 0)
        job.end(child.killed, code)
        with self._lock:
            self._children.pop(job.id, None)
            alone = not self._children
        if (job.status != "completed" or child.killed) and job.kind != "artifacts":  # add_files cleans its own
            _remove_staging(job, alone)
        self._wake.set()

    def _check_sessions(self) -> None:
        """Stop (then kill) jobs none of whose watching sessions has been alive for the grace period."""
        alive = self._session_alive
        if alive is None:
            return
        now = time.time()
        for job in self.active_jobs():
            try:
                watched = any(alive(sid) for sid in job.watchers())
            except Exception:
                watched = True
            gone_for = job.unwatched_for(watched, now)
            if not watched and gone_for >= self.orphan_grace_s:
                if job.status == "queued" or not job.stop_requested:
                    self.stop(job.id)  # graceful first: best weights are saved as a stopped run
                elif gone_for >= self.orphan_grace_s + 120:
                    self.kill(job.id)


def _remove_staging(job: Job, alone: bool) -> None:
    """Delete the hidden staging folder a killed training may leave behind. A sweep's trials name
    their own runs, so for a sweep: the staging folders made since it started, and only when no
    other job is running (`alone`), whose folder it could be."""
    from fmnist.runs import STAGING_PREFIX, runs_root

    root = runs_root(job.runs_root)
    if not root.is_dir():
        return
    if job.kind != "sweep":
        for path in root.glob(f"{STAGING_PREFIX}{job.run_name}-*"):
            shutil.rmtree(path, ignore_errors=True)
        return
    if not alone or job.started is None:
        return
    for path in root.glob(f"{STAGING_PREFIX}*"):
        try:
            made = path.stat().st_mtime
        except OSError:
            continue
        if made >= job.started - 1:
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
