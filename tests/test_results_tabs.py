"""Results' Calibration and Map tabs under AppTest, with the shipped model (its trust/ and map/
bundles) and copies of it without them or with a tampered map (tests/test_app.py's app fixture)."""

from __future__ import annotations

import base64
import json
import shutil

import numpy as np
import pytest

from tests.test_app import app, goto, needs_data, runs_dir, texts  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.app, pytest.mark.slow]


def tab(at, label: str):
    (found,) = [t for t in at.tabs if t.label == label]
    return found


def chart_specs(at, label: str) -> list[dict]:
    return [json.loads(c.proto.spec) for c in tab(at, label).get("plotly_chart")]


def map_specs(at) -> list[dict]:
    """The Map tab's map figure(s): the charts drawn with WebGL scatter traces (not the picked item's bars)."""
    return [spec for spec in chart_specs(at, "Map") if spec["data"] and spec["data"][0]["type"] == "scattergl"]


def values(data) -> np.ndarray:
    """A trace's array from a figure's JSON: a plain list, or Plotly's typed array {"dtype", "bdata", "shape"}."""
    if isinstance(data, dict) and "bdata" in data:
        array = np.frombuffer(base64.b64decode(data["bdata"]), dtype=np.dtype(data["dtype"]))
        shape = data.get("shape")
        return array.reshape([int(n) for n in str(shape).split(",")]) if shape else array
    return np.asarray(data)


def metrics_of(at, label: str) -> dict[str, str]:
    return {m.label: m.value for m in tab(at, label).get("metric")}


def copy_of_shipped(root, name: str, drop: tuple[str, ...] = ()):
    """The shipped model copied as a run of its own, bundles in `drop` removed, manifest rewritten."""
    from fmnist import runs
    from fmnist.runs import DEFAULT_MODEL_DIR

    run = root / name
    shutil.copytree(DEFAULT_MODEL_DIR, run)
    for bundle in drop:
        shutil.rmtree(run / bundle)
    runs.write_manifest(run)
    assert runs.verify_run(run).usable
    return run


def test_calibration_tab_shows_ece_before_and_after_the_stored_temperature(needs_data, shipped_model, app):
    from fmnist import calibration, trust
    from fmnist.data import load_fashion_mnist

    goto(app, "results")
    labels = load_fashion_mnist(needs_data).y_test
    probs = np.load(shipped_model / "test_probs.npy")
    temperature = trust.load(shipped_model).temperature
    before = calibration.expected_calibration_error(probs, labels)
    after = calibration.expected_calibration_error(calibration.apply_temperature(probs, temperature), labels)
    assert after < before
    shown = metrics_of(app, "Calibration")
    assert shown["ECE as answered"] == f"{before:.2%}"
    assert shown["ECE after temperature scaling"] == f"{after:.2%}"
    assert shown["Temperature T"] == f"{temperature:.3f}"
    assert "What it means" in texts(app) and "15 confidence bins" in texts(app)
    (spec,) = chart_specs(app, "Calibration")
    names = [t["name"] for t in spec["data"]]
    assert names == ["perfectly calibrated", "as answered", f"after temperature scaling (T = {temperature:.3f})"]
    # the chart's points are the reliability diagram's filled bins
    diagram = calibration.reliability_diagram(probs, labels)
    filled = diagram["count"] > 0
    assert np.allclose(values(spec["data"][1]["y"]), diagram["accuracy"][filled])
    assert not app.exception


def test_map_tab_shows_the_stored_map_and_an_item_picked_by_number(needs_data, shipped_model, app):
    from fmnist import featuremap
    from fmnist.data import CLASS_NAMES

    goto(app, "results")
    fmap = featuremap.load(shipped_model)
    (spec,) = map_specs(app)
    traces = {t["name"]: t for t in spec["data"]}
    assert all(t["type"] == "scattergl" for t in spec["data"])
    mistakes = f"mistakes ({int(fmap.mistakes.sum()):,})"
    assert mistakes in traces
    assert sum(len(values(traces[n]["x"])) for n in traces if n != mistakes) == len(fmap.coords)
    assert sorted(values(traces[mistakes]["customdata"])[:, 0].astype(int).tolist()) == sorted(fmap.index[fmap.mistakes].tolist())
    # a mistake picked by its number: the image with its true label, the stored answer and "a mistake"
    probs = np.load(shipped_model / "test_probs.npy")
    item = int(fmap.index[fmap.mistakes][0])
    app.number_input(key="res_map_pick").set_value(item).run()
    assert not app.exception, [e.value for e in app.exception]
    captions = [c for image in tab(app, "Map").get("image") for c in image.captions]
    true, predicted = int(fmap.labels[fmap.mistakes][0]), int(probs[item].argmax())
    assert captions == [f"Test image #{item}: true {CLASS_NAMES[true]}, predicted {CLASS_NAMES[predicted]} "
                        f"({probs[item].max():.0%}) · a mistake"]
    # the class filter keeps one class's points (and its mistakes)
    app.button_group(key="res_map_classes").set_value(["Bag"]).run()
    (spec,) = map_specs(app)
    names = [t["name"] for t in spec["data"]]
    assert names[0] == "Bag" and len(names) == 2
    assert len(values(spec["data"][0]["x"])) == int((fmap.labels == CLASS_NAMES.index("Bag")).sum())
    app.toggle(key="res_map_mistakes").set_value(True).run()
    (spec,) = map_specs(app)
    bag_mistakes = int((fmap.mistakes & (fmap.labels == CLASS_NAMES.index("Bag"))).sum())
    assert len(values(spec["data"][0]["x"])) == bag_mistakes
    app.button_group(key="res_map_classes").set_value([]).run()
    assert "Pick at least one class." in [i.value for i in app.info]
    assert not app.exception


def test_run_without_trust_or_map_says_how_to_compute_them(needs_data, app, tmp_path, monkeypatch):
    root = tmp_path / "runs"
    run = copy_of_shipped(root, "20260101-000000-older-abcd", drop=("trust", "map"))
    monkeypatch.setenv("FMNIST_RUNS_DIR", str(root))
    goto(app, "results")
    app.selectbox(key="current_run").set_value(run.name).run()
    assert not app.exception, [e.value for e in app.exception]
    info = "\n".join(i.value for i in app.info)
    assert f"python -m fmnist.trust --run {run}" in info
    assert f"python -m fmnist.featuremap --run {run}" in info
    assert list(metrics_of(app, "Calibration")) == ["ECE as answered"]
    assert [t["name"] for t in chart_specs(app, "Calibration")[0]["data"]] == ["perfectly calibrated", "as answered"]
    assert map_specs(app) == []
    # the button that computes both: offered in each tab, nothing started on page load
    from fmnist.jobs import get_manager

    assert {b.key for b in app.button if b.label == "Compute calibration and map now"} == {
        "res_artifacts_calibration", "res_artifacts_map"}
    assert get_manager().artifacts_job(run) is None
    goto(app, "classify")  # the same button once on Classify, above the answers
    assert [b.key for b in app.button if b.label == "Compute calibration and map now"] == ["classify_artifacts"]
    assert any("no calibration and no unfamiliar-input check and no feature map" in i.value for i in app.info)
    assert get_manager().artifacts_job(run) is None


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_compute_button_gives_a_run_its_calibration_and_map(needs_data, app, tmp_path, monkeypatch):
    """A run trained before the bundles (quick: 600 real training items, no export): the button queues one
    background job; while it runs a reload finds it again; when it ends both tabs show the new bundles."""
    from fmnist.data import load_fashion_mnist
    from fmnist.jobs import get_manager
    from fmnist.runs import verify_run
    from fmnist.training import TrainConfig, train

    root = tmp_path / "runs"
    result = train(TrainConfig(arch="paper", epochs=1, batch_size=64, limit=600),
                   load_fashion_mnist(needs_data, download=False), runs_root=root, export=False)
    run = result.run_dir
    monkeypatch.setenv("FMNIST_RUNS_DIR", str(root))
    goto(app, "results")
    app.selectbox(key="current_run").set_value(run.name).run()
    app.button(key="res_artifacts_map").click().run()
    assert not app.exception, [e.value for e in app.exception]
    job = get_manager().artifacts_job(run)
    assert job is not None and job.kind == "artifacts"
    lines = [i.value for i in app.info]
    if job.snapshot()["active"]:  # the page shows its progress instead of the button
        assert any(line.startswith(("Queued", "Starting the computation", "Computing the calibration and map"))
                   for line in lines), lines
        assert not [b for b in app.button if b.label == "Compute calibration and map now"]
    final = get_manager().wait(job.id, 480)
    assert final["status"] == "completed", final["message"]
    info = verify_run(run)
    assert info.bundles.get("trust") == "ok" and info.bundles.get("map") == "ok", info.bundles
    app.run()  # what the job's poller does when it sees the end: the whole app again
    assert not app.exception, [e.value for e in app.exception]
    assert float(metrics_of(app, "Calibration")["Temperature T"]) > 0
    assert len(map_specs(app)) == 1
    assert not [b for b in app.button if b.label == "Compute calibration and map now"]


def test_tampered_map_is_refused_with_one_line(needs_data, app, tmp_path, monkeypatch):
    root = tmp_path / "runs"
    run = copy_of_shipped(root, "20260101-000000-tampered-map-abcd")
    target = run / "map" / "map.npz"
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    monkeypatch.setenv("FMNIST_RUNS_DIR", str(root))
    goto(app, "results")
    app.selectbox(key="current_run").set_value(run.name).run()
    assert not app.exception, [e.value for e in app.exception]
    errors = [e.value for e in app.error]
    assert any("refusing the feature map" in e and "\n" not in e for e in errors), errors
    assert map_specs(app) == []
    assert "ECE after temperature scaling" in metrics_of(app, "Calibration")  # the rest of the page works
