"""Explanations in the app (issue 14): what Classify shows under each answer (calibrated probability,
occlusion heat map, Grad-CAM for Keras, nearest training images, the unfamiliar warning) and the Look
inside page (first-layer filters, every stage's feature maps), computed by the backends themselves: the
Keras worker, and OpenVINO's inspection model compiled once per backend.

The pictures and the per-image explanation are checked on hand-made arrays and a plain numpy
predictor (fast); the backends' explanation methods on the shipped model against fmnist.explain's
functions on its Keras model; the pages under AppTest with a fake canvas (tests/test_app.py's fixtures).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from fmnist import explain as ex
from fmnist import explanations as xp
from tests.test_app import FakeCanvasResult, app, goto, needs_data, runs_dir, texts  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def no_keras_worker_left():
    """The Keras worker the pages start for this process ends with this module (later tests count
    this process's children)."""
    yield
    from fmnist.keras_process import stop_worker

    stop_worker()
UNFAMILIAR = "This does not look like any of the ten Fashion-MNIST items"

# ---------------------------------------------------------------- pictures (plain numpy)


def test_heat_overlay_is_red_for_evidence_blue_against_and_grey_elsewhere():
    image = np.full((28, 28), 100, np.uint8)
    heat = np.zeros((28, 28), np.float32)
    heat[5, 5], heat[20, 20] = 0.4, -0.2
    out = xp.heat_overlay(image, heat, scale=4)
    assert out.shape == (112, 112, 3) and out.dtype == np.uint8
    red, blue, plain = out[5 * 4 + 1, 5 * 4 + 1], out[20 * 4 + 1, 20 * 4 + 1], out[0, 0]
    assert red[0] > 150 and red[0] > red[1] + 100 and red[0] > red[2] + 100  # the strongest: nearly opaque
    assert blue[2] > blue[0] + 30 and blue[2] > blue[1]  # half as strong against: fainter blue
    assert plain[0] == plain[1] == plain[2] == 75  # the dimmed input, untouched
    # every pixel of a block is the same (enlarged, not interpolated)
    assert (out[20:24, 20:24] == red).all()
    assert (xp.heat_overlay(image, np.zeros((28, 28)), scale=1) == 75).all()  # an empty map: just the input


def test_feature_and_filter_grids():
    maps = np.zeros((5, 7, 7), np.float32)
    maps[2] = 3.0  # the most active map
    maps[4, 0, 0] = 6.0  # the stage's largest value, in one pixel
    maps[1] = 1.0
    assert xp.strongest_maps(maps).tolist()[:2] == [2, 1] and len(xp.strongest_maps(maps, 3)) == 3
    grid = xp.feature_grid(maps, xp.strongest_maps(maps), columns=3, tile=14, pad=2)
    # 5 tiles of 14 px (7 px at 2x) in 3 columns: 2 rows; pads of 2 around and between
    assert grid.shape == (2 * 16 + 2, 3 * 16 + 2, 3) and grid.dtype == np.uint8
    first = grid[2:16, 2:16]  # map 2 (half of the stage's top value): one colour, not black
    assert (first == first[0, 0]).all() and first[0, 0].sum() > 150
    silent = grid[18:32, 18:32]  # the last tile (row 2, column 2): map 3, all zero -> black
    assert (grid[18:32, 34:48] == 255).all()  # no sixth tile: background
    assert (silent == xp.RAMP[0].astype(np.uint8)).all()
    assert (xp.colour_ramp(np.array([0.0, 1.0])) == xp.RAMP[[0, -1]].astype(np.uint8)).all()
    with pytest.raises(ValueError, match="feature maps"):
        xp.feature_grid(np.zeros((7, 7)))

    filters = np.zeros((2, 3, 3), np.float32)
    filters[0, 0, 0], filters[0, 2, 2], filters[1, 1, 1] = 2.0, -1.0, -5.0
    grid = xp.filter_grid(filters, columns=2, tile=3, pad=1)
    assert grid.shape == (5, 9, 3)
    assert tuple(grid[1, 1]) == tuple(xp.RED.astype(np.uint8))  # the filter's largest weight: full red
    halfway = tuple(np.round(255 + (xp.BLUE - 255) * 0.5).astype(np.uint8))
    assert tuple(grid[3, 3]) == halfway  # half as large, negative: half-way from white to blue
    assert tuple(grid[1, 2]) == (255, 255, 255)  # zero: white
    assert tuple(grid[0, 0]) == (160, 160, 160)  # grey between filters
    assert tuple(grid[2, 6]) == tuple(xp.BLUE.astype(np.uint8))  # filter 1, its own scale: full blue


class RegionPredictor:
    """A predictor that answers class 3 by the brightness of rows/columns 8..13 (the rest: class 0)."""

    name = "plain"
    tta_flip = False

    def __init__(self):
        self.calls = 0

    def predict_proba(self, images):
        self.calls += 1
        x = np.asarray(images, dtype=np.float32).reshape(-1, 28, 28)
        p3 = 0.05 + 0.9 * x[:, 8:14, 8:14].mean(axis=(1, 2)) / 255
        out = np.zeros((len(x), 10), np.float32)
        out[:, 3], out[:, 0] = p3, 1 - p3
        return out


def test_one_image_without_trust_gets_its_map_and_says_it_is_not_calibrated():
    image = np.zeros((28, 28), np.uint8)
    image[6:16, 6:16] = 255
    backend = RegionPredictor()
    found = xp.explain_image(backend, image, trust=None, note="no trust here")
    assert backend.calls == 1  # the answer and all occluded copies in one call
    assert found.label == 3 and found.confidence == pytest.approx(0.95, abs=1e-6)
    assert not found.calibrated and found.nearest == [] and found.unfamiliar is None
    assert found.unfamiliar_score is None and found.notes == ("no trust here",) and found.gradcam is None
    assert found.heatmap.shape == (28, 28) and found.heatmap[10, 10] > 0.1
    assert abs(found.heatmap[25, 25]) < 1e-6 and found.heatmap[8:14, 8:14].min() > 0
    assert set(found.seconds) == {"occlusion"}
    with pytest.raises(ValueError, match="neighbours"):
        xp.explain_image(backend, image, neighbours=0)


def test_a_run_without_trust_artifacts_says_how_to_make_them(tmp_path):
    trust, note = xp.load_trust(tmp_path)
    assert trust is None and "Not calibrated" in note and f"python -m fmnist.trust --run {tmp_path}" in note


# ---------------------------------------------------------------- stage names without TensorFlow


@pytest.mark.slow
@pytest.mark.parametrize("arch,widths", [("modern", [8, 16, 16]), ("paper", None), ("paper-baseline", None)])
def test_stage_names_from_the_config_match_the_built_model(arch, widths):
    from fmnist.models import build_model

    model = build_model(arch, widths=widths)
    assert [name for name, _ in ex.stage_specs(arch, widths)] == ex.activation_layers(model)
    assert [kind for _, kind in ex.stage_specs(arch, widths)] == [
        type(model.get_layer(n)).__name__ for n in ex.activation_layers(model)]


# ---------------------------------------------------------------- the backends' explanation methods


@pytest.fixture(scope="module")
def probes():
    """A few shipped-model inputs: garment-like blocks and noise."""
    rng = np.random.default_rng(0)
    x = np.zeros((4, 28, 28), np.float32)
    x[0, 4:24, 8:20] = 200
    x[1, 10:18, 2:26] = 150
    x[2] = rng.integers(0, 256, (28, 28))
    x[3, 2:26, 10:18] = 255
    return x


@pytest.mark.slow
def test_openvino_inspection_matches_keras(shipped_model, probes):
    """OpenVINO answers Look inside without TensorFlow: the FP32 IR's stage maps equal Keras's, named
    like its layers; INT8's are close; features are the ones the unfamiliar score uses; the inspection
    model is compiled once per backend."""
    from fmnist.backends import get_backend

    keras = get_backend(shipped_model, "keras", cache=False, tta=False)
    expected = keras.stage_activations(probes[0])
    assert [s["name"] for s in expected] == [n for n, _ in ex.stage_specs("modern", [24, 48, 96, 192])]
    for name in ("openvino-fp32", "openvino-int8"):
        backend = get_backend(shipped_model, name, cache=False, tta=False)
        stages = backend.stage_activations(probes[0])
        assert [(s["name"], s["kind"], s["maps"].shape) for s in stages] == [
            (s["name"], s["kind"], s["maps"].shape) for s in expected]
        for got, want in zip(stages, expected):
            if name == "openvino-fp32":
                assert np.abs(got["maps"] - want["maps"]).max() < 1e-4 * max(1.0, float(want["maps"].max()))
            else:
                assert np.corrcoef(got["maps"].ravel(), want["maps"].ravel())[0, 1] > 0.9
        assert backend.inspector() is backend.inspector()  # compiled once, kept with the backend
        features = backend.features(probes)
        reference = ex.openvino_feature_sets(ex.openvino_feature_model(backend.model), probes)
        for key in ("penultimate", "logits", "first_stage"):
            assert np.allclose(features[key], reference[key], atol=1e-5)
        filters, kernels = backend.first_layer_filters(), keras.first_layer_filters()
        assert filters.shape == kernels.shape == (24, 3, 3)
        # the IR may fold BatchNorm into the kernels (one factor per filter): the same patterns
        assert min(np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(filters, kernels)) > 0.98


@pytest.mark.slow
def test_openvino_names_the_stages_of_the_paper_architecture_too(tiny_run, tiny_dataset, tmp_path):
    """The paper architecture (activated Conv2D layers, a LeakyReLU that OpenVINO runs as PRelu) through
    its FP32 IR: the same stages, names and maps as Keras."""
    from fmnist.backends import get_backend
    from fmnist.export import export_run

    run = tmp_path / tiny_run.name
    shutil.copytree(tiny_run, run)
    export_run(run, calibration_images=tiny_dataset.x_train[:64], int8=False)
    image = tiny_dataset.x_test[0]
    expected = get_backend(run, "keras", cache=False, tta=False).stage_activations(image)
    stages = get_backend(run, "openvino-fp32", cache=False, tta=False).stage_activations(image)
    assert [s["name"] for s in stages] == [s["name"] for s in expected] == ["conv1", "pool1", "conv2", "pool2", "conv3"]
    for got, want in zip(stages, expected):
        assert got["maps"].shape == want["maps"].shape
        assert np.abs(got["maps"] - want["maps"]).max() < 1e-4 * max(1.0, float(np.abs(want["maps"]).max()))


@pytest.mark.slow
def test_keras_backend_explains_with_sub_models_built_once(shipped_model, probes):
    """KerasBackend's methods (what the worker answers) give what fmnist.explain's functions give."""
    from fmnist.backends import get_backend

    backend = get_backend(shipped_model, "keras", cache=False, tta=False)
    model = backend.model
    first = ex.activation_layers(model)[0]
    plain = ex.feature_sets(model, probes, [first])
    features = backend.features(probes)
    assert np.allclose(features["penultimate"], plain["penultimate"], atol=1e-5)
    assert np.allclose(features["logits"], plain["logits"], atol=1e-4)
    assert np.allclose(features["first_stage"], plain[first], atol=1e-5)
    for got, want in zip(backend.stage_activations(probes[1]), ex.stage_activations(model, probes[1])):
        assert got["name"] == want["name"] and np.allclose(got["maps"], want["maps"], atol=1e-5)
    cam, plain_cam = backend.grad_cam(probes[:2], [1, 3]), ex.grad_cam(model, probes[:2], targets=[1, 3])
    assert cam["targets"].tolist() == [1, 3] and np.allclose(cam["maps"], plain_cam["maps"], atol=1e-5)
    assert backend.grad_cam(probes[:1])["targets"].tolist() == [int(backend.predict_proba(probes[:1]).argmax())]
    assert np.array_equal(backend.first_layer_filters(), ex.first_layer_filters(model))


@pytest.mark.slow
def test_the_keras_worker_answers_explanations_and_the_caller_never_imports_tensorflow(shipped_model, probes):
    """Through the app's Keras worker: the same values as in-process, a bad request answered with one
    line, and the calling process (the web server) still without TensorFlow. Prints one image's
    explanation time through the worker and through OpenVINO FP32 (the issue's 1 s budget)."""
    script = f"""
import sys, time, numpy as np
from fmnist.backends import BackendError, get_backend
from fmnist.explanations import explain_image, load_trust
from fmnist.keras_process import stop_worker
run = {str(shipped_model)!r}
x = np.load(sys.argv[1])
trust, note = load_trust(run)
assert note is None
try:
    worker = get_backend(run, "keras", isolated=True)
    feats = worker.features(x)
    np.save(sys.argv[2], feats["penultimate"])
    stages = worker.stage_activations(x[0])
    assert [s["name"] for s in stages][:2] == ["relu0_1", "pool1"] and stages[0]["maps"].shape == (24, 28, 28)
    assert worker.first_layer_filters().shape == (24, 3, 3)
    assert worker.grad_cam(x[:1], [4])["maps"].shape == (1, 28, 28)
    try:
        worker.grad_cam(x[:1], [11])
        raise SystemExit("a bad target was answered")
    except BackendError as exc:
        assert "class indices" in str(exc) and "\\n" not in str(exc), str(exc)
    for name in ("keras", "openvino-fp32"):
        backend = get_backend(run, name, isolated=True)
        explain_image(backend, x[0], trust, gradcam=name == "keras")  # first use: builds and traces
        times = []
        for image in x:
            t0 = time.perf_counter()
            found = explain_image(backend, image, trust, gradcam=name == "keras")
            times.append(time.perf_counter() - t0)
            assert found.calibrated and len(found.nearest) == 5
        print(name, "explain one image: p50", round(sorted(times)[len(times) // 2] * 1000), "ms, max",
              round(max(times) * 1000), "ms")
    print("tensorflow imported:", "tensorflow" in sys.modules, "keras" in sys.modules)
finally:
    stop_worker()
"""
    import tempfile

    from fmnist.backends import get_backend

    with tempfile.TemporaryDirectory() as folder:
        inputs, penultimate = Path(folder) / "x.npy", Path(folder) / "f.npy"
        np.save(inputs, probes)
        out = subprocess.run([sys.executable, "-c", script, str(inputs), str(penultimate)], capture_output=True,
                             text=True, timeout=600, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert out.returncode == 0, out.stderr[-3000:]
        print(out.stdout)
        assert out.stdout.strip().splitlines()[-1] == "tensorflow imported: False False"
        local = get_backend(shipped_model, "keras", cache=False, tta=False).features(probes)["penultimate"]
        assert np.allclose(np.load(penultimate), local, atol=1e-5)


@pytest.mark.slow
def test_one_image_through_openvino_with_the_shipped_trust(shipped_model, probes):
    """Calibrated probabilities (the run's temperature), five nearest training items and the unfamiliar
    fields; the same map and neighbours as the CLI's explain_images; noise is unfamiliar."""
    from fmnist.backends import get_backend
    from fmnist.calibration import apply_temperature

    trust, note = xp.load_trust(shipped_model)
    assert note is None
    backend = get_backend(shipped_model, "openvino-fp32")  # flip-averaged, as the run asks
    found = xp.explain_image(backend, probes[0], trust)
    raw = backend.predict_proba(probes[:1])
    assert found.calibrated and found.label == int(raw.argmax())
    assert np.allclose(found.probabilities, apply_temperature(raw, trust.temperature)[0], atol=1e-5)
    assert len(found.nearest) == 5 and all(0 <= n["index"] < 60_000 for n in found.nearest)
    assert [n["distance"] for n in found.nearest] == sorted(n["distance"] for n in found.nearest)
    assert found.unfamiliar == (found.unfamiliar_score > 1.0) and found.gradcam is None
    cli = xp.explain_images(shipped_model, backend, probes[:1])[0]
    assert np.allclose(cli["heatmap"], found.heatmap, atol=1e-4) and cli["nearest"] == found.nearest
    noise = xp.explain_image(backend, probes[2], trust)
    assert noise.unfamiliar and noise.unfamiliar_score > 1.0


@pytest.mark.slow
def test_test_images_are_placed_among_their_own_class_on_the_map(needs_data, shipped_model):
    """explain_image with the run's feature map puts each image where featuremap.place puts its features,
    and correctly answered test images land among test items of their own class."""
    from fmnist import featuremap
    from fmnist.backends import get_backend
    from fmnist.data import load_fashion_mnist

    fmap = featuremap.load(shipped_model)
    trust, _ = xp.load_trust(shipped_model)
    ds = load_fashion_mnist(os.environ.get("FMNIST_DATA_DIR"), download=False)
    backend = get_backend(shipped_model, "openvino-fp32")
    off_map = np.setdiff1d(np.arange(len(ds.y_test)), fmap.index)[:: 250][:20]  # items t-SNE never saw
    agree = 0
    for i in off_map:
        found = xp.explain_image(backend, ds.x_test[i], trust, fmap=fmap)
        expected = featuremap.place(fmap, backend.features(ds.x_test[i][None])["penultimate"])[0]
        assert np.allclose(found.position, expected, atol=1e-5)
        near = np.argsort(np.linalg.norm(fmap.coords - found.position, axis=1))[:10]
        agree += np.bincount(fmap.labels[near], minlength=10).argmax() == ds.y_test[i]
    assert agree >= 0.8 * len(off_map), (agree, len(off_map))
    assert xp.explain_image(backend, ds.x_test[0], trust).position is None  # no map given, no placement


# ---------------------------------------------------------------- the pages under AppTest


def drawn_seven() -> np.ndarray:
    """A hand-drawn "7" as the canvas returns it (280x280 RGBA, white on black): a digit, not a garment."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (280, 280), 0)
    ImageDraw.Draw(img).line([(60, 60), (220, 60), (120, 240)], fill=255, width=18)
    grey = np.asarray(img)
    return np.dstack([grey, grey, grey, np.where(grey > 0, 255, 0)]).astype(np.uint8)


@pytest.fixture
def canvas_with(monkeypatch):
    """Install a fake streamlit_drawable_canvas holding the given drawing."""

    def install(image: np.ndarray) -> None:
        module = types.ModuleType("streamlit_drawable_canvas")
        module.st_canvas = lambda **kwargs: FakeCanvasResult(image)
        monkeypatch.setitem(sys.modules, "streamlit_drawable_canvas", module)

    return install


def image_captions(at) -> list[str]:
    return [c for image in at.get("image") for c in image.captions if c]


@pytest.mark.app
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["openvino-fp32", "keras"])
def test_classify_explains_a_drawn_digit_and_warns_that_it_is_no_garment(needs_data, shipped_model, app,
                                                                         canvas_with, backend):
    from fmnist.data import CLASS_NAMES

    canvas_with(drawn_seven())
    app.selectbox(key="backend").set_value(backend).run()
    goto(app, "classify")
    shown = texts(app)
    warnings = [w.value for w in app.warning]
    assert any(UNFAMILIAR in w and "unfamiliar score" in w for w in warnings), warnings
    captions = image_captions(app)
    assert "Where it looked (occlusion)" in captions
    assert ("Grad-CAM (Keras)" in captions) == (backend == "keras")
    neighbours = [c for c in captions if " · " in c and c.split(" · ")[0] in CLASS_NAMES]
    assert len(neighbours) == 5, captions  # five nearest training images, with label and distance
    assert all(float(c.split(" · ")[1]) >= 0 for c in neighbours)
    assert "calibrated probability" in shown and "red = evidence for" in shown
    assert "Nearest training images" in shown
    # the answer and the warning are cached for this session: a rerun recomputes nothing
    cached = dict(app.session_state["explanations"])
    app.run()
    assert dict(app.session_state["explanations"]).keys() == cached.keys()
    assert "Drawing" in app.session_state["look_inside_images"]  # offered on Look inside


@pytest.mark.app
@pytest.mark.slow
def test_a_trouser_drawing_is_explained_without_a_warning(needs_data, shipped_model, app, canvas_with):
    from tests.test_app import FAKE_DRAWING

    canvas_with(FAKE_DRAWING)
    app.selectbox(key="backend").set_value("openvino-int8").run()
    goto(app, "classify")
    assert "### Trouser" in [m.value for m in app.markdown]
    assert not app.warning, [w.value for w in app.warning]
    assert "Where it looked (occlusion)" in image_captions(app)
    assert "red = evidence for Trouser" in texts(app)
    # placed on the run's feature map: a star on Classify, and on Results' Map tab for this session
    placed = app.session_state["placed_inputs"][str(shipped_model)]
    assert list(placed) == ["Drawing"]
    star = [t for c in app.get("plotly_chart") for t in json.loads(c.proto.spec)["data"] if t.get("name") == "your input"]
    assert [t["text"] for t in star] == [["Drawing"]]
    goto(app, "results")
    from tests.test_results_tabs import map_specs, values

    (spec,) = map_specs(app)
    stars = [t for t in spec["data"] if t.get("name") == "your input"]
    assert len(stars) == 1 and stars[0]["text"] == ["Drawing"]
    assert np.allclose([values(stars[0]["x"])[0], values(stars[0]["y"])[0]], placed["Drawing"], atol=1e-4)
    assert "Stars: this session's 1 input(s) from Classify (Drawing)" in texts(app)


@pytest.mark.app
@pytest.mark.slow
def test_a_run_without_trust_artifacts_still_answers_and_says_so(needs_data, app, canvas_with, tmp_path,
                                                                  monkeypatch):
    """A copy of the shipped model without its trust/ bundle (in a runs folder of its own, so the other
    tests keep the shipped model as the current run): the answer comes with raw probabilities, a heat
    map and a note saying there is no calibration and no familiarity check."""
    from fmnist import runs
    from fmnist.runs import DEFAULT_MODEL_DIR

    run = tmp_path / "runs" / "20260102-000000-untrusted-abcd"
    shutil.copytree(DEFAULT_MODEL_DIR, run)
    shutil.rmtree(run / "trust")
    runs.write_manifest(run)
    assert runs.verify_run(run).usable
    monkeypatch.setenv("FMNIST_RUNS_DIR", str(run.parent))
    canvas_with(drawn_seven())
    app.selectbox(key="backend").set_value("openvino-fp32").run()
    goto(app, "classify")
    app.selectbox(key="current_run").set_value(run.name).run()
    assert not app.exception, [e.value for e in app.exception]
    shown = texts(app)
    assert "confident (not calibrated)" in shown and "Not calibrated, and no familiarity check" in shown
    assert "python -m fmnist.trust" in shown
    assert "Where it looked (occlusion)" in image_captions(app)
    assert not any(UNFAMILIAR in w.value for w in app.warning)  # no check, so no claim either way


@pytest.mark.app
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["openvino-int8", "keras"])
def test_look_inside_shows_every_stage_and_the_filters(needs_data, shipped_model, app, canvas_with, backend):
    canvas_with(drawn_seven())
    app.selectbox(key="backend").set_value(backend).run()
    goto(app, "look_inside")
    shown = texts(app)
    assert "First layer's 24 filters" in shown
    stages = [n for n, _ in ex.stage_specs("modern", [24, 48, 96, 192])]
    for i, name in enumerate(stages, start=1):
        assert f"**{i}. {name}**" in shown
    captions = image_captions(app)
    assert sum(c.startswith(tuple(f"{n}: one colour scale" for n in stages)) for c in captions) == len(stages)
    assert "Input (28x28): test #0 (labelled Ankle boot)" in captions
    assert "(the 24 most active shown)" in shown  # relu1_1 has 48 maps
    app.toggle(key="look_all").set_value(True).run()
    assert "most active shown" not in texts(app)
    # the drawing from Classify
    goto(app, "classify")
    goto(app, "look_inside")
    app.radio(key="look_source").set_value("From Classify").run()
    assert not app.exception and "Input (28x28): Drawing" in image_captions(app)
