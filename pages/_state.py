"""The app's shared Streamlit state: cached read-only resources, the session id, and the sidebar
(current run and backend) that every page reads. Heavy modules load inside the functions."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import streamlit as st

from fmnist import runs as fruns

BACKEND_LABELS = {"keras": "Keras (TensorFlow)", "openvino-fp32": "OpenVINO FP32", "openvino-int8": "OpenVINO INT8"}
RUN_KEY, BACKEND_KEY = "current_run", "backend"


def runs_dir() -> Path:
    return fruns.runs_root()


def data_dir() -> str | None:
    return os.environ.get("FMNIST_DATA_DIR") or None


def ensure_navigation() -> None:
    """Make sure the run goes through streamlit_app.py's st.navigation.

    Because this app keeps its pages in pages/, Streamlit runs a fresh server's very first script
    run in the old pages-directory mode when that run opens a deep link (e.g. /train): the page
    runs alone, without the sidebar and page config. Switch the mode off and rerun the app.
    """
    try:  # a private Streamlit attribute (1.67); if a later release drops it, there is nothing to fix
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:
        return
    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        st.rerun()


# ---- read-only resources shared by all sessions ----------------------------------------------

@st.cache_resource(show_spinner="Loading Fashion-MNIST...")
def _dataset_cached(folder: str | None):
    from fmnist.data import load_fashion_mnist

    return load_fashion_mnist(folder)


def dataset():
    """The Fashion-MNIST arrays (shared, read-only), or None after showing why they are missing."""
    from fmnist.data import DataError

    try:
        return _dataset_cached(data_dir())
    except DataError as exc:
        st.error(f"Fashion-MNIST data is not available. {exc}")
        return None


def _runs_stamp(root: Path) -> tuple:
    """Cheap change detector: the folder's and each run's manifest modification times."""
    stamps = []
    for folder in (root, fruns.DEFAULT_MODEL_DIR):
        try:
            stamps.append(folder.stat().st_mtime_ns)
            stamps.extend(p.stat().st_mtime_ns for p in folder.glob("*/manifest.json"))
            stamps.extend(p.stat().st_mtime_ns for p in folder.glob("manifest.json"))
        except OSError:
            stamps.append(0)
    return tuple(stamps)


@st.cache_data(max_entries=8, show_spinner=False)
def _list_runs_cached(root: str, stamp: tuple):
    return fruns.list_runs(root)


def all_runs() -> list:
    """Every run (newest first, the shipped default last), re-verified only when files change."""
    root = runs_dir()
    return _list_runs_cached(str(root), _runs_stamp(root))


def usable_runs() -> list:
    return [r for r in all_runs() if r.usable]


@st.cache_resource(max_entries=6, show_spinner="Loading the model...")
def _backend_cached(run_dir: str, name: str, stamp: tuple):
    from fmnist.backends import get_backend

    # isolated: Keras answers from a worker process, so the server never imports TensorFlow (once it
    # has, Streamlit runs keras.backend.clear_session() after every rerun of every session)
    return get_backend(run_dir, name, isolated=True)


def backend(run_dir: Path, name: str):
    """A cached predictor shared by all sessions (backends guard their own state with a lock).
    Returns (backend, None) or (None, message)."""
    try:
        stamp = ((Path(run_dir) / "manifest.json").stat().st_mtime_ns,)
        return _backend_cached(str(run_dir), name, stamp), None
    except Exception as exc:  # BackendError, RunError, missing export...: all shown as one message
        return None, f"{BACKEND_LABELS.get(name, name)} is not available for this run: {exc}"


@st.cache_resource(show_spinner=False)
def _loaded_backends() -> set:
    return set()


def ensure_loaded(model) -> None:
    """Make the first call of a backend in this server outside any latency figure: it loads the
    model (Keras: starts its worker and imports TensorFlow, seconds), shown as loading."""
    loaded = _loaded_backends()
    if id(model) in loaded:
        return
    import time

    import numpy as np

    label = BACKEND_LABELS.get(model.name, model.name)
    with st.spinner(f"Loading {label} (first use on this server)..."):
        t0 = time.perf_counter()
        model.predict_proba(np.zeros((1, 28, 28), np.float32))
        seconds = time.perf_counter() - t0
    loaded.add(id(model))
    if seconds > 0.5:
        st.caption(f"Loaded {label} in {seconds:.1f} s; the times below are the model's own.")


@st.cache_data(max_entries=16, show_spinner=False)
def run_files(run_dir: str, stamp: tuple) -> dict:
    """history, metrics and test probabilities of a run (cached per run)."""
    out = {"history": None, "metrics": None, "probs": None}
    for key, loader in (("history", fruns.load_history), ("metrics", fruns.load_metrics),
                        ("probs", fruns.load_test_probs)):
        try:
            out[key] = loader(run_dir)
        except (OSError, ValueError):
            pass
    return out


def load_run_files(run_dir: Path) -> dict:
    try:
        stamp = ((Path(run_dir) / "manifest.json").stat().st_mtime_ns,)
    except OSError:
        stamp = (0,)
    return run_files(str(run_dir), stamp)


# ---- sessions --------------------------------------------------------------------------------

def session_id() -> str:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "no-session"


def _session_alive(sid: str) -> bool:
    from streamlit import runtime

    if not runtime.exists():
        return True
    return runtime.get_instance().is_active_session(sid)


@st.cache_resource(show_spinner=False)
def _job_manager_resource():
    from fmnist.jobs import get_manager

    manager = get_manager()
    manager.set_session_checker(_session_alive)
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
        else:  # an old link (the server restarted): nothing to find
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


def _remember_in_url(key: str, value: str | None) -> None:
    """Keep the sidebar's choice in the URL so that a reload restores it."""
    if value and st.query_params.get(key) != value:
        st.query_params[key] = value


# ---- the sidebar -----------------------------------------------------------------------------

def sidebar() -> None:
    """Current run and backend, shared by every page, and this session's training status."""
    job = current_job()
    if job is not None:
        select_finished_run(job)
    for key, param in ((RUN_KEY, "run"), (BACKEND_KEY, "backend")):
        if key not in st.session_state and st.query_params.get(param):
            st.session_state[key] = st.query_params[param]  # a reload: restore the sidebar
    runs = usable_runs()
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
        from fmnist.backends import BACKENDS

        if st.session_state.get(BACKEND_KEY) not in BACKENDS:
            st.session_state[BACKEND_KEY] = "openvino-fp32" if "openvino-fp32" in BACKENDS else BACKENDS[0]
        st.selectbox("Backend", list(BACKENDS), key=BACKEND_KEY, format_func=lambda b: BACKEND_LABELS.get(b, b),
                     on_change=_on_backend_change,
                     help="Which inference engine Classify uses. Compare measures them side by side.")
        _remember_in_url("run", st.session_state.get(RUN_KEY))
        _remember_in_url("backend", st.session_state.get(BACKEND_KEY))
        if job is not None:
            _sidebar_job(job.id, job.snapshot()["active"])


def _sidebar_job(job_id: str, active: bool) -> None:
    @st.fragment(run_every=2.0 if active else None)
    def status_box():
        job = job_manager().get(job_id)
        if job is None:
            return
        snap = job.snapshot()
        st.markdown("### Training")
        st.caption(job_line(snap))
        if active and not snap["active"]:
            st.session_state["job_finished_seen"] = job_id
            st.rerun(scope="app")  # refresh run lists everywhere

    with st.sidebar:
        status_box()


def job_line(snap: dict) -> str:
    """One line about a job's state, for the sidebar and the Train page."""
    status = snap["status"]
    if status == "queued":
        return f"Queued: position {snap['queue_position']} (one training runs at a time on this server)"
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


def current_run():
    """The RunInfo chosen in the sidebar, or None when there is no usable run."""
    name = st.session_state.get(RUN_KEY)
    for run in usable_runs():
        if run.name == name:
            return run
    runs = usable_runs()
    return runs[0] if runs else None


def current_backend() -> str:
    return st.session_state.get(BACKEND_KEY, "keras")


# ---- warm-up -----------------------------------------------------------------------------------

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
    run = current_run()
    if run is not None:
        warm(run.path, current_backend())


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


def _on_backend_change() -> None:
    """A newly picked backend starts loading at once, while the user uploads or draws."""
    run = current_run()
    if run is not None:
        warm(run.path, st.session_state.get(BACKEND_KEY, "keras"))
