"""Every page of the Streamlit app under AppTest: no exception, key widgets present, bad input
answered with a message. The shipped default model is the current run (a prerequisite, as are
the Fashion-MNIST files: tests/prereq.py); the drawable canvas, which AppTest cannot drive, is
replaced by a fake returning a drawing."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from tests import prereq

pytestmark = [pytest.mark.app, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def needs_data(monkeypatch) -> Path:
    """The real Fashion-MNIST folder, exported to the app as FMNIST_DATA_DIR (skip/fail without it)."""
    folder = prereq.require_data()
    monkeypatch.setenv("FMNIST_DATA_DIR", str(folder))
    return folder


class FakeCanvasResult:
    def __init__(self, image_data):
        self.image_data = image_data
        self.json_data = {"objects": [{"type": "path"}]}


@pytest.fixture
def fake_canvas(monkeypatch):
    """A stand-in streamlit_drawable_canvas whose canvas holds a white bar (a trouser-like stroke)."""
    image = np.zeros((280, 280, 4), np.uint8)
    image[40:240, 110:170] = [255, 255, 255, 255]
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

    # AppTest resets Streamlit's pages-directory flag before every run, so every run would start in
    # the legacy mode that pages/_state.ensure_navigation() leaves with a rerun (once per server in
    # production), and the rerun drops that run's button clicks. Start each run as a served app does.
    original_init = PagesManager.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

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


def test_results_page_metrics_and_cell_gallery(needs_data, app):
    goto(app, "results")
    labels = [m.label for m in app.metric]
    assert "Test accuracy" in labels and "Train − val gap" in labels
    assert app.toggle(key="res_normalise") is not None
    app.selectbox(key="res_pick_true").set_value("Trouser").run()
    app.selectbox(key="res_pick_pred").set_value("Trouser").run()
    assert not app.exception
    assert "True Trouser predicted as Trouser" in texts(app)
    app.selectbox(key="res_mis_class").set_value("Shirt").run()
    assert not app.exception


def test_classify_page_draws_and_predicts(needs_data, app, fake_canvas):
    goto(app, "classify")
    assert fake_canvas and fake_canvas[-1]["return_image_data"] is True
    out = texts(app)
    classes = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
    assert any(f"### {c}" in m.value for m in app.markdown for c in classes)
    assert "ms" in out  # the backend's latency
    app.button(key="draw_clear").click().run()
    assert not app.exception and app.session_state["canvas_version"] == 1  # a fresh, empty canvas
    assert fake_canvas[-1]["key"] == "canvas_1"


def test_compare_page(app):
    goto(app, "compare")
    assert app.dataframe
    assert app.button(key="cmp_measure") is not None

