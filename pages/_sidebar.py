"""The sidebar every page shares: the current run and backend, and this session's training and sweep."""

from __future__ import annotations

import streamlit as st

from pages import _resources, _selection, _session, _warmup
from pages._selection import BACKEND_KEY, RUN_KEY


SWEEP_KEY, SWEEP_PARAM = "sweep_job_id", "sweep"  # this session's sweep job: session state and URL


def current_sweep():
    """This session's latest sweep job (fmnist.jobs, kind "sweep"), watched by this session. Its id
    lives in the URL (`?sweep=`) beside the training's `?job=`, so a reload, a second tab or a
    reconnection finds it again; an id the server no longer knows is dropped from the URL."""
    manager = _session.job_manager()
    wanted = st.query_params.get(SWEEP_PARAM)
    if wanted and st.session_state.get(SWEEP_KEY) != wanted:
        found = manager.get(wanted)
        if found is not None and found.kind == "sweep":
            st.session_state[SWEEP_KEY] = wanted
        else:
            del st.query_params[SWEEP_PARAM]
    job = manager.get(st.session_state.get(SWEEP_KEY))
    if job is None:
        return None
    manager.attach(job.id, _session.session_id())
    _selection.remember_in_url(SWEEP_PARAM, job.id)  # page switches drop query parameters: put it back
    return job


def sweep_line(snap: dict) -> str:
    """One line about a sweep job, for the sidebar and the Sweep page."""
    from fmnist.jobs import sweep_progress

    status = snap["status"]
    if status == "queued":
        return f"Queued: position {snap['queue_position']} (one training or sweep runs at a time on this server)"
    if status == "starting":
        return "Starting the sweep process..."
    if status in ("failed", "cancelled"):
        return f"{status.capitalize()}: {snap['message']}"
    progress = sweep_progress(snap)
    best = progress["best_value"]
    best_text = f" · best {best:.2%}" if isinstance(best, float) else ""
    if status == "running":
        eta = progress["eta_s"]
        eta_text = f" · ETA {int(eta) // 60}:{int(eta) % 60:02d}" if eta is not None else ""
        return f"Running: {progress['done']}/{progress['total']} trials done{best_text}{eta_text}"
    return f"{'Finished' if status == 'completed' else 'Stopped'}: {snap['message']}{best_text}"


def sidebar() -> None:
    """Current run and backend, shared by every page, and this session's training and sweep status."""
    job = _session.current_job()
    sweep = current_sweep()
    if job is not None:
        _session.select_finished_run(job)
    for key, param in ((RUN_KEY, "run"), (BACKEND_KEY, "backend")):
        if key not in st.session_state and st.query_params.get(param):
            st.session_state[key] = st.query_params[param]  # a reload: restore the sidebar
    runs = _resources.usable_runs()
    with st.sidebar:
        st.markdown("### Model")
        if runs:
            names = [r.name for r in runs]
            if st.session_state.get(RUN_KEY) not in names:
                st.session_state[RUN_KEY] = names[-1] if runs[-1].is_default else names[0]
            labels = {r.name: r.label() for r in runs}
            st.selectbox("Run", names, key=RUN_KEY, format_func=lambda n: labels.get(n, n),
                         help="The trained model used by Results and Classify. "
                              "The shipped default model is always listed.")
        else:
            st.info("No trained model yet: train one on the Train page.")
        backends = _resources.backend_names()
        if st.session_state.get(BACKEND_KEY) not in backends:
            st.session_state[BACKEND_KEY] = "openvino-fp32" if "openvino-fp32" in backends else backends[0]
        st.selectbox("Backend", backends, key=BACKEND_KEY, format_func=_resources.backend_label,
                     on_change=_on_backend_change,
                     help="Which inference engine Classify uses. Compare measures them side by side."
                          + (" Remote: the model server at FMNIST_SERVING_URL, over the KServe v2 protocol."
                             if "remote" in backends else ""))
        _selection.remember_in_url("run", st.session_state.get(RUN_KEY))
        _selection.remember_in_url("backend", st.session_state.get(BACKEND_KEY))
        if job is not None:
            _job_status(job.id, job.snapshot()["active"])
        if sweep is not None:
            _job_status(sweep.id, sweep.snapshot()["active"])


def _job_status(job_id: str, active: bool) -> None:
    @st.fragment(run_every=2.0 if active else None)
    def status_box():
        job = _session.job_manager().get(job_id)
        if job is None:
            return
        snap = job.snapshot()
        sweep = snap["kind"] == "sweep"
        st.markdown("### Sweep" if sweep else "### Training")
        st.caption(sweep_line(snap) if sweep else _session.job_line(snap))
        if active and not snap["active"]:
            st.session_state["job_finished_seen"] = job_id
            st.rerun(scope="app")  # refresh run lists everywhere

    with st.sidebar:
        status_box()


def _on_backend_change() -> None:
    """A newly picked backend starts loading at once, while the user uploads or draws."""
    run = _selection.current_run()
    if run is not None:
        _warmup.warm(run.path, st.session_state.get(BACKEND_KEY, "keras"))
