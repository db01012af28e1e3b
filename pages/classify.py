"""Classify: upload photos or draw on a canvas; see each preprocessing step, the 28x28 input,
the probabilities of all 10 classes, the backend's latency and the pipeline's warnings."""

import re
import time

import numpy as np
import streamlit as st

from fmnist import charts, explore
from fmnist.data import CLASS_NAMES
from pages import _navigation, _resources, _selection

_navigation.ensure_navigation()

UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp"]


def predictor():
    """The sidebar's run and backend as a cached predictor, falling back to Keras with a note."""
    run = _selection.current_run()
    if run is None:
        st.info("No trained model yet: train one on the Train page (or install the shipped default model).")
        st.stop()
    name = _selection.current_backend()
    model, problem = _resources.backend(run.path, name)
    if model is None and name != "keras":
        st.warning(f"{problem}. Using Keras instead.")
        model, problem = _resources.backend(run.path, "keras")
    if model is None:
        st.error(problem)
        st.stop()
    return run, model


def predict(model, image28: np.ndarray) -> tuple[np.ndarray, float]:
    """Probabilities and the model call's own time in ms (a first use loads the backend before,
    shown as loading: it once read as "17184.2 ms" of latency)."""
    _resources.ensure_loaded(model)
    t0 = time.perf_counter()
    probs = np.asarray(model.predict_proba(image28[None]))[0]
    return probs, (time.perf_counter() - t0) * 1000


def show_prediction(prepared, model, key: str, show_steps: bool = True) -> None:
    """Steps, the model input, probability bars, top class, latency and warnings for one image."""
    for warning in prepared.warnings:
        st.warning(warning)
    if prepared.empty:
        return
    probs, ms = predict(model, prepared.input)
    top = int(probs.argmax())
    left, right = st.columns([1, 2])
    with left:
        st.image(explore.enlarge(prepared.input, 6), caption="Model input (28x28)")
        st.markdown(f"### {CLASS_NAMES[top]}")
        st.caption(f"{probs[top]:.1%} confident · {model.name} ({getattr(model, 'precision', '')}) "
                   f"on {getattr(model, 'device', 'CPU')}"
                   f"{' · averaged with its mirror image' if getattr(model, 'tta_flip', False) else ''} · {ms:.1f} ms")
    with right:
        st.plotly_chart(charts.probability_bars(probs), key=f"bars_{key}")
    if show_steps and prepared.steps:
        with st.expander("Preprocessing, step by step"):
            cols = st.columns(min(len(prepared.steps), 6), gap="medium")
            for i, (name, img) in enumerate(prepared.steps):
                cols[i % len(cols)].image(explore.fit_square(img, 112), caption=name, width=112)
            if prepared.decisions:
                st.markdown("**What the pipeline decided**")
                st.dataframe(explore.decision_rows(prepared.decisions), hide_index=True)


def shown_name(name: str) -> str:
    """An upload's name for display only (it is never used in a path): markdown characters escaped,
    control characters dropped, long names shortened."""
    name = "".join(ch for ch in str(name) if ch.isprintable())
    name = name if len(name) <= 80 else name[:60] + "..." + name[-17:]
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$:])", r"\\\1", name) or "(no name)"


def prepared_upload(f):
    """An upload through the photo pipeline once per session (a rerun for another upload or widget
    reuses it): a Prepared, or the message why the file cannot be used. Only its bytes are read."""
    from fmnist.preprocess import ImageError, prepare_photo_bytes

    cache = st.session_state.setdefault("prepared_uploads", {})
    if f.file_id not in cache:
        try:
            cache[f.file_id] = prepare_photo_bytes(f.getvalue())
        except ImageError as exc:
            cache[f.file_id] = str(exc)
        while len(cache) > 24:  # bounded: a long session of uploads does not grow memory
            cache.pop(next(iter(cache)))
    return cache[f.file_id]


@st.fragment
def drawing_panel(model) -> None:
    """Canvas and its prediction in a fragment: a stroke reruns only this part of the page."""
    try:
        from streamlit_drawable_canvas import st_canvas
    except Exception as exc:  # missing package or a component that cannot load
        st.error(f"The drawing canvas is not available ({type(exc).__name__}: {exc}).")
        return
    from fmnist.preprocess import ImageError, prepare_drawing

    c1, c2 = st.columns([3, 1])
    stroke = c1.slider("Stroke width", 4, 40, 18, key="draw_stroke")
    if c2.button("Clear", icon=":material/delete:", key="draw_clear"):
        st.session_state["canvas_version"] = st.session_state.get("canvas_version", 0) + 1
    left, right = st.columns([1, 2])
    with left:
        st.caption("Draw one item, light on dark like the data set: a shirt, a shoe, a bag...")
        result = st_canvas(stroke_width=stroke, stroke_color="#ffffff", background_color="#000000",
                           height=280, width=280, drawing_mode="freedraw", return_image_data=True,
                           update_streamlit=True, key=f"canvas_{st.session_state.get('canvas_version', 0)}")
    with right:
        data = getattr(result, "image_data", None) if result is not None else None
        if data is None:
            st.info("Draw on the canvas to see a prediction.")
            return
        try:
            prepared = prepare_drawing(np.asarray(data))
        except ImageError as exc:
            st.error(str(exc))
            return
        if prepared.empty:
            st.info("Draw on the canvas to see a prediction.")
            return
        show_prediction(prepared, model, "draw")


st.title("Classify")
run, model = predictor()
st.caption(f"Model **{run.label()}** with **{_resources.BACKEND_LABELS.get(model.name, model.name)}** "
           "(change both in the sidebar).")
tab_upload, tab_draw = st.tabs(["Upload photos", "Draw"])
with tab_upload:
    files = st.file_uploader("Images (PNG, JPEG, WebP)", type=UPLOAD_TYPES, accept_multiple_files=True,
                             key="upload_files", help="A photo of one item on a plain background works best.")
    if not files:
        st.info("Upload one or more photos of clothing, shoes or bags. Each is cropped, resized, centred and "
                "inverted the way the data set was made, and every step is shown.")
    if files:
        # the uploader's own chips show two rows and shortened names: every name here, in full
        st.dataframe([{"#": i + 1, "file": f.name, "size": f"{f.size / 1024:,.0f} KB"} for i, f in enumerate(files)],
                     hide_index=True, height=min(38 + 35 * len(files), 300),
                     column_config={"file": st.column_config.TextColumn(width="large")})
    for i, f in enumerate(files or []):
        st.divider()
        st.markdown(f"**{shown_name(f.name)}**")
        prepared = prepared_upload(f)
        if isinstance(prepared, str):
            st.error(f"{shown_name(f.name)}: {prepared}")
            continue
        show_prediction(prepared, model, f"upload{i}")
with tab_draw:
    drawing_panel(model)
