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
