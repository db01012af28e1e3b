"""OpenVINO export: layout, manifest, idempotency, automatic export after training, CLI errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from fmnist import data as fdata
from fmnist import export as fexport
from fmnist.runs import MANIFEST, checked_run, read_json, verify_run

pytestmark = pytest.mark.slow  # trains and exports a run (FP32 and INT8)

CONFIG = dict(arch="modern", widths=[8, 16, 16], epochs=2, batch_size=64, learning_rate=3e-3, seed=1)


@pytest.fixture(scope="module")
def dataset():
    return fdata.synthetic_dataset(n_train=512, n_test=200, seed=3)


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory, dataset):
    """A tiny run trained on synthetic data; training exports it automatically (export=True)."""
    from fmnist.training import TrainConfig, train

    events = []
    result = train(TrainConfig(**CONFIG), dataset, runs_root=tmp_path_factory.mktemp("runs"),
                   listeners=[events.append])
    assert result.status == "completed", result.message
    messages = [e["message"] for e in events if e["kind"] == "status"]
    assert "exporting to OpenVINO (FP32 and INT8)" in messages
    assert not any("export failed" in m for m in messages), messages
    return result.run_dir


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, exported_run):
    """The same run as it was before its export: openvino/ removed from the folder and the manifest."""
    from fmnist.runs import atomic_write_json

    run = tmp_path_factory.mktemp("plain") / exported_run.name
    shutil.copytree(exported_run, run)
    shutil.rmtree(run / "openvino")
    manifest = read_json(run / MANIFEST)
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("openvino/")}
    atomic_write_json(run / MANIFEST, manifest)
    assert verify_run(run).usable
    return run


def test_training_exports_every_part_listed_in_the_manifest(exported_run):
    files = read_json(exported_run / MANIFEST)["files"]
    for part in ("fp32", "int8", "ovms"):
        for rel in fexport.IR_FILES[part]:
            assert rel in files and (exported_run / rel).is_file()
    assert fexport.EXPORT_JSON in files
    assert checked_run(exported_run).usable
    info = fexport.read_export_info(exported_run)
    assert info["source_sha256"] == files["model.keras"]["sha256"]
    assert info["fp32"]["compress_to_fp16"] is False
    assert info["fp32"]["max_prob_diff_vs_keras"] <= 1e-4
    assert info["int8"]["calibration_images"] >= fexport.MIN_CALIBRATION
    assert info["int8"]["calibration_source"] == "training set"
    # the OVMS repository holds the FP32 model as version 1
    for fp32, ovms in zip(fexport.IR_FILES["fp32"], fexport.IR_FILES["ovms"]):
        assert (exported_run / fp32).read_bytes() == (exported_run / ovms).read_bytes()
    # compress_to_fp16=False: no f16 constants in the FP32 IR
    assert 'element_type="f16"' not in (exported_run / fexport.IR_FILES["fp32"][0]).read_text()
    assert files[fexport.IR_FILES["int8"][1]]["bytes"] < files[fexport.IR_FILES["fp32"][1]]["bytes"]


def test_export_is_idempotent_and_force_rewrites(exported_run, tmp_path, dataset):
    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    manifest_before = (run / MANIFEST).read_bytes()
    again = fexport.export_run(run, calibration_images=dataset.x_train)
    assert again["exported"] is False
    assert (run / MANIFEST).read_bytes() == manifest_before
    forced = fexport.export_run(run, int8=False, force=True)
    assert forced["exported"] is True
    assert verify_run(run).usable
    before = json.loads(manifest_before)["files"]
    after = read_json(run / MANIFEST)["files"]
    # same model, deterministic conversion: the FP32 IR is byte-identical
    assert after[fexport.IR_FILES["fp32"][1]] == before[fexport.IR_FILES["fp32"][1]]
    # an FP32-only re-export keeps the still-matching INT8 model
    assert after[fexport.IR_FILES["int8"][1]] == before[fexport.IR_FILES["int8"][1]]
    assert forced["int8"] == fexport.read_export_info(exported_run)["int8"]
    assert fexport.is_exported(run, int8=True)


def test_cli_fp32_only_then_int8_then_up_to_date(plain_run, tmp_path, capsys, monkeypatch, dataset):
    from fmnist.backends import BackendError, get_backend
    from fmnist.cli import main

    run = tmp_path / "run"
    shutil.copytree(plain_run, run)
    assert fexport.read_export_info(run) is None
    assert main(["export", str(run), "--no-int8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["exported"] is True and out["int8"] is None
    assert not (run / "openvino" / "int8").exists()
    assert fexport.is_exported(run, int8=False) and not fexport.is_exported(run, int8=True)
    with pytest.raises(BackendError, match="no OpenVINO INT8 export.*--int8"):
        get_backend(run, "openvino-int8", cache=False)

    data_dir = tmp_path / "data"
    seen = []

    def fake_load(d=None, **kw):  # the export loads training images for calibration from --data-dir
        seen.append(d)
        return fdata.Dataset(dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, "synthetic")

    monkeypatch.setattr(fdata, "load_fashion_mnist", fake_load)
    assert main(["export", str(run), "--data-dir", str(data_dir)]) == 0
    assert "int8: calibrated on" in capsys.readouterr().out
    assert seen == [str(data_dir)]
    info = fexport.read_export_info(run)
    assert info["int8"]["calibration_images"] >= fexport.MIN_CALIBRATION
    assert fexport.is_exported(run, int8=True) and verify_run(run).usable
    assert main(["export", str(run)]) == 0
    assert "up to date" in capsys.readouterr().out


def test_too_few_calibration_images_and_no_data_is_a_clear_error(plain_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(plain_run, run)
    monkeypatch.setenv(fdata.ENV_VAR, str(tmp_path / "no-data-here"))
    few = np.zeros((50, 28, 28), np.uint8)
    with pytest.raises(fexport.ExportError, match=f"at least {fexport.MIN_CALIBRATION}.*--no-int8"):
        fexport.export_run(run, calibration_images=few)
    assert fexport.read_export_info(run) is None  # nothing half-written
    assert verify_run(run).usable


def test_cli_errors_are_one_line(tmp_path, exported_run, capsys):
    from fmnist.cli import main

    assert main(["export", str(tmp_path / "missing-run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    (run / "model.keras").write_bytes(b"not a model")
    assert main(["export", str(run), "--force"]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.keras" in err and "\n" not in err
