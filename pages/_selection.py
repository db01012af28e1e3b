"""What this session has chosen in the sidebar: the current run and the backend."""

from __future__ import annotations

import streamlit as st

from pages import _resources

RUN_KEY, BACKEND_KEY = "current_run", "backend"


def current_run():
    """The RunInfo chosen in the sidebar, or None when there is no usable run."""
    runs = _resources.usable_runs()
    name = st.session_state.get(RUN_KEY)
    for run in runs:
        if run.name == name:
            return run
    return runs[0] if runs else None


def current_backend() -> str:
    return st.session_state.get(BACKEND_KEY, "keras")


def choose_run(name: str) -> bool:
    """Make a usable run the sidebar's current run (call it before the sidebar is drawn: a widget
    callback or before a rerun); False when no usable run has that name."""
    if name not in {run.name for run in _resources.usable_runs()}:
        return False
    st.session_state[RUN_KEY] = name
    return True


def remember_in_url(key: str, value: str | None) -> None:
    """Keep a choice in the URL so that a reload restores it."""
    if value and st.query_params.get(key) != value:
        st.query_params[key] = value


def current_predictor():
    """(run, backend) for the sidebar's choices, falling back to Keras with a note where the chosen
    backend cannot serve this run; stops the page with a message when there is no model at all."""
    run = current_run()
    if run is None:
        st.info("No trained model yet: train one on the Train page (or install the shipped default model).")
        st.stop()
    name = current_backend()
    model, problem = _resources.backend(run.path, name)
    # a remote server that is down: answer locally with the same model files (OpenVINO FP32 first)
    for fallback in (("openvino-fp32", "keras") if name == "remote" else ("keras",)):
        if model is not None or name == fallback:
            break
        st.warning(f"{problem.rstrip('.')}. Using {_resources.backend_label(fallback)} instead.")
        model, problem = _resources.backend(run.path, fallback)
    if model is None:
        st.error(problem)
        st.stop()
    return run, model
