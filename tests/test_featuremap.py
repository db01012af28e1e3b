"""The feature map (fmnist.featuremap): PCA then t-SNE of test features, stored as the verified map/
bundle, and new inputs placed by their nearest mapped items.

Synthetic features (ten well separated clusters) for the map itself; the tiny run of conftest for
storing (its Keras model gives the features; 128 synthetic test items).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from fmnist import featuremap as fm
from fmnist.familiarity import Projection

CLASSES, PER_CLASS, DIMS = 10, 30, 64


def clusters(seed: int = 0, per_class: int = PER_CLASS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, labels, centres): ten Gaussian clusters around random non-negative centres (ReLU-like)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 4, size=(CLASSES, DIMS)).astype(np.float32)
    labels = np.repeat(np.arange(CLASSES), per_class)
    features = np.abs(centres[labels] + rng.normal(0, 0.15, size=(len(labels), DIMS))).astype(np.float32)
    return features, labels, centres


@pytest.fixture(scope="module")
def synthetic_map() -> tuple[fm.FeatureMap, np.ndarray]:
    features, labels, centres = clusters()
    predictions = labels.copy()
    predictions[:5] = (labels[:5] + 1) % CLASSES  # five mistakes
    arrays = fm.build(features, labels, predictions, np.arange(len(labels)), iterations=250)
    fmap = fm.FeatureMap(arrays["coords"].astype(np.float32), arrays["index"], arrays["labels"],
                         arrays["predictions"], Projection.from_arrays(arrays),
                         arrays["reference"].astype(np.float32), {})
    return fmap, centres


def test_build_keeps_clusters_apart(synthetic_map):
    fmap, _ = synthetic_map
    assert fmap.coords.shape == (CLASSES * PER_CLASS, 2) and np.isfinite(fmap.coords).all()
    assert fmap.mistakes.sum() == 5
    # each point's nearest other point on the 2-D map has its class: t-SNE kept the clusters
    d = ((fmap.coords[:, None] - fmap.coords[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert np.mean(fmap.labels[d.argmin(1)] == fmap.labels) > 0.95


def test_place_lands_in_the_right_cluster(synthetic_map):
    fmap, centres = synthetic_map
    rng = np.random.default_rng(1)
    new = np.abs(centres + rng.normal(0, 0.15, size=centres.shape)).astype(np.float32)  # one per class
    placed = fm.place(fmap, new)
    assert placed.shape == (CLASSES, 2)
    cluster_centres = np.stack([fmap.coords[fmap.labels == c].mean(0) for c in range(CLASSES)])
    nearest_cluster = ((placed[:, None] - cluster_centres[None]) ** 2).sum(-1).argmin(1)
    assert nearest_cluster.tolist() == list(range(CLASSES))
    assert fm.place(fmap, new[0]).shape == (1, 2)  # one feature vector alone
    assert fm.place(fmap, new[:0]).shape == (0, 2)
    with pytest.raises(ValueError, match="do not fit"):
        fm.place(fmap, new[:, :5])


def test_too_few_items_refused():
    features, labels, _ = clusters(per_class=1)
    with pytest.raises(fm.MapError, match="at least"):
        fm.build(features[:5], labels[:5], labels[:5], np.arange(5))


def test_map_items_are_stratified():
    labels = np.repeat(np.arange(CLASSES), 1000)
    index = fm.map_items(labels, 5000)
    assert len(index) == 5000 and np.all(np.bincount(labels[index]) == 500)
    assert np.array_equal(index, np.sort(index))
    assert len(fm.map_items(labels[:128], 5000)) == 128  # a smaller test set: all of it


@pytest.fixture(scope="module")
def stored_run(tiny_run, tiny_dataset, tmp_path_factory):
    """A copy of the tiny run with its map stored (the Keras model's features of 128 test items)."""
    run = tmp_path_factory.mktemp("map") / "run"
    shutil.copytree(tiny_run, run)
    messages: list[str] = []
    info = fm.store(run, tiny_dataset, progress=messages.append)
    return run, info, messages


@pytest.mark.slow
def test_store_and_load_round_trip(stored_run, tiny_dataset):
    from fmnist.runs import load_test_probs, manifest_files, verify_run

    run, info, messages = stored_run
    assert info["format"] == fm.FORMAT and info["items"] == len(tiny_dataset.y_test)
    assert any("t-SNE" in m for m in messages)
    assert verify_run(run).usable and verify_run(run).bundles["map"] == "ok"
    assert {f"map/{fm.MAP_FILE}", f"map/{fm.INFO_FILE}"} <= set(manifest_files(run))
    assert (run / "map" / fm.MAP_FILE).stat().st_size < 1_000_000
    fmap = fm.load(run)
    assert fmap is not None and fmap.coords.shape == (len(tiny_dataset.y_test), 2)
    assert np.array_equal(fmap.labels, tiny_dataset.y_test[fmap.index])
    assert np.array_equal(fmap.predictions, load_test_probs(run)[fmap.index].argmax(1))
    # a mapped item's own features put it among its neighbours: on the map, near its own position
    from fmnist.explain import penultimate_features
    from fmnist.keras_backend import load_model

    features, _ = penultimate_features(load_model(run), tiny_dataset.x_test[fmap.index[:20]])
    placed = fm.place(fmap, features)
    spread = np.linalg.norm(fmap.coords.max(0) - fmap.coords.min(0))
    assert np.median(np.linalg.norm(placed - fmap.coords[:20], axis=1)) < 0.2 * spread


@pytest.mark.slow
def test_store_is_idempotent(stored_run, tiny_dataset, monkeypatch):
    run, info, _ = stored_run
    before = (run / "map" / fm.MAP_FILE).read_bytes()

    def fail(*args, **kwargs):
        raise AssertionError("an intact map must not be computed again")

    monkeypatch.setattr(fm, "compute", fail)
    assert fm.store(run, tiny_dataset) == info
    assert (run / "map" / fm.MAP_FILE).read_bytes() == before


@pytest.mark.slow
def test_tampered_map_refused(stored_run, tmp_path):
    run, _, _ = stored_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    target = copy / "map" / fm.MAP_FILE
    data = bytearray(target.read_bytes())
    data[-20] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(fm.MapError) as err:
        fm.load(copy)
    assert "refusing the feature map" in str(err.value) and "\n" not in str(err.value)
    # a bundle whose own manifest was rewritten to match still disagrees with the run's manifest
    from fmnist.runs import BUNDLE_MANIFEST, build_manifest, BUNDLE_FORMAT

    (copy / "map" / BUNDLE_MANIFEST).write_text(json.dumps(build_manifest(copy / "map", BUNDLE_FORMAT)))
    with pytest.raises(fm.MapError, match="does not match the manifest"):
        fm.load(copy)


@pytest.mark.slow
def test_run_without_map(tiny_run):
    assert not fm.has_map(tiny_run) and fm.load(tiny_run) is None


@pytest.mark.slow
def test_training_stores_trust_and_map(tiny_dataset, tmp_path):
    """A new run explains itself: training ends by storing the trust bundle and the map, verified."""
    from fmnist import trust
    from fmnist.runs import verify_run
    from fmnist.training import TrainConfig, train

    events: list[dict] = []
    result = train(TrainConfig(arch="paper", epochs=1, batch_size=64), tiny_dataset, runs_root=tmp_path,
                   listeners=[events.append], export=False, trust=True)
    assert result.status == "completed", result.message
    messages = [e["message"] for e in events if e["kind"] == "status"]
    assert any(m.startswith("Calibrating") for m in messages)
    assert any(m.startswith("Computing the feature map") for m in messages)
    assert not any("failed" in m for m in messages), messages
    info = verify_run(result.run_dir)
    assert info.usable and info.bundles == {"trust": "ok", "map": "ok"}
    assert trust.load(result.run_dir).temperature > 0
    fmap = fm.load(result.run_dir)
    assert fmap is not None and len(fmap.coords) == len(tiny_dataset.y_test)
    assert events[-1]["kind"] == "finished"  # announced after the extras, so the run is complete


@pytest.mark.slow
def test_training_keeps_the_run_when_an_extra_fails(tiny_dataset, tmp_path):
    """No validation split: no temperature can be fitted; the run is still saved, with its map."""
    from fmnist import trust
    from fmnist.runs import verify_run
    from fmnist.training import TrainConfig, train

    events: list[dict] = []
    result = train(TrainConfig(arch="paper", epochs=1, batch_size=64, val_fraction=0.0), tiny_dataset,
                   runs_root=tmp_path, listeners=[events.append], export=False, trust=True)
    assert result.status == "completed", result.message
    failed = [e["message"] for e in events if e["kind"] == "status" and "failed" in e["message"]]
    assert len(failed) == 1 and "python -m fmnist.trust --run" in failed[0]
    assert verify_run(result.run_dir).usable and not trust.has_trust(result.run_dir)
    assert fm.load(result.run_dir) is not None


def test_quick_runs_get_smaller_maps():
    assert fm.items_for(None) == fm.ITEMS
    assert fm.items_for(300) == fm.MIN_QUICK_ITEMS
    assert fm.items_for(8000) == 2000 and fm.items_for(50_000) == fm.ITEMS


# ---- the figures the Results page draws from the map and the calibration ----------------------------

def test_feature_map_figure_traces_filters_and_placed_inputs():
    from fmnist.charts import feature_map_figure

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(CLASSES), 5)
    predictions = labels.copy()
    predictions[[0, 7, 12]] = 9  # three mistakes (one of them true class 0, one class 1, one class 2)
    coords, index = rng.normal(size=(len(labels), 2)), np.arange(100, 100 + len(labels))
    fig = feature_map_figure(coords, labels, predictions, index, np.full(len(labels), 0.5))
    assert [t.type for t in fig.data] == ["scattergl"] * 11
    assert fig.data[-1].name == "mistakes (3)" and sorted(fig.data[-1].customdata[:, 0]) == [100, 107, 112]
    assert all(len(t.x) == 5 for t in fig.data[:10])
    assert fig.data[0].text[0] == "#100 T-shirt/top → Ankle boot (50%)"
    only = feature_map_figure(coords, labels, predictions, index, classes=[1], mistakes_only=True,
                              placed=np.zeros((1, 2)), placed_names=["upload.png"])
    assert [t.name for t in only.data] == ["Trouser", "mistakes (1)", "your input"]
    assert list(only.data[0].customdata[:, 0]) == [107] and list(only.data[2].text) == ["upload.png"]


def test_reliability_figure_draws_the_filled_bins():
    from fmnist import calibration
    from fmnist.charts import reliability_figure

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(10, 0.3), size=500).astype(np.float32)
    labels = rng.integers(0, 10, size=500)
    before = calibration.reliability_diagram(probs, labels)
    after = calibration.reliability_diagram(calibration.apply_temperature(probs, 2.0), labels)
    fig = reliability_figure(before, after, 2.0)
    assert [t.name for t in fig.data] == ["perfectly calibrated", "as answered", "after temperature scaling (T = 2.000)"]
    filled = before["count"] > 0
    assert np.allclose(fig.data[1].x, before["confidence"][filled])
    assert np.allclose(fig.data[1].y, before["accuracy"][filled])
    assert len(reliability_figure(before).data) == 2


def test_selected_customdata_reads_both_forms_plotly_sends():
    from fmnist.charts import selected_customdata

    typed = {"selection": {"points": [{"customdata": {"0": 7, "1": 3, "2": 5}}]}}  # from a NumPy array
    listed = {"selection": {"points": [{"customdata": [2, 4, 9]}]}}
    assert selected_customdata(typed) == [[7, 3, 5]]
    assert selected_customdata(listed) == [[2, 4, 9]]
    assert selected_customdata({"selection": {"points": []}}) == []
    assert selected_customdata({"selection": {"points": [{"x": 1}]}}) == []
    assert selected_customdata(None) == []


def test_faithfulness_on_separated_clusters(synthetic_map):
    fmap, centres = synthetic_map
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(CLASSES), 3)
    extra = np.abs(centres[labels] + rng.normal(0, 0.15, size=(len(labels), DIMS))).astype(np.float32)
    # the whole "test set": the mapped items' own features (index 0..299) and 30 more left off the map
    features, mapped_labels, _ = clusters()
    all_features = np.concatenate([features, extra])
    all_labels = np.concatenate([mapped_labels, labels])
    found = fm.faithfulness(fmap, all_features, all_labels, all_labels)
    assert found["points"] == CLASSES * PER_CLASS and found["placed_items"] == len(labels)
    assert found["map_nearest_same_label"] > 0.95
    assert found["placed_nearest_same_label"] > 0.95 and found["placed_nearest_same_answer"] > 0.95
    assert found["own_position_error"] < 0.05
