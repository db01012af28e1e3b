"""Every page of the Streamlit app under AppTest: no exception, key widgets present, bad input
answered with a message. The shipped default model is the current run (a prerequisite, as are
the Fashion-MNIST files: tests/prereq.py); the drawable canvas, which AppTest cannot drive, is
replaced by a fake returning a drawing."""

from __future__ import annotations

import json
import re
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from tests import prereq
from tests.waits import wait_until

pytestmark = [pytest.mark.app, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def needs_data(monkeypatch) -> Path:
    """The real Fashion-MNIST folder, exported to the app as FMNIST_DATA_DIR (skip/fail without it)."""
    folder = prereq.require_data()
    monkeypatch.setenv("FMNIST_DATA_DIR", str(folder))
    return folder


# What the fake canvas returns, 280x280 RGBA: a trouser silhouette in white on black (a waistband
# and two legs), which the shipped model calls Trouser on every backend (about 0.9).
FAKE_DRAWING = np.zeros((280, 280, 4), np.uint8)
FAKE_DRAWING[30:60, 105:175] = 255
FAKE_DRAWING[30:250, 105:135] = 255
FAKE_DRAWING[30:250, 145:175] = 255


class FakeCanvasResult:
    def __init__(self, image_data):
        self.image_data = image_data
        self.json_data = {"objects": [{"type": "path"}]}


@pytest.fixture
def fake_canvas(monkeypatch):
    """A stand-in streamlit_drawable_canvas whose canvas holds FAKE_DRAWING."""
    image = FAKE_DRAWING
    module = types.ModuleType("streamlit_drawable_canvas")
    calls = []

    def st_canvas(**kwargs):
        calls.append(kwargs)
        return FakeCanvasResult(image)

    module.st_canvas = st_canvas
    monkeypatch.setitem(sys.modules, "streamlit_drawable_canvas", module)
    return calls


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """An empty runs folder: the shipped default model (assets/default-model) is the current run."""
    prereq.require_shipped_model()
    return tmp_path_factory.mktemp("app-runs")


@pytest.fixture
def app(runs_dir, monkeypatch):
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.testing.v1 import AppTest

    from pages._navigation import leave_legacy_pages_mode

    # AppTest resets Streamlit's pages-directory flag before every run, so every run would start in
    # the legacy mode that pages/_navigation.ensure_navigation() leaves with a rerun (once per server
    # in production), and the rerun drops that run's button clicks. Start each run as a served app
    # does, through the guard's own function (the one place that knows the flag).
    original_init = PagesManager.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        leave_legacy_pages_mode()

    monkeypatch.setattr(PagesManager, "__init__", init)
    monkeypatch.setenv("FMNIST_RUNS_DIR", str(runs_dir))
    monkeypatch.setenv("FMNIST_JOBS_INPROCESS", "1")
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def goto(at, page: str):
    at.switch_page(f"pages/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [t.value for t in at.title]
    parts += [h.value for h in at.subheader] + [h.value for h in at.header]
    parts += [a.value for kind in ("info", "warning", "success", "error") for a in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def test_home_and_sidebar(app):
    assert "Fashion-MNIST Studio" in texts(app)
    assert app.selectbox(key="backend").options  # backend choice in the shared sidebar


def test_data_page(needs_data, app):
    goto(app, "data")
    assert app.slider(key="data_per_class").value == 10
    before = app.get("image")[0].proto.imgs[0].url
    app.button(key="data_reshuffle").click().run()
    assert not app.exception and app.session_state["data_seed"] == 1
    assert app.get("image")[0].proto.imgs[0].url != before  # a new sample grid
    app.number_input(key="data_index").set_value(59_999).run()
    captions = [c for image in app.get("image") for c in image.captions]
    assert any(c.startswith("train #59999: ") for c in captions), captions[-3:]
    app.radio(key="data_split").set_value("test").run()
    assert not app.exception and len(app.get("plotly_chart")) >= 1


def test_data_page_without_data_says_why(app, monkeypatch, tmp_path):
    monkeypatch.setenv("FMNIST_DATA_DIR", str(tmp_path))
    goto(app, "data")
    assert any("Fashion-MNIST" in e.value for e in app.error)


def test_train_page_widgets_bounds_and_bad_input(app):
    goto(app, "train")
    assert app.radio(key="train_preset").options == ["paper", "fast", "best", "custom"]
    epochs = app.number_input(key="train_paper_epochs")
    assert (epochs.min, epochs.max) == (1, 200)  # TrainConfig.BOUNDS
    assert app.button(key="train_start").disabled is False
    assert app.button(key="train_stop").disabled is True
    assert app.dataframe, "the layer table is shown before training"
    assert "590,346" in texts(app)  # the paper model's parameter count
    app.radio(key="train_preset").set_value("custom").run()
    app.text_input(key="train_custom_widths_modern").set_value("32,x,128").run()
    assert any("Widths must be whole numbers" in e.value for e in app.error)
    assert app.button(key="train_start").disabled is True


def _shown_indices(at, true_name: str, pred_name: str) -> list[int]:
    """Test indices in the gallery captions ("#123 Shirt → T-shirt/top (87%)"), in display order."""
    pattern = re.compile(rf"^#(\d+) {re.escape(true_name)} → {re.escape(pred_name)} \(")
    (tab,) = [t for t in at.tabs if t.label == "Confusion matrix"]  # not the Misclassified gallery
    return [int(m.group(1)) for image in tab.get("image") for c in image.captions
            if (m := pattern.match(c or ""))]


def test_results_page_off_diagonal_cell_shows_exactly_those_test_images(needs_data, shipped_model, app):
    """True Shirt predicted as T-shirt/top: the gallery holds exactly the test items whose label is
    Shirt and whose stored prediction is T-shirt/top, most confident first (a row/column swap in
    the page or in fmnist.evaluation.cell_items shows other items)."""
    from fmnist.data import CLASS_NAMES, load_fashion_mnist

    goto(app, "results")
    labels = [m.label for m in app.metric]
    assert "Test accuracy" in labels and "Train − val gap" in labels
    y = load_fashion_mnist(needs_data).y_test
    probs = np.load(shipped_model / "test_probs.npy")
    shirt, tshirt = CLASS_NAMES.index("Shirt"), CLASS_NAMES.index("T-shirt/top")
    cell = np.flatnonzero((y == shirt) & (probs.argmax(1) == tshirt))
    expected = cell[np.argsort(-probs[cell, tshirt], kind="stable")].tolist()
    assert len(expected) > 48  # more than one gallery page: the paging is exercised too
    app.selectbox(key="res_pick_true").set_value("Shirt").run()
    app.selectbox(key="res_pick_pred").set_value("T-shirt/top").run()
    assert not app.exception
    assert f"True Shirt predicted as T-shirt/top: {len(expected):,} images" in texts(app)
    assert _shown_indices(app, "Shirt", "T-shirt/top") == expected[:48]
    assert f"Showing 48 of {len(expected)}" in texts(app)
    app.number_input(key="cell_page").set_value(2).run()
    assert _shown_indices(app, "Shirt", "T-shirt/top") == expected[48:96]
    # and the transposed cell is a different set: true T-shirt/top predicted as Shirt
    app.selectbox(key="res_pick_true").set_value("T-shirt/top").run()
    app.selectbox(key="res_pick_pred").set_value("Shirt").run()
    swapped = np.flatnonzero((y == tshirt) & (probs.argmax(1) == shirt))
    shown = _shown_indices(app, "T-shirt/top", "Shirt")
    assert shown and set(shown) <= set(swapped.tolist()) and not set(shown) & set(expected)


def test_results_normalise_toggle_shows_row_shares(needs_data, app):
    goto(app, "results")

    def cell_texts() -> list[str]:
        """The confusion matrix's 100 cell labels (its heatmap trace's text)."""
        for chart in app.get("plotly_chart"):
            for trace in json.loads(chart.proto.spec)["data"]:
                if trace.get("type") == "heatmap":
                    return [t for row in trace["text"] for t in row]
        return []

    counts = cell_texts()
    assert counts and all(t.isdigit() for t in counts)
    app.toggle(key="res_normalise").set_value(True).run()
    shares = cell_texts()
    assert not app.exception and len(shares) == 100 and all(t.endswith("%") for t in shares)


def _drawn_input(fake_canvas_image: np.ndarray) -> np.ndarray:
    from fmnist.preprocess import prepare_drawing

    return prepare_drawing(fake_canvas_image).input


@pytest.mark.parametrize("backend,shown", [("keras", "keras (fp32)"), ("openvino-fp32", "openvino-fp32 (fp32)"),
                                           ("openvino-int8", "openvino-int8 (int8)")])
def test_classify_with_each_backend_picked_in_the_sidebar(needs_data, shipped_model, app, fake_canvas,
                                                          backend, shown):
    """The sidebar's backend is the one that answers (named in the caption), and its answer is
    that backend's own class for the drawing (a trouser silhouette: Trouser)."""
    from fmnist.backends import get_backend
    from fmnist.data import CLASS_NAMES

    app.selectbox(key="backend").set_value(backend).run()
    goto(app, "classify")
    expected = get_backend(shipped_model, backend).predict_proba(_drawn_input(FAKE_DRAWING)[None])[0]
    assert f"### {CLASS_NAMES[int(expected.argmax())]}" in [m.value for m in app.markdown]
    assert CLASS_NAMES[int(expected.argmax())] == "Trouser"
    assert any(shown in c.value for c in app.caption), [c.value for c in app.caption]
    assert not app.warning, [w.value for w in app.warning]  # no fallback to another backend
    app.button(key="draw_clear").click().run()
    assert not app.exception and app.session_state["canvas_version"] == 1  # a fresh, empty canvas
    assert fake_canvas[-1]["key"] == "canvas_1" and fake_canvas[-1]["return_image_data"] is True


def test_train_in_the_app_with_export_then_classify_that_run_with_openvino(needs_data, app, fake_canvas):
    """The production path: a training started on the Train page (export on, as served), which
    becomes the current run, then answers the drawing through OpenVINO FP32 and INT8."""
    from fmnist.backends import get_backend
    from fmnist.data import CLASS_NAMES
    from fmnist.jobs import get_manager
    from fmnist.runs import verify_run

    manager = get_manager()
    assert manager.export, "the app's job manager must export finished runs"
    goto(app, "train")
    app.radio(key="train_preset").set_value("custom").run()
    app.text_input(key="train_custom_widths_modern").set_value("8,16,16").run()
    app.number_input(key="train_custom_epochs").set_value(1).run()
    app.number_input(key="train_custom_limit").set_value(1000).run()
    app.number_input(key="train_custom_batch").set_value(100).run()
    app.button(key="train_start").click().run()
    assert not app.exception, [e.value for e in app.exception]
    job = wait_until(lambda: manager.get(app.session_state["job_id"]) if "job_id" in app.session_state else None,
                     60, "the job to be submitted")
    final = manager.wait(job.id, 300)
    assert final["status"] == "completed", final["message"]
    run_dir = Path(final["run_dir"])
    assert verify_run(run_dir).bundles.get("openvino") == "ok"  # exported: FP32 and INT8
    app.run()  # the finished run becomes the current one
    assert app.session_state["current_run"] == run_dir.name
    for backend, precision in (("openvino-fp32", "fp32"), ("openvino-int8", "int8")):
        app.selectbox(key="backend").set_value(backend).run()
        goto(app, "classify")
        expected = get_backend(run_dir, backend).predict_proba(_drawn_input(FAKE_DRAWING)[None])[0]
        assert f"### {CLASS_NAMES[int(expected.argmax())]}" in [m.value for m in app.markdown]
        assert any(f"{backend} ({precision})" in c.value for c in app.caption)
        assert any(run_dir.name in c.value for c in app.caption)  # that run, not the shipped model
        assert not app.warning, [w.value for w in app.warning]


@pytest.mark.parametrize("tamper", ["pickled objects", "three columns", "one dimension", "not numpy"])
def test_tampered_test_probs_with_a_rewritten_manifest_is_reported_not_crashed(needs_data, app, tmp_path,
                                                                             monkeypatch, tamper):
    """test_probs.npy replaced and the manifest rewritten to match: the Results page says the
    probabilities are unusable and never raises (a gallery needs them)."""
    import io

    from fmnist import runs
    from fmnist.runs import DEFAULT_MODEL_DIR

    root = tmp_path / "runs"
    run = root / "20260101-000000-tampered-abcd"
    shutil.copytree(DEFAULT_MODEL_DIR, run)
    buf = io.BytesIO()
    if tamper == "pickled objects":
        np.save(buf, np.array([{"a": 1}] * 10_000, dtype=object), allow_pickle=True)
    elif tamper == "three columns":
        np.save(buf, np.full((10_000, 3), 1 / 3, np.float32))
    elif tamper == "one dimension":
        np.save(buf, np.zeros(10_000, np.float32))
    else:
        buf.write(b"this is not a numpy file")
    (run / "test_probs.npy").write_bytes(buf.getvalue())
    runs.write_manifest(run)
    assert runs.verify_run(run).usable  # the manifest matches: only the content can tell
    with pytest.raises(ValueError, match="test_probs.npy"):
        runs.load_test_probs(run)
    monkeypatch.setenv("FMNIST_RUNS_DIR", str(root))
    goto(app, "results")
    app.selectbox(key="current_run").set_value(run.name).run()
    app.selectbox(key="res_pick_true").set_value("Shirt").run()
    app.selectbox(key="res_pick_pred").set_value("T-shirt/top").run()
    assert not app.exception, [e.value for e in app.exception]
    assert "True Shirt predicted as T-shirt/top" in texts(app)
    assert any("test probabilities" in w.value for w in app.warning), [w.value for w in app.warning]


def test_compare_page(app):
    goto(app, "compare")
    assert app.dataframe
    measure = app.button(key="cmp_measure")
    assert measure.label == "Measure" and not measure.disabled
