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
    if model is None and name != "keras":
        st.warning(f"{problem}. Using Keras instead.")
        model, problem = _resources.backend(run.path, "keras")
    if model is None:
        st.error(problem)
        st.stop()
    return run, model
