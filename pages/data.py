"""Data: samples per class, class counts per split, mean images, one item enlarged."""

import streamlit as st

from fmnist import charts, explore
from fmnist.data import CLASS_NAMES
from pages import _navigation, _resources

_navigation.ensure_navigation()

st.title("The data set")
ds = _resources.dataset()
if ds is None:
    st.stop()
st.caption(f"{len(ds.x_train):,} training and {len(ds.x_test):,} test images, 28x28 grey, 10 classes "
           f"(source: {ds.source}).")

left, right = st.columns([3, 2])
with left:
    st.subheader("Samples per class")
    c1, c2 = st.columns([2, 1])
    per_class = c1.slider("Samples per class", 4, 16, 10, key="data_per_class")
    if c2.button("Reshuffle", icon=":material/shuffle:", key="data_reshuffle"):
        st.session_state["data_seed"] = st.session_state.get("data_seed", 0) + 1
    grid, _ = explore.sample_grid(ds.x_train, ds.y_train, per_class, st.session_state.get("data_seed", 0))
    # class names drawn into the picture: they stay level with their rows at any width
    st.image(explore.label_rows(explore.enlarge(grid, 3), CLASS_NAMES, pitch=30 * 3, tile=28 * 3), clamp=True)
with right:
    st.subheader("Class counts")
    val_fraction = st.slider("Validation fraction", 0.0, 0.5, 0.1, 0.05, key="data_val_fraction",
                             help="The validation split is carved out of the training set; "
                                  "the test set is only used for the final report.")
    counts = explore.class_counts(ds, val_fraction)
    st.plotly_chart(charts.class_count_figure(counts))

st.subheader("Mean image per class")
means = explore.mean_images(ds.x_train, ds.y_train)
cols = st.columns(10)
for i, col in enumerate(cols):
    col.image(explore.enlarge(explore.to_uint8(means[i]), 3), caption=CLASS_NAMES[i], clamp=True)

st.subheader("One item, enlarged")
c1, c2, c3 = st.columns([1, 1, 3])
split = c1.radio("Split", explore.SPLITS, horizontal=True, key="data_split")
size = len(ds.x_train if split == "train" else ds.x_test)
index = c2.number_input(f"Index (0-{size - 1})", 0, size - 1, 0, step=1, key="data_index")
try:
    image, label, name = explore.get_item(ds, split, int(index))
except ValueError as exc:
    st.error(str(exc))
else:
    c3.image(explore.enlarge(image, 10), caption=f"{split} #{int(index)}: {name} (label {label})")
