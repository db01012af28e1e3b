"""Paths users take that nothing else exercised: every training flag from the command line to
config.json, the training options actually trained (bfloat16, EMA, TensorBoard, label smoothing,
weight decay, warm-up), best-weights restoring, the `bench` subcommands, `predict` without --run,
and the app's Keras worker shared by several callers and killed. Training is on tiny synthetic
data (a few batches); tests that need the real files or the shipped model say so (tests/prereq.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from fmnist.data import make_splits, synthetic_dataset
from fmnist.training import TrainConfig, train
from tests.waits import wait_until

pytestmark = pytest.mark.slow  # every test trains, or starts a process that imports TensorFlow

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(arch="modern", widths=[8, 16, 16], batch_size=32, val_fraction=0.1, seed=3)


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(n_train=640, n_test=160, seed=11)


def _train(data, tmp_path, **changes):
    config = TrainConfig(**{**TINY, "epochs": 1, **changes})
    result = train(config, data, runs_root=tmp_path, export=False)
    assert result.status == "completed", result.message
    return result


def _weights(run_dir: Path) -> list[np.ndarray]:
    from fmnist.backends import KerasBackend

    return [np.asarray(w) for w in KerasBackend(run_dir).model.get_weights()]


def _kernels(weights: list[np.ndarray]) -> float:
    """Root-mean-square of the multi-dimensional weights (kernels; biases and norms aside)."""
    big = np.concatenate([w.ravel() for w in weights if w.ndim >= 2])
    return float(np.sqrt(np.mean(big ** 2)))


def fmnist(*args, env=None, timeout=300, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "fmnist", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})


# ---- command line flags --------------------------------------------------------------------------

@pytest.mark.integration
def test_every_train_flag_reaches_config_json(real_data_dir, tmp_path):
    """Each `train` flag is what the run's config.json records (and the run is complete)."""
    proc = fmnist("train", "--arch", "modern", "--widths", "4,8,8", "--dropout", "0.1,0.2", "--epochs", "1",
                  "--batch-size", "64", "--optimizer", "adamw", "--lr", "0.002", "--schedule", "cosine",
                  "--warmup-epochs", "0.5", "--weight-decay", "0.01", "--label-smoothing", "0.1",
                  "--augment-flip", "--augment-shift", "1", "--augment-scale", "0.05",
                  "--augment-photo", "0.5", "--augment-erase", "0.25", "--ema", "0.9", "--tta-flip", "--tta-shift", "1", "--val-fraction", "0.2", "--seed", "3", "--limit", "500",
                  "--precision", "bfloat16", "--tensorboard", "--no-export",
                  "--data-dir", str(real_data_dir), "--runs-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    from fmnist.openvino_ir import supports_bf16

    # bfloat16 on a CPU without native bf16 is several times slower: the command says so
    assert ("no native bfloat16" in proc.stderr) == (not supports_bf16())
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    config = json.loads((run_dir / "config.json").read_text())
    assert config == {
        "arch": "modern", "widths": [4, 8, 8], "dropout": [0.1, 0.2], "epochs": 1, "batch_size": 64,
        "optimizer": "adamw", "learning_rate": 0.002, "schedule": "cosine", "warmup_epochs": 0.5,
        "weight_decay": 0.01, "label_smoothing": 0.1, "augment_flip": True, "augment_shift": 1,
        "augment_scale": 0.05, "augment_photo": 0.5, "augment_erase": 0.25, "ema": 0.9, "tta_flip": True, "tta_shift": 1, "val_fraction": 0.2, "seed": 3, "limit": 500,
        "precision": "bfloat16", "tensorboard": True, "preset": None,
    }
    from fmnist.runs import verify_run

    info = verify_run(run_dir)
    assert info.status == "completed" and info.reason == "" and info.summary["epochs_done"] == 1
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert not (run_dir / "openvino").exists()  # --no-export
    # a preset with one flag overridden: the preset's other values, the flag's value (the same
    # argument parsing as above, without paying for a second training)
    from fmnist.cli import build_parser, config_from_args

    args = build_parser().parse_args(["train", "--preset", "fast", "--epochs", "1", "--limit", "300",
                                      "--widths", "4,8,8,8", "--no-export"])
    config = config_from_args(args).to_dict()
    assert (config["preset"], config["epochs"], config["widths"], config["optimizer"], config["schedule"]) == (
        "fast", 1, [4, 8, 8, 8], "adamw", "onecycle")


# ---- training options, actually trained --------------------------------------------------------

def test_bfloat16_trains_in_mixed_precision_and_saves_float32(data, tmp_path):
    plain = _train(data, tmp_path, epochs=2, learning_rate=1e-2)
    mixed = _train(data, tmp_path, epochs=2, learning_rate=1e-2, precision="bfloat16")
    assert json.loads((mixed.run_dir / "config.json").read_text())["precision"] == "bfloat16"
    weights = _weights(mixed.run_dir)
    assert all(w.dtype == np.float32 for w in weights)  # the saved model is plain float32
    assert all(np.isfinite(b["loss"]) for b in mixed.history["batches"])
    # bf16 arithmetic really ran: same seed and data, different numbers
    assert not np.allclose(mixed.history["batches"][-1]["loss"], plain.history["batches"][-1]["loss"], rtol=1e-6)
    assert mixed.metrics["test_accuracy"] > 0.5  # and it still learns the synthetic classes


def test_ema_saves_the_averaged_weights(data, tmp_path):
    """With momentum 0.9999 the running average barely leaves the initial weights, so the saved
    model (the average) is close to its start while the plain model has moved away."""
    import keras

    from fmnist.models import build_model

    keras.utils.set_random_seed(TINY["seed"])
    start = [np.asarray(w) for w in build_model("modern", widths=TINY["widths"]).get_weights()]
    plain = _weights(_train(data, tmp_path, epochs=2, learning_rate=5e-3).run_dir)
    averaged = _weights(_train(data, tmp_path, epochs=2, learning_rate=5e-3, ema=0.9999).run_dir)

    def moved(weights):
        return max(float(np.abs(a - b).max()) for a, b in zip(weights, start) if a.ndim >= 2)

    assert moved(plain) > 10 * moved(averaged), (moved(plain), moved(averaged))


def test_label_smoothing_keeps_the_training_loss_above_its_floor(data, tmp_path):
    """Smoothed targets have entropy > 0, so cross-entropy cannot fall below it (0.3 over 10
    classes: 1.18 nats), while plain training on the same easy data goes far lower."""
    eps = 0.3
    target = np.full(10, eps / 10)
    target[0] += 1 - eps
    floor = float(-(target * np.log(target)).sum())
    plain = _train(data, tmp_path, epochs=3, learning_rate=1e-2)
    smooth = _train(data, tmp_path, epochs=3, learning_rate=1e-2, label_smoothing=eps)
    assert plain.history["epochs"][-1]["loss"] < floor - 0.5
    assert smooth.history["epochs"][-1]["loss"] >= floor - 1e-3
    assert smooth.metrics["test_accuracy"] > 0.5


def test_weight_decay_shrinks_the_weights(data, tmp_path):
    plain = _weights(_train(data, tmp_path, epochs=3, optimizer="adamw", learning_rate=1e-2).run_dir)
    decayed = _weights(_train(data, tmp_path, epochs=3, optimizer="adamw", learning_rate=1e-2,
                              weight_decay=0.5).run_dir)
    # AdamW shrinks every weight by lr * decay per step: (1 - 0.005) ** 54 steps = 0.76
    assert _kernels(decayed) < 0.9 * _kernels(plain), (_kernels(decayed), _kernels(plain))


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_warm_up_ramps_the_learning_rate_up_first(data, tmp_path, schedule):
    """warmup_epochs=2 of 4: the rate climbs linearly to its peak over the first two epochs, for
    every schedule (the optimizer's rate at each epoch's end is recorded in history.json)."""
    peak = 4e-3
    result = _train(data, tmp_path, epochs=4, learning_rate=peak, schedule=schedule, warmup_epochs=2.0)
    steps = len(result.history["batches"]) // 4
    rates = [e["learning_rate"] for e in result.history["epochs"]]
    # after epoch k the optimizer has taken k*steps steps; the next step's rate is what it reports
    assert rates[0] == pytest.approx(peak * (steps + 1) / (2 * steps), rel=1e-4)
    assert rates[0] < 0.75 * peak and rates[1] >= 0.99 * peak * (1 if schedule == "constant" else 0.9)
    if schedule == "constant":
        assert rates[2] == pytest.approx(peak) and rates[3] == pytest.approx(peak)
    else:
        assert rates[1] > rates[2] > rates[3]


def test_best_weights_by_validation_accuracy_are_the_ones_saved(data, tmp_path):
    """A stop request in the middle of epoch 3: the saved model is the best full epoch's, whose
    validation loss the saved weights reproduce exactly (the partial epoch's weights would not)."""
    import keras

    stop = threading.Event()

    def listener(event):
        if event["kind"] == "batch" and event["epoch"] == 3 and event["step"] == 3:
            stop.set()

    config = TrainConfig(**{**TINY, "epochs": 10, "learning_rate": 2e-2, "label_smoothing": 0.0})
    result = train(config, data, listeners=[listener], stop_event=stop, runs_root=tmp_path, export=False)
    assert result.status == "stopped", result.message
    epochs = result.history["epochs"]
    full = [e for e in epochs if not e.get("partial")]
    assert len(full) == 2 and epochs[-1].get("partial")
    best = max(full, key=lambda e: e["val_accuracy"])
    summary = json.loads((result.run_dir / "status.json").read_text())
    assert summary["best_epoch"] == best["epoch"]

    from fmnist.backends import KerasBackend

    splits = make_splits(data, config.val_fraction, config.seed, config.limit)
    probs = KerasBackend(result.run_dir).predict_proba(splits.x_val)
    loss = float(keras.losses.CategoricalCrossentropy()(np.eye(10)[splits.y_val], probs))
    assert loss == pytest.approx(best["val_loss"], rel=1e-4)
    assert summary["best_val_accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-6)


# ---- bench subcommands -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported_run(data, tmp_path_factory):
    """A tiny run with its OpenVINO FP32 and INT8 export, as training in the app makes it."""
    config = TrainConfig(**{**TINY, "epochs": 2, "learning_rate": 5e-3})
    result = train(config, data, runs_root=tmp_path_factory.mktemp("exported"), export=True)
    assert result.status == "completed", result.message
    return result.run_dir


@pytest.mark.integration
def test_bench_infer_prints_every_backend(exported_run, real_data_dir):
    proc = fmnist("bench", "infer", "--run", str(exported_run), "--repeats", "3", "--batch-repeats", "1",
                  "--no-bf16", "--json", "--data-dir", str(real_data_dir), timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["images"] == 10_000
    assert {row["backend"] for row in result["batch"]} == {"keras", "openvino-fp32", "openvino-int8"}
    assert all(row["p50_ms"] > 0 and row["calls"] >= 1 for row in result["latency"])
    fp32 = next(row for row in result["batch"] if row["backend"] == "openvino-fp32")
    assert fp32["top1_agreement"] == 1.0


def test_bench_photos_scores_a_folder_of_photos(exported_run, data, tmp_path):
    from PIL import Image

    from fmnist.data import CLASS_NAMES

    folder = tmp_path / "photos"
    for label in (1, 8):
        sub = folder / f"{label}_{CLASS_NAMES[label].lower().replace('/', '-')}"
        sub.mkdir(parents=True)
        for k, index in enumerate(np.flatnonzero(data.y_test == label)[:3]):
            big = Image.fromarray(255 - data.x_test[index]).resize((140, 140))  # dark item on white
            big.save(sub / f"item{k}.png")
    (folder / "1_trouser" / "broken.png").write_bytes(b"not an image at all")
    proc = fmnist("bench", "photos", str(folder), "--run", str(exported_run), "--backend", "openvino-fp32",
                  "--methods", "resize,pipeline", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["images"] == 6 and [s["file"] for s in result["skipped"]] == [str(folder / "1_trouser" / "broken.png")]
    assert set(result["methods"]) == {"resize", "pipeline"}
    for method in result["methods"].values():
        assert 0.0 <= method["accuracy"] <= 1.0 and set(method["per_class"]) == {"Trouser", "Bag"}
    bad = fmnist("bench", "photos", str(tmp_path / "nowhere"), "--run", str(exported_run))
    assert bad.returncode == 2 and "is not a folder" in bad.stderr and "Traceback" not in bad.stderr


def test_bench_train_prints_its_table(monkeypatch, capsys):
    """`bench train --presets fast --epochs 1` end to end, on the tiny data set instead of the
    60,000 images (the loader is swapped; everything else is the subcommand as users run it)."""
    import fmnist.data

    from fmnist.cli import main

    small = synthetic_dataset(n_train=300, n_test=60, seed=12)
    monkeypatch.setattr(fmnist.data, "load_fashion_mnist", lambda *a, **k: small)
    assert main(["bench", "train", "--presets", "fast", "--epochs", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (row,) = out["results"]
    assert row["preset"] == "fast" and row["epochs"] == 1
    assert row["steady_images_per_s"] > 0 and row["plain_fit_images_per_s"] > 0
    assert 0.0 <= row["test_accuracy"] <= 1.0 and out["machine"]["cores"] >= 1
    assert main(["bench", "train", "--presets", "nope"]) == 2
    assert "unknown preset(s) nope" in capsys.readouterr().err


# ---- predict without --run -------------------------------------------------------------------------

def test_predict_without_run_uses_the_shipped_model(shipped_model, tmp_path):
    from PIL import Image

    from fmnist.backends import get_backend
    from fmnist.data import CLASS_NAMES

    image = np.zeros((28, 28), np.uint8)
    image[3:26, 9:13] = 200  # two trouser legs on black, dataset-like
    image[3:26, 15:19] = 200
    image[3:6, 9:19] = 200
    path = tmp_path / "legs.png"
    Image.fromarray(image).save(path)
    empty_runs = tmp_path / "runs"
    empty_runs.mkdir()
    proc = fmnist("predict", str(path), "--json", cwd=tmp_path,  # no ./runs there either
                  env={"FMNIST_RUNS_DIR": str(empty_runs), "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    (answer,) = json.loads(proc.stdout)
    from fmnist import trust
    from fmnist.calibration import apply_temperature

    # the shipped model carries its trust bundle: answers are calibrated by its stored temperature
    raw = get_backend(shipped_model, "keras").predict_proba(image)
    expected = apply_temperature(raw, trust.load(shipped_model).temperature)[0]
    assert answer["calibrated"] is True
    assert answer["label"] == int(expected.argmax()) and answer["class_name"] == CLASS_NAMES[answer["label"]]
    assert np.abs(np.array(answer["probabilities"]) - expected).max() <= 1e-4  # OpenVINO FP32 or Keras
    assert answer["class_name"] == "Trouser"


# ---- the app's Keras worker process -------------------------------------------------------------------

def test_keras_worker_serves_several_callers_and_comes_back_after_a_kill(exported_run, tiny_run, data):
    """Several sessions (threads) ask the one worker about two runs at once: each gets its own
    answers. SIGKILL the worker: requests caught in flight get a one-line BackendError, and the
    next requests start a new worker that answers correctly."""
    from fmnist.backends import BackendError, get_backend
    from fmnist.keras_process import stop_worker

    runs = {"a": exported_run, "b": tiny_run}
    x = data.x_test[:48]
    expected = {k: get_backend(run, "keras").predict_proba(x) for k, run in runs.items()}
    try:
        isolated = {k: get_backend(run, "keras", isolated=True) for k, run in runs.items()}
        failures, errors = [], []

        def session(seed: int, rounds: int) -> None:
            rng = np.random.default_rng(seed)
            for _ in range(rounds):
                key = "ab"[int(rng.integers(2))]
                start, size = int(rng.integers(0, 40)), int(rng.integers(1, 9))
                try:
                    got = isolated[key].predict_proba(x[start:start + size])
                except BackendError as exc:
                    errors.append(str(exc))
                    continue
                if np.abs(got - expected[key][start:start + size]).max() > 1e-5:
                    failures.append((key, start, size))

        threads = [threading.Thread(target=session, args=(s, 10)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not any(t.is_alive() for t in threads)
        assert not failures and not errors, (failures, errors)

        first = isolated["a"].describe()["worker_pid"]
        assert first is not None and first != os.getpid()
        # killed while several sessions keep asking
        threads = [threading.Thread(target=session, args=(10 + s, 30)) for s in range(3)]
        for t in threads:
            t.start()
        os.kill(first, signal.SIGKILL)
        for t in threads:
            t.join(timeout=300)
        assert not any(t.is_alive() for t in threads)
        assert not failures, failures  # never a wrong answer
        assert all("Keras worker process stopped" in e and "\n" not in e for e in errors), errors
        # it comes back: the next requests are answered by a new worker
        for key in "ab":
            assert np.abs(isolated[key].predict_proba(x) - expected[key]).max() <= 1e-5
        second = wait_until(lambda: isolated["a"].describe()["worker_pid"], 60, "a new worker")
        assert second != first
    finally:
        stop_worker()
