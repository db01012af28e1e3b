"""Results: a run's test metrics, overfitting gap, curves, per-class scores, a clickable
confusion matrix with its gallery, the misclassified gallery, the most confused pairs, how well its
confidence is calibrated (reliability diagram, ECE before and after temperature scaling) and the 2-D
map of the test set in its feature space (click a point to see the image)."""

import numpy as np
import streamlit as st

from fmnist import calibration, charts, explore
from fmnist.data import CLASS_NAMES
from fmnist.evaluation import cell_items
from pages import _navigation, _resources, _selection, _session

_navigation.ensure_navigation()

GALLERY_COLUMNS = 8
MAX_TEST_INDEX = 9_999
ECE_HELP = ("Expected calibration error, 15 equal-width confidence bins: the answers' mean |accuracy − "
            "confidence| per bin, weighted by how many answers fall in it. 0% = perfectly calibrated.")


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
    for custom in charts.selected_customdata(event):
        if len(custom) >= 2:
            return int(custom[0]), int(custom[1])
    return None


def selected_item(event) -> int | None:
    """The test-set index of the point clicked on the map (its customdata's first value), if any."""
    for custom in charts.selected_customdata(event):
        if len(custom) >= 3:
            return int(custom[0])
    return None


def percent(value: float) -> str:
    return f"{value:.2%}"


def calibration_tab(run, probs: np.ndarray | None, labels: np.ndarray | None) -> None:
    """Reliability diagram and ECE (15 bins) of the run's test answers, before and after its temperature."""
    if probs is None or labels is None:
        st.info("Calibration needs the run's test probabilities and the test labels (the Fashion-MNIST "
                "data on this server).")
        return
    trust, problem = _resources.run_trust(run.path)
    if problem:
        st.error(problem)
    before = calibration.reliability_diagram(probs, labels)
    ece_before = calibration.expected_calibration_error(probs, labels)
    if trust is None:
        m = st.columns(3)
        m[0].metric("ECE as answered", percent(ece_before), help=ECE_HELP)
        if not problem:
            st.info("This run has no temperature yet (runs trained before calibration was added). Compute it once, "
                    "from its validation split, with the button below (on this server, in the background), or on the "
                    f"command line:\n\n`python -m fmnist.trust --run {run.path}`")
            _session.artifacts_panel(run, _resources.data_dir(), key="res_artifacts_calibration")
        st.plotly_chart(charts.reliability_figure(before), key="res_reliability")
        return
    temperature = float(trust.temperature)
    calibrated = calibration.apply_temperature(probs, temperature)
    after = calibration.reliability_diagram(calibrated, labels)
    ece_after = calibration.expected_calibration_error(calibrated, labels)
    m = st.columns(3)
    m[0].metric("ECE as answered", percent(ece_before), help=ECE_HELP)
    m[1].metric("ECE after temperature scaling", percent(ece_after),
                delta=f"{(ece_after - ece_before) * 100:+.2f} pts", delta_color="inverse", help=ECE_HELP)
    m[2].metric("Temperature T", f"{temperature:.3f}",
                help="The model's log-probabilities are divided by T before the softmax. T was fitted on the "
                     "validation split (never the test set) by minimising the negative log-likelihood.")
    modest = ("T is below 1: the model was too modest (it said 80% where it was right more often; label "
              "smoothing in training does this), so scaling makes it surer." if temperature < 1 else
              "T is above 1: the model was over-confident, so scaling makes it less sure.")
    st.markdown(
        "**What it means.** When the model says it is 90% sure, is it right about 9 times in 10? The expected "
        f"calibration error (ECE) is the average gap between the two over {calibration.ECE_BINS} confidence bins: "
        f"**{percent(ece_before)}** for its answers as they are, **{percent(ece_after)}** after temperature "
        f"scaling. {modest} The ranking of the classes does not change, so accuracy stays the same; only the "
        "percentages become honest enough to decide which answers to check by hand.")
    st.plotly_chart(charts.reliability_figure(before, after, temperature), key="res_reliability")
    st.caption(f"{len(labels):,} test images. Each dot is one confidence bin; its size grows with the number "
               "of answers in it (hover for the count). On the diagonal, confidence and accuracy agree.")


def map_tab(run, probs: np.ndarray | None, labels: np.ndarray | None, images: np.ndarray | None) -> None:
    """The run's 2-D map of test items (coloured by class, mistakes marked); a click shows the image."""
    fmap, problem = _resources.feature_map(run.path)
    if problem:
        st.error(problem)
        return
    if fmap is None:
        st.info("This run has no feature map yet (runs trained before the map was added). Compute it once with the "
                "button below (on this server, in the background: features through the model, then t-SNE, a few "
                f"minutes on 2 cores), or on the command line:\n\n`python -m fmnist.featuremap --run {run.path}`")
        _session.artifacts_panel(run, _resources.data_dir(), key="res_artifacts_map")
        return
    confidence = None
    if probs is not None and len(probs) > int(fmap.index.max(initial=0)):
        confidence = probs[fmap.index].max(axis=1)
    c1, c2 = st.columns([4, 1])
    picked = c1.pills("Classes", list(CLASS_NAMES), selection_mode="multi", default=list(CLASS_NAMES),
                      key="res_map_classes")
    mistakes_only = c2.toggle("Mistakes only", key="res_map_mistakes")
    classes = [CLASS_NAMES.index(name) for name in picked or []]
    st.caption(f"Each dot is one of {len(fmap.coords):,} test images, placed by t-SNE so that images the model "
               "sees as alike (its last hidden layer) sit close together; colour: the true class, black x: "
               f"the model's mistakes ({int(fmap.mistakes.sum()):,}). Near means alike; the distance between "
               "far-apart clusters means little. Click a dot to see the image; scroll or drag to zoom.")
    if not classes:
        st.info("Pick at least one class.")
        return
    placed = _session.placed_inputs(run.path)
    if placed:
        st.caption(f"Stars: this session's {len(placed)} input(s) from Classify ({', '.join(placed)}), placed among "
                   "their nearest test images.")
    event = st.plotly_chart(
        charts.feature_map_figure(fmap.coords, fmap.labels, fmap.predictions, fmap.index, confidence, classes,
                                  mistakes_only, placed=np.array(list(placed.values())) if placed else None,
                                  placed_names=list(placed)),
        key=f"res_map_{run.name}", on_select="rerun", selection_mode="points")
    item = selected_item(event)
    with st.expander("Or pick a test image by its number", expanded=False):
        last = len(images) - 1 if images is not None else MAX_TEST_INDEX
        typed = st.number_input("Test image #", min_value=0, max_value=max(last, 0), value=None, step=1,
                                key="res_map_pick")
        if item is None and typed is not None:
            item = int(typed)
    if item is not None:
        show_item(item, probs, labels, images)


def show_item(item: int, probs: np.ndarray | None, labels: np.ndarray | None, images: np.ndarray | None) -> None:
    """One test image enlarged, with its true label, the model's answer and its probabilities."""
    if images is None or labels is None or not 0 <= item < len(images):
        st.warning("The test images are not available (no Fashion-MNIST data on this server).")
        return
    true = int(labels[item])
    caption = f"Test image #{item}: true {CLASS_NAMES[true]}"
    if probs is not None:
        predicted = int(probs[item].argmax())
        caption += (f", predicted {CLASS_NAMES[predicted]} ({float(probs[item].max()):.0%}) · "
                    + ("right" if predicted == true else "a mistake"))
    c1, c2 = st.columns([1, 2])
    c1.image(explore.enlarge(images[item], 6), caption=caption)
    if probs is not None:
        c2.plotly_chart(charts.probability_bars(probs[item]), key="res_map_probs")


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

tab_curves, tab_confusion, tab_mistakes, tab_classes, tab_calibration, tab_map = st.tabs(
    ["Curves", "Confusion matrix", "Misclassified", "Per class", "Calibration", "Map"])

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

with tab_calibration:
    calibration_tab(run, probs, labels)

with tab_map:
    map_tab(run, probs, labels, test_images)
