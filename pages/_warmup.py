"""Loading the current model ahead of the first upload or stroke, in a background thread."""

from __future__ import annotations

import threading
from pathlib import Path

import streamlit as st

from pages import _selection


@st.cache_resource(show_spinner=False)
def _warm_up_flag() -> dict:
    return {"started": False}


def warm_up() -> None:
    """Once per server, after the first page is on screen: load the current model with the current
    backend, and the photo pipeline, in a background thread, so that the first upload or stroke
    does not wait for OpenVINO to import and compile (seconds on a busy 2-core machine).
    fmnist.backends keeps one predictor per (run, backend) per process, so the pages reuse it."""
    flag = _warm_up_flag()
    if flag["started"]:
        return
    flag["started"] = True
    run = _selection.current_run()
    if run is not None:
        warm(run.path, _selection.current_backend())


def warm(run_path: Path, name: str) -> None:
    """Load a run's backend in a background thread (Keras: starts its worker process, so the server
    still never imports TensorFlow). Errors are left to the page that needs the model."""

    def work() -> None:
        try:
            import numpy as np

            import fmnist.preprocess  # noqa: F401
            from fmnist.backends import get_backend

            get_backend(run_path, name, isolated=True).predict_proba(np.zeros((1, 28, 28), np.float32))
        except Exception:  # a missing export etc. is reported by the page that needs the model
            pass

    threading.Thread(target=work, name="fmnist-warm-up", daemon=True).start()
