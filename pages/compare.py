"""Compare: a sortable table of runs, selected runs' curves overlaid, and one run's backends
side by side (accuracy, agreement, latency p50/p95, throughput), measured on demand."""

import streamlit as st

from fmnist import charts
from fmnist.measure import measure_backends_isolated, side_by_side
from fmnist.runs import run_row
from pages import _navigation, _resources, _selection

_navigation.ensure_navigation()


def percent(value) -> float | None:
    """A fraction as a percentage number, shown with two decimals like every page."""
    return round(value * 100, 2) if isinstance(value, (int, float)) else None


def run_rows(runs) -> list[dict]:
    """The runs table: fmnist.runs.run_row under the page's column names, accuracies in percent."""
    rows = []
    for r in map(run_row, runs):
        rows.append({
            "run": r["name"], "configuration": r["configuration"], "training set": r["training_set"],
            "epochs": r.get("epochs_done"), "test accuracy": percent(r.get("test_accuracy")),
            "validation accuracy": percent(r.get("best_val_accuracy")), "architecture": r["arch"],
            "parameters": r.get("params"), "training time (s)": r.get("seconds"), "images/s": r.get("images_per_s"),
            "status": r["status"] + (f" ({r['reason']})" if r["reason"] else ""),
        })
    return rows


st.title("Compare")
runs = _resources.all_runs()
if not runs:
    st.info("No runs yet: train one on the Train page.")
    st.stop()
st.subheader("Runs")
st.caption("Click a column header to sort; hover a header for its full meaning. A preset "
           "whose settings were changed is named with the changes, e.g. \"fast (custom: epochs 5)\".")
# Short headers (full meaning in each column's help) so that every column fits beside the sidebar.
st.dataframe(run_rows(runs), hide_index=True, key="cmp_runs_table", column_config={
    "run": st.column_config.TextColumn(pinned=True),
    "configuration": st.column_config.TextColumn(width="medium"),
    "training set": st.column_config.NumberColumn("train set", format="localized", help="Training images (a "
                                                  "stratified subset when smaller than 60,000), validation included"),
    "validation accuracy": st.column_config.NumberColumn("val. acc.", format="%.2f%%",
                                                         help="Validation accuracy of the saved epoch"),
    "test accuracy": st.column_config.NumberColumn("test acc.", format="%.2f%%", help="Test accuracy"),
    "architecture": st.column_config.TextColumn("arch."),
    "parameters": st.column_config.NumberColumn("params", format="localized", help="Trainable parameters"),
    "training time (s)": st.column_config.NumberColumn("time (s)", format="%.0f", help="Training time in seconds"),
    "images/s": st.column_config.NumberColumn("img/s", format="%.0f", help="Training throughput")})

usable = [r for r in runs if r.usable]
names = [r.name for r in usable]
st.subheader("Curves")
chosen = st.multiselect("Runs to overlay", names, default=names[:3], key="cmp_runs")
metric = st.radio("Metric", ["val_accuracy", "accuracy", "val_loss", "loss"], horizontal=True, key="cmp_metric",
                  format_func=lambda m: m.replace("val_", "validation ").replace("_", " "))
series = {}
for r in usable:
    if r.name in chosen:
        history = _resources.load_run_files(r.path)["history"] or {}
        series[r.name] = [e for e in history.get("epochs", []) if not e.get("partial")]
if series:
    st.plotly_chart(charts.overlay_figure(series, metric), key="cmp_overlay")

st.subheader("Backends side by side")
st.caption("Keras vs OpenVINO FP32 vs OpenVINO INT8 on the test set: accuracy, agreement with Keras, "
           "single-image latency and batch throughput on this CPU.")
if not names:
    st.stop()
c1, c2, c3 = st.columns([2, 1, 1])
bench_run = c1.selectbox("Run", names, key="cmp_bench_run",
                         index=names.index(st.session_state.get(_selection.RUN_KEY)) if
                         st.session_state.get(_selection.RUN_KEY) in names else 0)
n_images = c2.select_slider("Test images", [500, 1000, 2000, 5000, 10000], 2000, key="cmp_bench_n")
measure = c3.button("Measure", type="primary", icon=":material/speed:", key="cmp_measure")
cache = st.session_state.setdefault("bench_results", {})
if measure:
    ds = _resources.dataset()
    if ds is not None:
        run = next(r for r in usable if r.name == bench_run)
        bar = st.progress(0.0, text="Measuring...")
        try:
            with st.spinner("Measuring every backend (in a separate process)..."):
                result = measure_backends_isolated(
                    run.path, ds.x_test[:n_images], ds.y_test[:n_images],
                    progress=lambda fraction, message: bar.progress(min(max(fraction, 0.0), 1.0), text=message))
        except Exception as exc:
            st.error(f"Measuring failed: {type(exc).__name__}: {exc}")
        else:
            cache[bench_run] = {"n": n_images, "rows": side_by_side(result), "skipped": result["skipped"]}
        bar.empty()
if bench_run in cache:
    st.caption(f"Measured on {cache[bench_run]['n']:,} test images, each backend as the model itself "
               "(no flip averaging). Latency: one image per call; throughput: all images in batches.")
    rows = [{k: percent(v) if k in ("test accuracy", "agreement with Keras") else v for k, v in row.items()}
            for row in cache[bench_run]["rows"]]
    st.dataframe(rows, hide_index=True, column_config={
        "test accuracy": st.column_config.NumberColumn("test acc.", format="%.2f%%", help="Test accuracy"),
        "agreement with Keras": st.column_config.NumberColumn("agrees", format="%.2f%%",
                                                              help="Top-1 agreement with Keras"),
        "max prob. difference": st.column_config.NumberColumn("max Δp", format="%.1e",
                                                              help="Largest probability difference from Keras"),
        "latency p50 (ms)": st.column_config.NumberColumn("p50 ms", format="%.2f", help="Latency, one image, median"),
        "latency p95 (ms)": st.column_config.NumberColumn("p95 ms", format="%.2f", help="Latency, one image, 95th percentile"),
        "throughput (img/s)": st.column_config.NumberColumn("img/s", format="localized", help="Batch throughput"),
        "speed-up vs Keras": st.column_config.NumberColumn("vs Keras", format="%.2fx",
                                                           help="Throughput relative to Keras")})
    if any("BF16" in str(row.get("backend", "")) for row in rows):
        st.caption("OpenVINO BF16: the FP32 model run with bfloat16 arithmetic, measured only because this "
                   "CPU supports it; not offered in the sidebar, since its answers differ slightly from FP32.")
    for name, reason in cache[bench_run].get("skipped", {}).items():
        st.caption(f"{name}: not measured ({reason})")
else:
    st.info("Press Measure to time the backends for this run (takes a few seconds per backend).")
