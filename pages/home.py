"""Home: what the studio does and where to start."""

import streamlit as st

from pages import _navigation, _selection

_navigation.ensure_navigation()

st.title("Fashion-MNIST Studio")
st.markdown(
    "Train a convolutional network on Fashion-MNIST, watch it learn live, look inside its mistakes, "
    "try it on your own photos and drawings, and compare Keras with OpenVINO on this CPU."
)
run = _selection.current_run()
if run is not None:
    acc = run.summary.get("test_accuracy")
    st.success(f"Current model: **{run.label()}**" + ("" if acc is None else " — ready to classify."))
else:
    st.info("No trained model yet. Start on the Train page: the *fast* preset takes a few minutes.")

cols = st.columns(3)
with cols[0]:
    st.markdown("#### Learn")
    st.page_link("pages/data.py", label="Browse the data set", icon=":material/grid_view:")
    st.page_link("pages/train.py", label="Train a model live", icon=":material/model_training:")
with cols[1]:
    st.markdown("#### Inspect")
    st.page_link("pages/results.py", label="Accuracy, confusion matrix, mistakes", icon=":material/insights:")
    st.page_link("pages/compare.py", label="Compare runs and backends", icon=":material/compare:")
with cols[2]:
    st.markdown("#### Try it")
    st.page_link("pages/classify.py", label="Classify a photo or a drawing", icon=":material/image_search:")
