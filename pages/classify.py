"""Classify: upload photos or draw on a canvas; see each preprocessing step, the 28x28 input,
the probabilities of all 10 classes, the backend's latency and the pipeline's warnings. And why
(issue 14): the calibrated probability, a heat map of where the model looked, the nearest training
images in its feature space, and a warning when the input looks like none of the ten items. The
explanations come from fmnist.explanations through the sidebar's backend (the Keras worker or
OpenVINO: the server never imports TensorFlow), cached per session and image."""

import hashlib
import re
import time

import numpy as np
import streamlit as st

from fmnist import charts, explore
from fmnist.data import CLASS_NAMES
from fmnist.predictor import views_text
from pages import _navigation, _resources, _selection, _session

_navigation.ensure_navigation()

UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp"]
NEIGHBOURS = 5
EXPLAIN_KEY = "explanations"  # session cache: image and model -> Explanation (or why there is none)
LOOK_INSIDE_KEY = "look_inside_images"  # this session's drawing and uploads, for the Look inside page
KEEP = 24  # entries per session cache: a long session of uploads does not grow memory


def predict(model, image28: np.ndarray) -> tuple[np.ndarray, float]:
    """Probabilities and the model call's own time in ms (a first use loads the backend before,
    shown as loading: it once read as "17184.2 ms" of latency)."""
    _resources.ensure_loaded(model)
    t0 = time.perf_counter()
    probs = np.asarray(model.predict_proba(image28[None]))[0]
    return probs, (time.perf_counter() - t0) * 1000


def answer_failed(model, run, exc: Exception) -> None:
    """A backend that could not answer (the remote server stopped, a timeout...): one clear line
    with what to do, never a traceback."""
    first = (str(exc).splitlines() or [type(exc).__name__])[0][:400]
    message = f"{'Remote backend' if model.name == 'remote' else _resources.backend_label(model.name)}: {first}"
    st.error(_resources.with_remote_hint(message, run.path) if model.name == "remote" else message,
             icon=":material/cloud_off:")


def run_trust(run):
    """(the run's verified trust artifacts, None) or (None, the sentence shown instead), from the
    server's shared cache (pages/_resources.py)."""
    from fmnist.explanations import trust_note

    trust, refused = _resources.run_trust(run.path)
    return (trust, None) if trust is not None else (None, trust_note(run.path, refused))


@st.cache_resource(show_spinner=False)
def _explainers_ready() -> set:
    return set()


def explained(model, run, image: np.ndarray):
    """The image's Explanation through `model`, or a sentence why there is none; once per session,
    image, run and backend (a rerun for another widget reuses it)."""
    from fmnist.explanations import explain_image

    trust, note = run_trust(run)
    fmap, _ = _resources.feature_map(run.path)  # a refused map: no placement (Results says why)
    digest = hashlib.sha1(np.ascontiguousarray(image, dtype=np.float32).tobytes()).hexdigest()
    key = (digest, str(run.path), _resources.manifest_stamp(run.path), model.name, bool(getattr(model, "tta_flip", False)),
           int(getattr(model, "tta_shift", 0)))
    cache = st.session_state.setdefault(EXPLAIN_KEY, {})
    if key not in cache:
        gradcam = model.name == "keras"
        ready = _explainers_ready()
        try:
            if id(model) not in ready:  # the first explanation builds and traces models: not timed
                with st.spinner("Preparing explanations (first use on this server)..."):
                    explain_image(model, np.zeros((28, 28), np.float32), trust, NEIGHBOURS, gradcam, note, fmap=fmap)
                ready.add(id(model))
            cache[key] = explain_image(model, image, trust, NEIGHBOURS, gradcam, note, fmap=fmap)
        except Exception as exc:  # BackendError, an OpenVINO runtime error...: one line, no traceback
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            cache[key] = f"No explanation for this image: {first}"
        while len(cache) > KEEP:
            cache.pop(next(iter(cache)))
    return cache[key]


def remember_for_look_inside(name: str, image: np.ndarray) -> None:
    """Offer this image on the Look inside page (newest last, bounded)."""
    images = st.session_state.setdefault(LOOK_INSIDE_KEY, {})
    images.pop(name, None)
    images[name] = np.asarray(image)
    while len(images) > KEEP:
        images.pop(next(iter(images)))


def data_at_hand() -> bool:
    """Whether the Fashion-MNIST training images are on this machine (never downloads for a thumbnail)."""
    from fmnist.data import resolve_data_dir

    folder, _ = resolve_data_dir(_resources.data_dir())
    return any((folder / name).is_file() for name in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"))


def show_neighbours(nearest: list[dict]) -> None:
    """The nearest training images with their labels and distances (labels only without the data)."""
    st.markdown("**Nearest training images** (in the model's own feature space)")
    dataset = _resources.dataset() if data_at_hand() else None
    cols = st.columns(len(nearest))
    for col, item in zip(cols, nearest):
        caption = f"{CLASS_NAMES[item['label']]} · {item['distance']:.2f}"
        if dataset is not None:
            col.image(explore.enlarge(dataset.x_train[item["index"]], 3), caption=caption,
                      width="stretch")
        else:
            col.caption(caption)
    st.caption("Distance in the model's feature space: smaller = more alike to the model"
               + ("" if dataset is not None else "; the pictures need the Fashion-MNIST files (FMNIST_DATA_DIR)")
               + ".")


def show_on_map(run, found, source: str, key: str) -> None:
    """Where the image sits among the test images on the run's feature map (a star), kept for the
    Results page's Map tab too."""
    if found.position is None:
        return
    _session.remember_placed(run.path, source, found.position)
    fmap, _ = _resources.feature_map(run.path)
    with st.expander("Where it sits among the test images (feature map)", expanded=False):
        st.caption("The star is this image, placed among its nearest test images in the model's feature space; "
                   "dots are test images coloured by their true class, black x the model's mistakes. "
                   "Results → Map shows the same map with every input of this session.")
        st.plotly_chart(charts.feature_map_figure(fmap.coords, fmap.labels, fmap.predictions, fmap.index,
                                                  placed=found.position[None], placed_names=[source], height=480),
                        key=f"map_{key}")


def show_explanation(model, run, image: np.ndarray, alert, source: str = "input", key: str = "x") -> None:
    """Heat map, Grad-CAM (Keras), neighbours and the unfamiliar warning (in `alert`, above the answer)."""
    from fmnist.explanations import heat_overlay

    found = explained(model, run, image)
    if isinstance(found, str):
        st.warning(found)
        return
    name = CLASS_NAMES[found.label]
    if found.unfamiliar:
        alert.warning(f"**This does not look like any of the ten Fashion-MNIST items** (unfamiliar score "
                      f"{found.unfamiliar_score:.2f}; above 1.00 is unfamiliar). The answer below is a guess: "
                      "check it by hand.", icon=":material/help:")
    maps = [(found.heatmap, "Where it looked (occlusion)")]
    if found.gradcam is not None:
        maps.append((found.gradcam, "Grad-CAM (Keras)"))
    cols = st.columns([1] * len(maps) + [4 - len(maps) + 1], gap="medium")
    for col, (heat, caption) in zip(cols, maps):
        col.image(heat_overlay(image, heat, scale=6), caption=caption, width="stretch")
    with cols[-1]:
        if found.nearest:
            show_neighbours(found.nearest)
        else:
            st.caption("No nearest training images: this run has no trust artifacts.")
    st.caption(f"Heat map: red = evidence for {name} (hiding those pixels lowers its probability), "
               f"blue = evidence against it."
               + (f" Grad-CAM: red = where a late convolutional stage's features raise the {name} score." if found.gradcam
                  is not None else "") + f" Explained by {model.name} in "
               f"{sum(found.seconds.values()) * 1000:.0f} ms"
               + (f" · unfamiliar score {found.unfamiliar_score:.2f} (above 1.00 is unfamiliar)"
                  if found.unfamiliar_score is not None else "") + ".")
    for note in found.notes:
        st.info(note)
    show_on_map(run, found, source, key)


def show_prediction(prepared, model, key: str, run, source: str, show_steps: bool = True) -> None:
    """Steps, the model input, probability bars (calibrated where the run can), top class, latency,
    warnings, and the explanation row, for one image."""
    from fmnist.calibration import apply_temperature

    for warning in prepared.warnings:
        st.warning(warning)
    if prepared.empty:
        return
    from fmnist.predictor import BackendError

    try:
        probs, ms = predict(model, prepared.input)
    except BackendError as exc:
        answer_failed(model, run, exc)
        return
    trust, _ = run_trust(run)
    shown = apply_temperature(probs[None], trust.temperature)[0] if trust is not None else probs
    top = int(shown.argmax())
    alert = st.container()  # the unfamiliar warning, above the answer once the explanation knows
    left, right = st.columns([1, 2])
    with left:
        st.image(explore.enlarge(prepared.input, 6), caption="Model input (28x28)")
        st.markdown(f"### {CLASS_NAMES[top]}")
        st.caption(f"{shown[top]:.1%} {'calibrated probability' if trust is not None else 'confident (not calibrated)'}"
                   f" · {model.name} ({getattr(model, 'precision', '')}) on {getattr(model, 'device', 'CPU')}"
                   f"{views_caption(model)} · {ms:.1f} ms")
    with right:
        st.plotly_chart(charts.probability_bars(shown), key=f"bars_{key}")
    remember_for_look_inside(source, prepared.input)
    show_explanation(model, run, prepared.input, alert, source, key)
    if show_steps and prepared.steps:
        with st.expander("Preprocessing, step by step"):
            cols = st.columns(min(len(prepared.steps), 6), gap="medium")
            for i, (name, img) in enumerate(prepared.steps):
                cols[i % len(cols)].image(explore.fit_square(img, 112), caption=name, width=112)
            if prepared.decisions:
                st.markdown("**What the pipeline decided**")
                st.dataframe(explore.decision_rows(prepared.decisions), hide_index=True)


def views_caption(model) -> str:
    """" · averaged ..." for a backend answering over test-time views, else ""."""
    text = views_text(bool(getattr(model, "tta_flip", False)), int(getattr(model, "tta_shift", 0)))
    return f" · {text}" if text else ""


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
def drawing_panel(model, run) -> None:
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
        show_prediction(prepared, model, "draw", run, "Drawing")


def missing_bundles() -> None:
    """For a run trained before calibration and the feature map existed: say so once, with the button
    that computes both in the background (the explanations below then gain them)."""
    from fmnist.jobs import missing_artifacts

    _, refused = _resources.run_trust(run.path)
    missing = missing_artifacts(run.path)
    if refused or not missing:
        return
    what = {"trust": "no calibration and no unfamiliar-input check", "map": "no feature map"}
    st.info(f"This run has {' and '.join(what[m] for m in missing)} yet (trained before they were added): "
            "compute them once, in the background on this server.", icon=":material/info:")
    _session.artifacts_panel(run, _resources.data_dir(), key="classify_artifacts")


st.title("Classify")
run, model = _selection.current_predictor()
st.caption(f"Model **{run.label()}** with **{_resources.backend_label(model.name)}** "
           "(change both in the sidebar). Under each answer: where the model looked and the training images "
           "it finds most alike; **Look inside** shows its feature maps layer by layer.")
missing_bundles()
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
        show_prediction(prepared, model, f"upload{i}", run, f"Upload: {f.name}")
with tab_draw:
    drawing_panel(model, run)
