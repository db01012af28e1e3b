"""The sidebar every page shares: the current run and backend, and this session's training and sweep."""

from __future__ import annotations

import streamlit as st

from pages import _resources, _selection, _session, _warmup
from pages._selection import BACKEND_KEY, RUN_KEY


def sidebar() -> None:
    """Current run and backend, shared by every page, and this session's training and sweep status."""
    job = _session.current_job("train")
    sweep = _session.current_job("sweep")
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
        for shown in (job, sweep):
            if shown is not None:  # polled while active; its end reruns the app (run lists everywhere)
                _session.watch_job(shown.id, shown.snapshot()["active"], _job_status)


def _job_status(snap: dict) -> None:
    st.markdown("### Sweep" if snap["kind"] == "sweep" else "### Training")
    st.caption(_session.job_line(snap))


def _on_backend_change() -> None:
    """A newly picked backend starts loading at once, while the user uploads or draws."""
    run = _selection.current_run()
    if run is not None:
        _warmup.warm(run.path, st.session_state.get(BACKEND_KEY, "keras"))
