"""Results: a run's test metrics, overfitting gap, curves, per-class scores, a clickable
confusion matrix with its gallery, the misclassified gallery and the most confused pairs."""

import numpy as np
import streamlit as st

from fmnist import charts, explore
from fmnist.data import CLASS_NAMES
from fmnist.evaluation import cell_items
from pages import _navigation, _resources, _selection

_navigation.ensure_navigation()

GALLERY_COLUMNS = 8


def gallery(items: list[dict], images: np.ndarray | None, limit: int, key: str) -> None:
    """Test images with true and predicted class and confidence, in a grid."""
    if not items:
        st.info("No images here.")
        return
    if images is None:
        st.warning("The test images are not available (no Fashion-MNIST data on this server).")
        return
    pages = -(-len(items) // limit)
    page = st.number_input(f"Page (of {pages})", 1, pages, 1, key=f"{key}_page") if pages > 1 else 1
    shown, page, pages = explore.page_of(items, page, limit)
    first = (page - 1) * limit
    st.caption(f"Showing {len(shown)} of {len(items)}"
               + (f" (images {first + 1:,}-{first + len(shown):,}, page {page} of {pages})." if pages > 1 else "."))
    for start in range(0, len(shown), GALLERY_COLUMNS):
        cols = st.columns(GALLERY_COLUMNS)
        for col, item in zip(cols, shown[start:start + GALLERY_COLUMNS]):
            col.image(explore.enlarge(images[item["index"]], 3),
                      caption=f"#{item['index']} {CLASS_NAMES[item['true']]} → "
                              f"{CLASS_NAMES[item['predicted']]} ({item['confidence']:.0%})")


def selected_cell(event) -> tuple[int, int] | None:
    """(true, predicted) from a plotly selection event on the confusion matrix, if any."""
    try:
        points = event.selection.points if hasattr(event, "selection") else event["selection"]["points"]
    except (KeyError, TypeError, AttributeError):
        return None
    for point in points or []:
        custom = point.get("customdata")
        if custom is not None and len(custom) >= 2:
            return int(custom[0]), int(custom[1])
    return None


st.title("Results")
run = _selection.current_run()
if run is None:
    st.info("No trained model yet: train one on the Train page (the shipped default model appears here "
            "once it is installed).")
    st.stop()
files = _resources.load_run_files(run.path)
metrics, history, probs = files["metrics"], files["history"], files["probs"]
st.caption(f"Run **{run.label()}** · status {run.status}" + (f" · {run.summary.get('message')}"
                                                              if run.summary.get("message") else ""))
if metrics is None:
    st.error("This run has no test metrics (metrics.json is missing).")
    st.stop()

ds = _resources.dataset()
test_images = ds.x_test if ds is not None else None
labels = ds.y_test if ds is not None else None
if probs is not None and labels is not None and len(probs) != len(labels):
    st.warning(f"This run's test probabilities cover {len(probs):,} images but the test set here has "
               f"{len(labels):,}; galleries are off.")
    probs = None

train_acc, val_acc = run.summary.get("train_accuracy"), run.summary.get("best_val_accuracy")
m = st.columns(5)
m[0].metric("Test accuracy", f"{metrics['test_accuracy']:.2%}")
m[1].metric("Test loss", f"{metrics['test_loss']:.4f}")
m[2].metric("Train accuracy", f"{train_acc:.2%}" if isinstance(train_acc, float) else "n/a")
m[3].metric("Validation accuracy", f"{val_acc:.2%}" if isinstance(val_acc, float) else "n/a")
if isinstance(train_acc, float) and isinstance(val_acc, float):
    gap = train_acc - val_acc
    m[4].metric("Train − val gap", f"{gap * 100:.2f} pts",
                help="Train accuracy minus validation accuracy. "
                     "The report's overfitting story: 99.28% train vs 91.15% validation (8.1 points). "
                     "A large gap means the model memorises the training set.")
    if gap > 0.04:
        st.warning(f"Overfitting: {train_acc:.2%} on training images vs {val_acc:.2%} on validation. "
                   "Dropout, augmentation or fewer epochs narrow the gap.")

tab_curves, tab_confusion, tab_mistakes, tab_classes = st.tabs(
    ["Curves", "Confusion matrix", "Misclassified", "Per class"])

with tab_curves:
    epochs = [e for e in (history or {}).get("epochs", []) if not e.get("partial")] or \
        (history or {}).get("epochs", [])
    if epochs:
        c1, c2 = st.columns(2)
        c1.plotly_chart(charts.epoch_figure(epochs, "accuracy"), key="res_acc")
        c2.plotly_chart(charts.epoch_figure(epochs, "loss"), key="res_loss")
    else:
        st.info("This run has no training history.")

with tab_confusion:
    c1, c2 = st.columns([1, 3])
    normalise = c1.toggle("Normalise rows", key="res_normalise", help="Show each row as a share of its true class.")
    c2.caption("Click a cell to see exactly those test images (true class → predicted class).")
    matrix = np.asarray(metrics["confusion_matrix"])
    event = st.plotly_chart(charts.confusion_figure(matrix, normalise), key=f"res_confusion_{run.name}",
                            on_select="rerun", selection_mode="points")
    cell = selected_cell(event)
    with st.expander("Or pick a cell", expanded=False):
        p1, p2 = st.columns(2)
        pick_true = p1.selectbox("True class", ["-", *CLASS_NAMES], key="res_pick_true")
        pick_pred = p2.selectbox("Predicted as", ["-", *CLASS_NAMES], key="res_pick_pred")
        if cell is None and pick_true != "-" and pick_pred != "-":
            cell = (CLASS_NAMES.index(pick_true), CLASS_NAMES.index(pick_pred))
    if cell is not None:
        t, p = cell
        st.subheader(f"True {CLASS_NAMES[t]} predicted as {CLASS_NAMES[p]}: {int(matrix[t, p]):,} images")
        if probs is None or labels is None:
            st.warning("The gallery needs the run's test probabilities and the test images.")
        else:
            gallery(cell_items(probs, labels, t, p), test_images, 48, "cell")

with tab_mistakes:
    wrong = metrics.get("misclassified", [])
    c1, c2, c3 = st.columns(3)
    cls = c1.selectbox("True class", ["all", *CLASS_NAMES], key="res_mis_class")
    order = c2.radio("Sort by confidence", ["most confident first", "least confident first"], key="res_mis_order")
    limit = c3.slider("Show", 8, 96, 32, 8, key="res_mis_limit")
    items = [w for w in wrong if cls == "all" or w["true"] == CLASS_NAMES.index(cls)]
    items = sorted(items, key=lambda w: w["confidence"], reverse=order.startswith("most"))
    st.caption(f"{len(wrong):,} of {metrics['n_test']:,} test images are misclassified.")
    gallery(items, test_images, limit, "mis")
    st.subheader("Most confused pairs")
    pairs = metrics.get("confused_pairs", [])
    if pairs:
        st.dataframe([{"true": pr["true_name"], "predicted as": pr["predicted_name"], "images": pr["count"]}
                      for pr in pairs], hide_index=True)

with tab_classes:
    per_class = metrics.get("per_class", [])
    st.plotly_chart(charts.per_class_figure(per_class), key="res_per_class")
    st.dataframe([{"class": r["name"], "precision": r["precision"], "recall": r["recall"], "F1": r["f1"],
                   "support": r["support"]} for r in per_class], hide_index=True,
                 column_config={k: st.column_config.NumberColumn(format="%.3f")
                                for k in ("precision", "recall", "F1")})
