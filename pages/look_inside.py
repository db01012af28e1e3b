"""Look inside: what the network sees in one image (issue 14), in the spirit of CNN Explainer: the
first layer's filters, then the feature maps of every convolutional stage, layer by layer. The image
is a test item, this session's drawing or uploads from Classify, or a new upload. The sidebar's
backend computes the maps (the Keras worker or OpenVINO's inspection model: the server never imports
TensorFlow); they are cached per session and image."""

import hashlib

import numpy as np
import streamlit as st

from fmnist import explore
from fmnist.data import CLASS_NAMES
from pages import _navigation, _resources, _selection

_navigation.ensure_navigation()

FROM_CLASSIFY = "look_inside_images"  # pages/classify.py keeps this session's drawing and uploads here
CACHE_KEY = "look_inside_cache"
KEEP = 12
SOURCES = ["Test image", "From Classify", "Upload"]


def pick_image():
    """(28x28 image, a short description) from the chosen source, or (None, None) after saying why."""
    source = st.radio("Image", SOURCES, horizontal=True, key="look_source")
    if source == "Test image":
        dataset = _resources.dataset()
        if dataset is None:
            return None, None
        index = st.number_input("Test image index", 0, len(dataset.x_test) - 1, 0, key="look_index")
        image, _, name = explore.get_item(dataset, "test", int(index))
        return image, f"test #{int(index)} (labelled {name})"
    if source == "From Classify":
        kept = st.session_state.get(FROM_CLASSIFY) or {}
        if not kept:
            st.info("Nothing from Classify yet: draw or upload there first, then come back.")
            return None, None
        names = list(kept)[::-1]  # newest first
        chosen = st.selectbox("Drawing or upload", names, key="look_pick")
        return kept[chosen], chosen
    upload = st.file_uploader("A photo (PNG, JPEG, WebP)", type=["png", "jpg", "jpeg", "webp"], key="look_upload")
    if upload is None:
        st.info("Upload a photo of one item; it goes through the same pipeline as on Classify.")
        return None, None
    from fmnist.preprocess import ImageError, prepare_photo_bytes

    try:
        prepared = prepare_photo_bytes(upload.getvalue())
    except ImageError as exc:
        st.error(str(exc))
        return None, None
    for warning in prepared.warnings:
        st.warning(warning)
    if prepared.empty:
        return None, None
    return prepared.input, "your upload"


def inside(model, run, image: np.ndarray):
    """(answer probabilities, stages, filters) for the image through the backend, once per session,
    image, run and backend; or a sentence why not."""
    digest = hashlib.sha1(np.ascontiguousarray(image, dtype=np.float32).tobytes()).hexdigest()
    key = (digest, str(run.path), model.name)
    cache = st.session_state.setdefault(CACHE_KEY, {})
    if key not in cache:
        try:
            with st.spinner("Computing the feature maps..."):
                _resources.ensure_loaded(model)
                cache[key] = (np.asarray(model.predict_proba(np.asarray(image)[None]))[0],
                              model.stage_activations(image), model.first_layer_filters())
        except Exception as exc:  # BackendError, a backend without the methods...: one line
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            cache[key] = f"{_resources.BACKEND_LABELS.get(model.name, model.name)} cannot show its feature maps: {first}"
        while len(cache) > KEEP:
            cache.pop(next(iter(cache)))
    return cache[key]


st.title("Look inside")
run, model = _selection.current_predictor()
label = _resources.BACKEND_LABELS.get(model.name, model.name)
st.caption(f"Model **{run.label()}**; the maps are computed by **{label}** (change both in the sidebar). "
           "Each convolutional stage turns the image into many feature maps: bright = the filter found its "
           "pattern there. Early stages see edges and strokes, later ones larger parts at lower resolution.")
image, described = pick_image()
if image is not None:
    found = inside(model, run, image)
    if isinstance(found, str):
        st.error(found)
        st.stop()
    from fmnist.explanations import feature_grid, filter_grid, strongest_maps

    probs, stages, filters = found
    top = int(np.argmax(probs))
    left, right = st.columns([1, 3], gap="large")
    with left:
        st.image(explore.enlarge(image, 6), caption=f"Input (28x28): {described}")
        st.markdown(f"**{label} answers {CLASS_NAMES[top]}**")
        st.caption("Classify shows its calibrated probability and where it looked.")
        show_all = st.toggle("Show every map", value=False, key="look_all",
                             help="Off: the 24 most active maps of each stage, strongest first.")
    with right:
        st.markdown(f"**First layer's {len(filters)} filters** ({filters.shape[1]}x{filters.shape[2]} pixels each)")
        st.image(filter_grid(filters, columns=min(len(filters), 12), tile=36),
                 caption="Red = positive weight, blue = negative; each filter on its own scale. The first stage "
                         "slides each one over the image.")
        flow = " → ".join(["input 1@28x28"] + [f"{s['name']} {s['maps'].shape[0]}@{s['maps'].shape[1]}x"
                                                f"{s['maps'].shape[2]}" for s in stages])
        st.caption(f"Stages: {flow}")
    st.divider()
    for i, stage in enumerate(stages, start=1):
        maps = stage["maps"]
        channels = strongest_maps(maps, None if show_all else 24)
        st.markdown(f"**{i}. {stage['name']}** · {stage['kind']} · {len(maps)} maps of {maps.shape[1]}x{maps.shape[2]}"
                    + ("" if show_all or len(channels) == len(maps) else f" (the {len(channels)} most active shown)"))
        st.image(feature_grid(maps, channels, columns=24 if maps.shape[1] <= 7 else 12,
                              tile=28 if maps.shape[1] <= 7 else 56),
                 caption=f"{stage['name']}: one colour scale for the stage (black = 0, pale yellow = "
                         f"{float(maps.max()):.2f}, its largest value)")
