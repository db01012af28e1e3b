"""This session and its training job: the session id, the server's job queue, and finding this
session's job again after a reload, a second tab or a reconnection (the job id lives in the URL)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pages._selection import RUN_KEY


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


def current_job():
    """This session's latest job. The job id lives in the URL (`?job=`) of every page, so a reload,
    a second tab opened from that URL or a reconnection finds the job again and watches it."""
    manager = job_manager()
    sid = session_id()
    wanted = st.query_params.get("job")
    if wanted and st.session_state.get("job_id") != wanted:
        if manager.get(wanted) is not None:
            st.session_state["job_id"] = wanted
        else:  # an old link (the server restarted, or the job was long forgotten): nothing to find
            del st.query_params["job"]
    job = manager.get(st.session_state.get("job_id"))
    if job is None:
        return None
    manager.attach(job.id, sid)
    if st.query_params.get("job") != job.id:
        st.query_params["job"] = job.id  # page switches drop query parameters: put it back
    if job.snapshot()["active"]:
        st.session_state["job_seen_active"] = job.id
    return job


def select_finished_run(job) -> None:
    """Make a job's saved run the sidebar's current run, once, when this session saw it train
    (so that Results, Classify and Compare open the new model, as the Train page says)."""
    snap = job.snapshot()
    if (snap["status"] in ("completed", "stopped") and snap["run_dir"]
            and st.session_state.get("job_seen_active") == job.id
            and st.session_state.get("job_run_selected") != job.id):
        st.session_state[RUN_KEY] = Path(snap["run_dir"]).name
        st.session_state["job_run_selected"] = job.id


def job_line(snap: dict) -> str:
    """One line about a job's state, for the sidebar and the Train page."""
    status = snap["status"]
    if status == "queued":
        return f"Queued: position {snap['queue_position']} (one training or sweep runs at a time on this server)"
    if status == "starting":
        return "Starting the training process..."
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
    if status == "stopped":
        return f"Stopped: {snap['message'] or 'best weights kept'}"
    if status == "failed":
        return f"Failed: {snap['message']}"
    return f"Cancelled: {snap['message']}"


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
