"""This session and its jobs (a training, a sweep): the session id, the server's job queue, finding
this session's jobs again after a reload, a second tab or a reconnection (their ids live in the URL),
polling a job and the lines that describe it."""

from __future__ import annotations

import math
from pathlib import Path

import streamlit as st

from pages._selection import RUN_KEY, remember_in_url


def session_id() -> str:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "no-session"


def session_alive(sid: str) -> bool:
    """Whether a browser session is still connected to this server (True outside a server)."""
    from streamlit import runtime

    if not runtime.exists():
        return True
    return runtime.get_instance().is_active_session(sid)


@st.cache_resource(show_spinner=False)
def _job_manager_resource():
    from fmnist.jobs import get_manager

    manager = get_manager()
    manager.set_session_checker(session_alive)
    return manager


def job_manager():
    """The server's training queue (one per server, kept across module reloads); closed tabs'
    jobs are stopped after a grace period."""
    return _job_manager_resource()


JOBS = {"train": ("job_id", "job"), "sweep": ("sweep_job_id", "sweep")}  # kind: (session state key, URL parameter)
LIVE_REFRESH_S = 2.0  # how often a job's status is polled while it is queued or running


def current_job(kind: str = "train"):
    """This session's latest job of a kind ("train" or "sweep", fmnist.jobs), watched by this session.
    Its id lives in the URL of every page (`?job=` for a training, `?sweep=` for a sweep), so a reload,
    a second tab opened from that URL or a reconnection finds the job again; an id the server no
    longer knows (it restarted, or the job was long forgotten) is dropped from the URL."""
    key, param = JOBS[kind]
    manager = job_manager()
    wanted = st.query_params.get(param)
    if wanted and st.session_state.get(key) != wanted:
        found = manager.get(wanted)
        if found is not None and found.kind == kind:
            st.session_state[key] = wanted
        else:
            del st.query_params[param]
    job = manager.get(st.session_state.get(key))
    if job is None:
        return None
    manager.attach(job.id, session_id())
    remember_in_url(param, job.id)  # page switches drop query parameters: put it back
    if kind == "train" and job.snapshot()["active"]:
        st.session_state["job_seen_active"] = job.id  # for select_finished_run
    return job


def own_job(job) -> None:
    """A job this session just submitted becomes its current job of that kind (session state and URL)."""
    key, param = JOBS[job.kind]
    st.session_state[key] = job.id
    st.query_params[param] = job.id


def watch_job(job_id: str, active: bool, render, every: float = LIVE_REFRESH_S) -> None:
    """Draw a job with render(snapshot) in a fragment that polls it every `every` seconds while it
    is active; when it ends, the whole app reruns (buttons, run lists and the sidebar catch up)."""

    @st.fragment(run_every=every if active else None)
    def poll():
        job = job_manager().get(job_id)
        if job is None:
            return
        snap = job.snapshot()
        render(snap)
        if active and not snap["active"]:
            st.rerun(scope="app")

    poll()


def select_finished_run(job) -> None:
    """Make a job's saved run the sidebar's current run, once, when this session saw it train
    (so that Results, Classify and Compare open the new model, as the Train page says)."""
    snap = job.snapshot()
    if (snap["status"] in ("completed", "stopped") and snap["run_dir"]
            and st.session_state.get("job_seen_active") == job.id
            and st.session_state.get("job_run_selected") != job.id):
        st.session_state[RUN_KEY] = Path(snap["run_dir"]).name
        st.session_state["job_run_selected"] = job.id


def fmt_seconds(seconds: float | None) -> str:
    """A duration as m:ss, or h:mm:ss from an hour; "?" when unknown."""
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def job_line(snap: dict) -> str:
    """One line about a training's or a sweep's state, for the sidebar and the Train and Sweep pages."""
    status, sweep = snap["status"], snap["kind"] == "sweep"
    if status == "queued":
        return f"Queued: position {snap['queue_position']} (one training or sweep runs at a time on this server)"
    if status == "starting":
        return f"Starting the {'sweep' if sweep else 'training'} process..."
    if status in ("failed", "cancelled"):
        return f"{status.capitalize()}: {snap['message']}"
    if sweep:
        from fmnist.jobs import sweep_progress

        progress = sweep_progress(snap)
        best = progress["best_value"]
        best_text = f" · best {best:.2%}" if isinstance(best, float) else ""
        if status == "running":
            eta_text = f" · ETA {fmt_seconds(progress['eta_s'])}" if progress["eta_s"] is not None else ""
            return f"Running: {progress['done']}/{progress['total']} trials done{best_text}{eta_text}"
        return f"{'Finished' if status == 'completed' else 'Stopped'}: {snap['message']}{best_text}"
    if status == "running":
        last, start = snap["last_batch"], snap["start"]
        if not last:
            return f"Running: {snap['status_message'] or 'preparing'}"
        pct = 100 * last["global_step"] / max(last["total_steps"], 1)
        if last["global_step"] >= last["total_steps"] and snap["status_message"]:
            return f"Running: {snap['status_message']}"
        return f"Running: epoch {last['epoch']}/{start.get('epochs', '?')}, {pct:.0f}%"
    if status == "completed":
        acc = snap.get("test_accuracy")
        return f"Finished: test accuracy {acc:.2%}" if isinstance(acc, float) else "Finished"
    return f"Stopped: {snap['message'] or 'best weights kept'}"


PLACED_KEY = "placed_inputs"  # this session's uploads and drawing on each run's feature map


def remember_placed(run_dir: Path, name: str, position) -> None:
    """Keep where one of this session's inputs sits on a run's feature map (Classify computes it,
    Results' Map tab shows it); newest last, a few per run."""
    placed = st.session_state.setdefault(PLACED_KEY, {}).setdefault(str(run_dir), {})
    placed.pop(name, None)
    placed[name] = (float(position[0]), float(position[1]))
    while len(placed) > 12:
        placed.pop(next(iter(placed)))


def placed_inputs(run_dir: Path) -> dict[str, tuple[float, float]]:
    """{input name: (x, y)} of this session's inputs placed on the run's feature map."""
    return dict(st.session_state.get(PLACED_KEY, {}).get(str(run_dir), {}))


def artifacts_job(run_dir: Path):
    """The newest first-use job of a run (fmnist.jobs: its trust bundle and map), or None. The
    server's queue holds at most one active per run, so a reload, a second tab or another session
    finds it by the run alone; an active one is watched by this session from now on."""
    manager = job_manager()
    job = manager.artifacts_job(run_dir)
    if job is not None and job.snapshot()["active"]:
        manager.attach(job.id, session_id())
    return job


def artifacts_line(snap: dict) -> str:
    """One line about a first-use job's state."""
    status = snap["status"]
    if status == "queued":
        return (f"Queued: position {snap['queue_position']} (one training, sweep or computation runs at a time on "
                "this server)")
    if status == "starting":
        return "Starting the computation process..."
    if status == "running":
        began = snap.get("started")
        import time

        spent = f" ({fmt_seconds(time.time() - began)} so far)" if began else ""
        return f"Computing the calibration and map: {snap['status_message'] or 'preparing'}{spent}"
    if status == "completed":
        return f"Done: {snap['message']}."
    if status == "failed":
        return f"Computing the calibration and map failed: {snap['message']}"
    return f"{status.capitalize()}: {snap['message']}"


ARTIFACTS_BUTTON = "Compute calibration and map now"


def artifacts_panel(run, data_dir: str | None, key: str) -> None:
    """For a run trained before the trust bundle and the map existed: the button that computes both in
    the server's job queue (a child process; never on page load: a classroom's tabs must not start a
    job each) and, while that runs, its progress, found again after a reload. One job per run: a second
    click, tab or session joins it. When it ends the app reruns and the pages load the new bundles."""
    job = artifacts_job(run.path)
    snap = job.snapshot() if job is not None else None
    if snap is not None and snap["active"]:
        watch_job(job.id, True, lambda s: st.info(artifacts_line(s), icon=":material/hourglass_top:"))
        return
    if snap is not None and snap["status"] in ("failed", "stopped", "cancelled"):
        st.error(artifacts_line(snap))
    if st.button(ARTIFACTS_BUTTON, key=key, icon=":material/calculate:",
                 help="Fits the temperature and the unfamiliar-input thresholds on this run's validation split and "
                      "draws its feature map, in a background process, once; both are stored with the run. Tens of "
                      "seconds for a quick run, a few minutes for a full one on 2 cores."):
        try:
            job_manager().submit_artifacts(run.path, session_id(), data_dir=data_dir)
        except ValueError as exc:
            st.error(str(exc))
            return
        st.rerun()
