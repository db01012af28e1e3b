"""Trust artifacts (issue 14): temperature, unfamiliar-score thresholds and the nearest-neighbour
reference, computed once per run, stored in its `trust/` bundle and refused when tampered with."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from fmnist import calibration as cal
from fmnist import trust
from fmnist.runs import verify_run
from tests import prereq


@pytest.fixture(scope="module")
def trusted_run(tiny_run, tiny_dataset, tmp_path_factory):
    """A copy of the tiny run with its trust artifacts stored (the session's tiny_run stays as trained)."""
    run = tmp_path_factory.mktemp("trusted") / tiny_run.name
    shutil.copytree(tiny_run, run)
    info = trust.store(run, tiny_dataset)
    return run, info


def tampered_copy(run, tmp_path, rel, edit):
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    target = copy / rel
    target.write_bytes(edit(target.read_bytes()))
    return copy


def test_artifacts_are_stored_verified_and_recorded_in_the_manifests(trusted_run):
    run, info = trusted_run
    checked = verify_run(run)
    assert checked.usable and checked.bundles.get("trust") == "ok", checked.reason
    manifest = json.loads((run / "manifest.json").read_text())["files"]
    assert {"trust/trust.json", "trust/reference.npz"} <= set(manifest)
    loaded = trust.load(run)
    assert loaded.temperature == pytest.approx(info["temperature"]) and loaded.temperature > 0
    assert set(loaded.thresholds) == {"knn", "first_stage"} and min(loaded.thresholds.values()) > 0
    # the reference is the run's own training split: 90% of the 512 synthetic items, with their labels
    assert loaded.reference.shape == (len(loaded.labels), trust.DIMS) and len(loaded.labels) > 400
    assert loaded.reference.dtype == np.float16
    assert set(loaded.labels.tolist()) == set(range(10))
    assert len(set(loaded.train_index.tolist())) == len(loaded.train_index) < 512


def test_thresholds_flag_the_chosen_fraction_of_validation(trusted_run):
    run, info = trusted_run
    validation = info["validation"]
    assert validation["items"] > 10
    # each signal's threshold is its (1 - fraction) quantile of validation: it flags at most
    # ceil(fraction x items) of them, and at least the one top item on a small split; at most their sum
    n = validation["items"]
    most = sum(max(1, math.ceil(f * n)) for f in trust.FLAG_FRACTIONS.values()) / n
    assert 0.0 < validation["flagged"] <= most
    assert 0.0 <= validation["ece"] <= 1.0 and 0.0 <= validation["ece_uncalibrated"] <= 1.0


def test_training_items_are_their_own_nearest_neighbours_and_noise_is_unfamiliar(trusted_run, tiny_dataset):
    from fmnist.backends import get_backend

    run, _ = trusted_run
    loaded = trust.load(run)
    backend = get_backend(run, "keras", cache=False, tta=False)
    rows = np.arange(5)
    images = tiny_dataset.x_train[loaded.train_index[rows]]
    features = trust.backend_features(backend, images)
    nearest = trust.nearest_items(loaded, features, k=3)
    assert [n[0]["index"] for n in nearest] == loaded.train_index[rows].tolist()
    assert [n[0]["label"] for n in nearest] == tiny_dataset.y_train[loaded.train_index[rows]].tolist()
    assert all(n[0]["distance"] < 0.05 and n[0]["distance"] <= n[1]["distance"] <= n[2]["distance"] for n in nearest)
    noise = np.random.default_rng(0).integers(0, 256, (8, 28, 28)).astype(np.uint8)
    probs = backend.predict_proba(noise)
    found = trust.assess(loaded, backend, noise, probs)
    assert found["unfamiliar"].all() and (found["unfamiliar_score"] > 1.0).all()
    # calibration keeps every answer and sums to one
    assert np.allclose(found["probabilities"].sum(axis=1), 1.0, atol=1e-5)
    assert (found["probabilities"].argmax(axis=1) == probs.argmax(axis=1)).all()
    assert np.allclose(found["probabilities"], cal.apply_temperature(probs, loaded.temperature))


@pytest.mark.parametrize("rel", ["trust/trust.json", "trust/reference.npz"])
def test_a_tampered_file_is_refused(trusted_run, tmp_path, rel):
    run, _ = trusted_run
    copy = tampered_copy(run, tmp_path, rel, lambda data: data[:-40] + bytes(40))  # same size, new bytes
    with pytest.raises(trust.TrustError, match="sha256|modified"):
        trust.load(copy)
    assert verify_run(copy).bundles["trust"] != "ok"


def test_a_tampered_file_with_a_rewritten_bundle_manifest_is_refused_by_the_run_manifest(trusted_run, tmp_path):
    from fmnist.runs import BUNDLE_MANIFEST, build_manifest

    run, _ = trusted_run
    copy = tampered_copy(run, tmp_path, "trust/trust.json",
                         lambda data: data.replace(b'"temperature": ', b'"temperature": 9'))
    (copy / "trust" / BUNDLE_MANIFEST).write_text(json.dumps(build_manifest(copy / "trust")))
    with pytest.raises(trust.TrustError, match="does not match the manifest"):
        trust.load(copy)


def test_missing_or_extra_files_are_refused(trusted_run, tmp_path):
    run, _ = trusted_run
    copy = tmp_path / "missing"
    shutil.copytree(run, copy)
    (copy / "trust" / "reference.npz").unlink()
    with pytest.raises(trust.TrustError, match="missing"):
        trust.load(copy)
    extra = tmp_path / "extra"
    shutil.copytree(run, extra)
    (extra / "trust" / "notes.pkl").write_bytes(b"\x80\x04")
    with pytest.raises(trust.TrustError, match="unexpected file"):
        trust.load(extra)


def test_a_run_without_artifacts_says_how_to_make_them(tiny_run):
    assert not trust.has_trust(tiny_run)
    with pytest.raises(trust.TrustError, match="no trust artifacts: run `python -m fmnist.trust"):
        trust.load(tiny_run)


def test_explanations_give_a_map_neighbours_and_the_unfamiliar_fields(trusted_run, tiny_dataset):
    from fmnist.backends import get_backend
    from fmnist.explanations import explain_images, heatmap_text

    run, _ = trusted_run
    backend = get_backend(run, "keras", cache=False, tta=False)
    images = np.concatenate([tiny_dataset.x_test[:2], np.full((1, 28, 28), 255, np.uint8)])
    found = explain_images(run, backend, images, neighbours=3)
    assert len(found) == 3
    probs = backend.predict_proba(images)
    for item, raw in zip(found, probs):
        assert item["method"] == "occlusion" and np.asarray(item["heatmap"]).shape == (28, 28)
        assert item["label"] == int(raw.argmax()) == int(np.argmax(item["probabilities"]))
        assert abs(sum(item["probabilities"]) - 1) < 1e-4
        assert [set(n) for n in item["nearest"]] == [{"index", "label", "distance"}] * 3
        assert isinstance(item["unfamiliar"], bool) and item["unfamiliar"] == (item["unfamiliar_score"] > 1.0)
    assert found[2]["unfamiliar"]  # a plain white square is no garment
    art = heatmap_text(found[0]["heatmap"])
    assert len(art) == 14 and all(len(row) == 30 for row in art) and "@" in "".join(art)
    with pytest.raises(ValueError, match="neighbours"):
        explain_images(run, backend, images, neighbours=0)


def test_predict_fields_for_a_run_without_artifacts_are_null_and_raw(tiny_run, tiny_dataset):
    from fmnist.backends import get_backend

    backend = get_backend(tiny_run, "keras", cache=False, tta=False)
    images = tiny_dataset.x_test[:3]
    probs = backend.predict_proba(images)
    fields = trust.answer_fields(tiny_run, backend, images, probs)
    assert [f["unfamiliar"] for f in fields] == [None] * 3 and not any(f["calibrated"] for f in fields)
    assert np.allclose(np.stack([f["probabilities"] for f in fields]), probs)


def test_calibration_fields_use_the_stored_temperature(trusted_run, tiny_dataset):
    from fmnist.runs import load_test_probs

    run, info = trusted_run
    probs = load_test_probs(run)
    fields = trust.calibration_fields(run, probs, tiny_dataset.y_test)
    assert fields["temperature"] == pytest.approx(info["temperature"])
    assert fields["ece"] == pytest.approx(cal.expected_calibration_error(
        cal.apply_temperature(probs, info["temperature"]), tiny_dataset.y_test))
    assert fields["ece_uncalibrated"] == pytest.approx(cal.expected_calibration_error(probs, tiny_dataset.y_test))
    unknown = trust.calibration_fields(run, probs, tiny_dataset.y_test[:5])  # labels of another test set
    assert unknown["ece"] is None and unknown["temperature"] == fields["temperature"]


def write_development_photos(root, tiny_dataset):
    """Small development photo folders like ../shared/data's: catalogue-style photos of synthetic items
    (dark item on white, the recipe's input) as familiar photos, and bright discs on colour as hats."""
    from PIL import Image, ImageDraw

    for sub, count in (("product-photos", 12), ("clothing-photos", 12), ("unfamiliar-photos", 12)):
        (root / sub).mkdir(parents=True)
        for i in range(count):
            if sub == "unfamiliar-photos":
                photo = Image.new("RGB", (120, 120), (40 + 15 * i, 90, 160))
                ImageDraw.Draw(photo).ellipse((20 + i, 25, 100 - i, 95), fill=(250, 240, 120))
            else:
                item = 255 - tiny_dataset.x_test[i + (12 if sub == "clothing-photos" else 0)]
                photo = Image.fromarray(item).resize((112, 112)).convert("RGB")
            photo.save(root / sub / f"{i}.png")
    return root


def test_with_development_photos_an_outlier_exposure_detector_is_fitted_stored_and_used(
        tiny_run, tiny_dataset, tmp_path):
    from fmnist.backends import get_backend

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    photos = write_development_photos(tmp_path / "photos", tiny_dataset)
    info = trust.store(run, tiny_dataset, photos_dir=photos)
    assert info["format"] == trust.FORMAT and set(info["thresholds"]) == {"detector", "knn", "first_stage"}
    assert info["flag_fractions"] == trust.DETECTOR_FLAG_FRACTIONS
    familiar = info["detector"]["familiar"]
    assert set(familiar) == {"training_items", "clothing_photos", "product_photos"}
    assert familiar["clothing_photos"] == familiar["product_photos"] == 12
    assert 400 < familiar["training_items"] < 512  # the run's training split (smaller than DETECTOR_TRAIN_ITEMS)
    assert set(info["detector"]["unfamiliar"]) == {"digits", "digit_photos", "noise", "noise_photos", "hats"}
    assert verify_run(run).bundles.get("trust") == "ok"
    loaded = trust.load(run)
    assert loaded.detector is not None and loaded.detector.weights.shape == (trust.reference_width(
        {"mean": loaded.projection.mean, "first_means": loaded.first_stage.means}),)
    backend = get_backend(run, "keras", cache=False, tta=False)
    from fmnist.devsets import photo_inputs
    hats = photo_inputs(photos / "unfamiliar-photos")
    found = trust.assess(loaded, backend, hats, backend.predict_proba(hats))
    assert found["unfamiliar"].mean() >= 0.75  # the detector learned them (in-sample, so a loose floor)
    # a bundle whose detector threshold is gone but whose weights stay is refused as malformed
    from fmnist.runs import add_files

    broken = json.loads((run / "trust" / "trust.json").read_text())
    del broken["thresholds"]["detector"]
    copy = tmp_path / "broken" / run.name
    shutil.copytree(run, copy)
    add_files(copy, {"trust/trust.json": json.dumps(broken).encode()})  # recorded in the manifests: only the content is wrong
    with pytest.raises(trust.TrustError, match="malformed"):
        trust.load(copy)


def test_without_development_photos_no_detector_is_fitted(tiny_run, tiny_dataset, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (tmp_path / "empty").mkdir()
    info = trust.store(run, tiny_dataset, photos_dir=tmp_path / "empty")
    assert info["detector"] is None and set(info["thresholds"]) == {"knn", "first_stage"}
    assert trust.load(run).detector is None


# ---- the command line with the shipped model ---------------------------------------------------

def run_cli(*args: str, importtime: bool = False):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "FMNIST_DATA_DIR": str(prereq.require_data())}
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "fmnist", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def shipped_images(tmp_path_factory):
    """Three test-set items as PNGs (an ankle boot, a pullover, a trouser) and their labels."""
    from PIL import Image

    from fmnist.data import load_fashion_mnist

    prereq.require_shipped_model()
    ds = load_fashion_mnist(prereq.require_data())
    folder = tmp_path_factory.mktemp("items")
    paths = []
    for i in range(3):
        paths.append(folder / f"item{i}.png")
        Image.fromarray(ds.x_test[i]).resize((112, 112)).save(paths[-1])
    return paths, ds.y_test[:3]


@pytest.mark.slow
def test_predict_json_reports_calibrated_probabilities_and_unfamiliar_fields_without_tensorflow(shipped_images):
    from fmnist.backends import get_backend
    from fmnist.preprocess import load_for_model
    from fmnist.runs import DEFAULT_MODEL_DIR

    paths, labels = shipped_images
    done = run_cli("predict", *map(str, paths), "--json", importtime=True)
    assert done.returncode == 0, done.stderr[-2000:]
    modules = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "openvino" in modules
    assert not any(m.split(".")[0] in ("tensorflow", "keras") for m in modules)
    answers = json.loads(done.stdout)
    raw = get_backend(DEFAULT_MODEL_DIR, "openvino-fp32").predict_proba(np.stack([load_for_model(p).input for p in paths]))
    loaded = trust.load(DEFAULT_MODEL_DIR)
    assert [a["label"] for a in answers[:2]] == labels[:2].tolist()  # an ankle boot and a pullover
    for answer, row in zip(answers, raw):
        assert answer["backend"] == "openvino-fp32" and answer["calibrated"] is True
        assert abs(sum(answer["probabilities"]) - 1) < 1e-4
        # the temperature changes how sure, never which class
        assert answer["label"] == int(np.argmax(answer["probabilities"])) == int(row.argmax())
        assert np.allclose(answer["probabilities"], cal.apply_temperature(row[None], loaded.temperature)[0], atol=1e-5)
        assert answer["unfamiliar"] is False and 0 < answer["unfamiliar_score"] < 1.0


@pytest.mark.slow
def test_explain_json_and_plain_output(shipped_images, tmp_path):
    from PIL import Image

    paths, labels = shipped_images
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (112, 112)).astype(np.uint8)).save(noise)
    done = run_cli("explain", str(paths[0]), str(paths[1]), str(noise), "--json", "--neighbours", "3")
    assert done.returncode == 0, done.stderr[-2000:]
    items = json.loads(done.stdout)
    assert [i["file"] for i in items] == [str(paths[0]), str(paths[1]), str(noise)]
    for item, label in zip(items[:2], labels):
        assert item["method"] == "occlusion" and np.asarray(item["heatmap"]).shape == (28, 28)
        assert item["label"] == label and abs(sum(item["probabilities"]) - 1) < 1e-4
        assert len(item["nearest"]) == 3 and item["nearest"][0]["label"] == label
        assert all(0 <= n["index"] < 60_000 for n in item["nearest"])
        assert item["unfamiliar"] is False
    assert items[2]["unfamiliar"] is True and items[2]["unfamiliar_score"] > 1.0
    plain = run_cli("explain", str(paths[0]))
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert "nearest training items" in plain.stdout and "unfamiliar" in plain.stdout
    assert sum(line.startswith("  |") for line in plain.stdout.splitlines()) == 14  # the heat map


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["explain", "/no/such.png"], "no such file or folder"),
    (["explain", "--neighbours", "0", "x.png"], "--neighbours must be between 1 and 50"),
    (["explain", "--run", "no-such-run", "x.png"], "no-such-run"),
])
def test_explain_bad_input_is_one_line(args, message):
    done = run_cli(*args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_evaluate_json_reports_calibration():
    done = run_cli("evaluate", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["temperature"] == pytest.approx(trust.load(prereq.require_shipped_model()).temperature)
    assert 0 <= out["ece"] < out["ece_uncalibrated"] <= 1
