"""Read-only resources every session shares, cached once per server: the dataset, the list of runs,
each run's files, and the predictors. Heavy modules load inside the functions."""

from __future__ import annotations

import os
import time
from pathlib import Path

import streamlit as st

from fmnist import runs as fruns

BACKEND_LABELS = {"keras": "Keras (TensorFlow)", "openvino-fp32": "OpenVINO FP32", "openvino-int8": "OpenVINO INT8",
                  "remote": "Remote (KServe v2)"}


def serving_url() -> str | None:
    """The KServe v2 endpoint the remote backend answers through (FMNIST_SERVING_URL), or None."""
    from fmnist.remote import serving_url as configured

    return configured()


def backend_names() -> list[str]:
    """The backends the sidebar offers: the local ones, and "remote" when a serving URL is set."""
    from fmnist.backends import BACKENDS

    return list(BACKENDS) + (["remote"] if serving_url() else [])


def backend_label(name: str) -> str:
    """A backend's name for people; the remote one names its endpoint."""
    label = BACKEND_LABELS.get(name, name)
    url = serving_url() if name == "remote" else None
    return f"Remote (KServe v2: {url})" if url else label


def with_remote_hint(message: str, run_dir: Path | None = None) -> str:
    """A remote backend's failure with what to do here: the command that serves this run at the
    configured URL, or a local backend."""
    from urllib.parse import urlsplit

    try:
        port = urlsplit(serving_url() or "").port
    except ValueError:
        port = None
    run = "" if run_dir is None or Path(run_dir).resolve() == fruns.DEFAULT_MODEL_DIR.resolve() else \
        f" --run {Path(run_dir).name}"
    command = f"python -m fmnist serve{run}" + (f" --port {port}" if port else "")
    return f"{message.rstrip('.')}. To serve this run there: `{command}`. Or pick a local backend in the sidebar."


def runs_dir() -> Path:
    return fruns.runs_root()


def data_dir() -> str | None:
    return os.environ.get("FMNIST_DATA_DIR") or None


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
            stamps.extend(p.stat().st_mtime_ns for p in folder.glob(f"*/{fruns.MANIFEST}"))
            stamps.extend(p.stat().st_mtime_ns for p in folder.glob(fruns.MANIFEST))
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


def manifest_stamp(run_dir: Path) -> tuple:
    try:
        return ((Path(run_dir) / fruns.MANIFEST).stat().st_mtime_ns,)
    except OSError:
        return (0,)


@st.cache_resource(max_entries=6, show_spinner="Loading the model...")
def _backend_cached(run_dir: str, name: str, stamp: tuple):
    from fmnist.backends import get_backend

    # isolated: Keras answers from a worker process, so the server never imports TensorFlow (once it
    # has, Streamlit runs keras.backend.clear_session() after every rerun of every session)
    return get_backend(run_dir, name, isolated=True)


def backend(run_dir: Path, name: str):
    """A cached predictor shared by all sessions (backends guard their own state with a lock).
    Returns (backend, None) or (None, message). The remote one is kept per serving URL."""
    try:
        stamp = ((Path(run_dir) / fruns.MANIFEST).stat().st_mtime_ns,) + ((serving_url(),) if name == "remote" else ())
        return _backend_cached(str(run_dir), name, stamp), None
    except Exception as exc:  # BackendError, RunError, missing export...: all shown as one message
        message = f"{backend_label(name)} is not available for this run: {exc}"
        return None, with_remote_hint(message, Path(run_dir)) if name == "remote" else message


@st.cache_resource(show_spinner=False)
def _loaded_backends() -> set:
    return set()


def ensure_loaded(model) -> None:
    """Make the first call of a backend in this server outside any latency figure: it loads the
    model (Keras: starts its worker and imports TensorFlow, seconds), shown as loading."""
    loaded = _loaded_backends()
    if id(model) in loaded:
        return
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
    return run_files(str(run_dir), manifest_stamp(run_dir))


@st.cache_resource(max_entries=6, show_spinner="Loading the run's trust artifacts...")
def _trust_cached(run_dir: str, stamp: tuple):
    from fmnist import trust

    return trust.load(run_dir) if trust.has_trust(run_dir) else None


def run_trust(run_dir: Path):
    """A run's verified trust artifacts (fmnist.trust: temperature, thresholds, reference), loaded once
    per server and again when the run's manifest changes. Returns (Trust or None when the run has
    none, None) or (None, the one-line reason they were refused)."""
    from fmnist.trust import TrustError

    try:
        return _trust_cached(str(run_dir), manifest_stamp(run_dir)), None
    except TrustError as exc:
        return None, str(exc)


@st.cache_resource(max_entries=6, show_spinner="Loading the feature map...")
def _feature_map_cached(run_dir: str, stamp: tuple):
    from fmnist import featuremap

    return featuremap.load(run_dir)


def feature_map(run_dir: Path):
    """A run's verified 2-D map (fmnist.featuremap), loaded once per server and again when the run's
    manifest changes. Returns (FeatureMap or None when the run has none, None) or (None, the one-line
    reason it was refused)."""
    from fmnist.featuremap import MapError

    try:
        return _feature_map_cached(str(run_dir), manifest_stamp(run_dir)), None
    except MapError as exc:
        return None, str(exc)
