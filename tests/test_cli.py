"""The command line as a user runs it: exit codes, one-line errors, JSON output."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fmnist.data import ALL_FILE_NAMES


def fmnist(*args, env=None, timeout=300):
    import os

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "fmnist", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


@pytest.mark.slow
def test_help_for_every_subcommand():
    top = fmnist("--help")
    assert top.returncode == 0
    for command in ("train", "evaluate", "runs", "predict"):
        assert command in top.stdout
        sub = fmnist(command, "--help")
        assert sub.returncode == 0 and "usage:" in sub.stdout


@pytest.mark.slow
def test_train_with_empty_data_dir_names_files_and_env_var(tmp_path):
    proc = fmnist("train", "--epochs", "1", env={"FMNIST_DATA_DIR": str(tmp_path)})
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    for name in ALL_FILE_NAMES:
        assert name in proc.stderr
    assert "FMNIST_DATA_DIR" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("flags,message", [
    (["--epochs", "1000000"], "epochs must be between"),
    (["--batch-size", "0"], "batch size must be between"),
    (["--lr", "nan"], "finite"),
    (["--arch", "resnet"], "invalid choice"),
])
def test_train_rejects_bad_hyperparameters(flags, message):
    proc = fmnist("train", *flags)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_evaluate_runs_and_predict_on_a_tiny_run(tiny_run, tmp_path):
    proc = fmnist("evaluate", str(tiny_run), "--json")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    assert np.array(metrics["confusion_matrix"]).sum() == metrics["n_test"] == 128

    listing = fmnist("runs", "--json", "--runs-dir", str(tiny_run.parent))
    rows = json.loads(listing.stdout)
    assert any(r["name"] == tiny_run.name and r["status"] == "completed" for r in rows)

    image = tmp_path / "item.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    text_file = tmp_path / "notes.png"
    text_file.write_text("this is not an image")
    pred = fmnist("predict", "--run", str(tiny_run), "--json", str(image), str(text_file))
    assert pred.returncode == 2  # one file failed
    out = json.loads(pred.stdout)
    ok = [r for r in out if "label" in r]
    assert len(ok) == 1 and ok[0]["file"] == str(image)
    assert len(ok[0]["probabilities"]) == 10 and abs(sum(ok[0]["probabilities"]) - 1) < 1e-3
    assert ok[0]["class_name"]
    assert any(r.get("file") == str(text_file) and r.get("error") for r in out)
    assert "Traceback" not in pred.stderr


@pytest.mark.slow
def test_missing_run_is_a_one_line_error():
    proc = fmnist("evaluate", "no-such-run-xyz")
    assert proc.returncode == 2 and "no run called" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.integration
def test_paper_one_epoch_on_real_data_writes_a_complete_run(real_data_dir, tmp_path):
    proc = fmnist("train", "--preset", "paper", "--epochs", "1", "--limit", "3000", "--no-export",
                  "--runs-dir", str(tmp_path), env={"FMNIST_DATA_DIR": str(real_data_dir)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = proc.stdout.strip().splitlines()[-1]
    metrics = json.loads(fmnist("evaluate", run_dir, "--json").stdout)
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 10_000
    assert 0.5 < metrics["test_accuracy"] <= 1.0


@pytest.fixture(scope="module")
def quick_real_run(real_dataset, tmp_path_factory):
    """A run trained before the trust bundle existed, as first use meets it: 1 epoch on 600 real
    training items, no export (so no trust/ or map/), its test answers covering the real test set."""
    from fmnist.training import TrainConfig, train
    from fmnist.trust import has_trust

    root = tmp_path_factory.mktemp("quick-runs")
    result = train(TrainConfig(arch="paper", epochs=1, batch_size=64, limit=600), real_dataset, runs_root=root,
                   export=False)
    assert result.status == "completed", result.message
    assert not has_trust(result.run_dir)
    return result.run_dir


def _copy_run(run, tmp_path):
    import shutil

    copy = tmp_path / "runs" / run.name
    shutil.copytree(run, copy)
    return copy


def _item_png(tmp_path, real_dataset=None):
    image = tmp_path / "item.png"
    pixels = real_dataset.x_test[0] if real_dataset is not None else np.zeros((28, 28), np.uint8)
    Image.fromarray(255 - pixels).save(image)  # dark on light, like a product photo
    return image


@pytest.mark.slow
@pytest.mark.integration
def test_predict_on_a_run_without_trust_computes_it_on_first_use(quick_real_run, real_dataset, real_data_dir,
                                                                  tmp_path):
    from fmnist.calibration import apply_temperature
    from fmnist.runs import verify_run
    from fmnist.trust import load

    image = _item_png(tmp_path, real_dataset)
    env = {"FMNIST_DATA_DIR": str(real_data_dir)}
    raw = fmnist("predict", "--run", str(quick_real_run), "--json", "--no-first-use", str(image), env=env)
    assert raw.returncode == 0, raw.stderr
    assert json.loads(raw.stdout)[0]["calibrated"] is False and "first use" not in raw.stderr

    run = _copy_run(quick_real_run, tmp_path)
    first = fmnist("predict", "--run", str(run), "--json", str(image), env=env)
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    lines = [line for line in first.stderr.splitlines() if line.startswith("first use of")]
    assert lines[0] == (f"first use of {run.name}: computing its calibration and unfamiliar-input thresholds "
                        "(once, stored with the run) ...")
    assert any("step 1 of 1, calibration and unfamiliar-input thresholds: features of" in line for line in lines)
    assert any(line.startswith(f"first use of {run.name}: done in ") for line in lines), lines
    (answer,) = json.loads(first.stdout)  # stdout stays pure JSON
    assert answer["calibrated"] is True
    assert isinstance(answer["unfamiliar"], bool) and answer["unfamiliar_score"] > 0
    info = verify_run(run)
    assert info.usable and info.bundles.get("trust") == "ok", info.bundles
    temperature = load(run).temperature
    expected = apply_temperature(np.array([json.loads(raw.stdout)[0]["probabilities"]]), temperature)[0]
    assert np.allclose(answer["probabilities"], expected, atol=1e-4)

    again = fmnist("predict", "--run", str(run), "--json", str(image), env=env)  # stored: computed once
    assert again.returncode == 0 and "first use" not in again.stderr, again.stderr
    assert json.loads(again.stdout)[0]["probabilities"] == answer["probabilities"]
    evaluated = fmnist("evaluate", str(run), "--json", env=env)
    assert evaluated.returncode == 0 and json.loads(evaluated.stdout)["temperature"] == pytest.approx(temperature)


@pytest.mark.slow
def test_first_use_without_the_data_answers_raw_with_one_line(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path)
    image = _item_png(tmp_path)
    missing = tmp_path / "no-data"
    proc = fmnist("predict", "--run", str(run), "--json", "--data-dir", str(missing), str(image))
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"first use of {run.name}: not calibrated, no unfamiliar-input check: ")
    assert str(missing) in lines[0] and f"run `python -m fmnist.trust --run {run}` later" in lines[0]
    (answer,) = json.loads(proc.stdout)
    assert answer["calibrated"] is False and answer["unfamiliar"] is None and answer["unfamiliar_score"] is None
    assert abs(sum(answer["probabilities"]) - 1) < 1e-3
    assert not (run / "trust").exists()

    evaluated = fmnist("evaluate", str(run), "--json", env={"FMNIST_DATA_DIR": str(missing)})
    assert evaluated.returncode == 0, evaluated.stderr
    assert [line for line in evaluated.stderr.splitlines() if line.strip()][0].startswith(f"first use of {run.name}")
    assert json.loads(evaluated.stdout)["temperature"] is None
