import math
import threading

import numpy as np
import pytest

from fmnist.runs import list_runs, load_history, verify_run
from fmnist.training import PRESETS, TrainConfig, preset_config, train


@pytest.mark.slow
def test_one_epoch_emits_batch_epoch_and_finished_events(tiny_dataset, tmp_path):
    events = []
    result = train(TrainConfig(arch="paper", epochs=1, batch_size=64), tiny_dataset,
                   listeners=[events.append], runs_root=tmp_path, export=False)
    kinds = [e["kind"] for e in events]
    assert result.status == "completed"
    assert kinds.count("start") == 1 and kinds[-1] == "finished"
    batches = [e for e in events if e["kind"] == "batch"]
    steps = math.ceil(len(tiny_dataset.x_train) * 0.9 / 64)
    assert len(batches) == steps and batches[-1]["global_step"] == steps
    assert all(np.isfinite(b["loss"]) and 0 <= b["accuracy"] <= 1 for b in batches)
    # each batch's own loss and accuracy: their image-weighted means are the epoch's running means
    n_train = next(e for e in events if e["kind"] == "start")["n_train"]
    sizes = np.diff([0] + [min(b["step"] * 64, n_train) for b in batches])
    for k in (1, len(batches) // 2, len(batches)):
        seen = batches[:k]
        assert np.average([b["batch_loss"] for b in seen], weights=sizes[:k]) == pytest.approx(seen[-1]["loss"], rel=1e-4)
        assert np.average([b["batch_accuracy"] for b in seen], weights=sizes[:k]) == pytest.approx(
            seen[-1]["accuracy"], abs=1e-4)
    assert len({round(b["batch_loss"], 6) for b in batches}) > 1
    (epoch,) = [e for e in events if e["kind"] == "epoch"]
    assert 0 <= epoch["val_accuracy"] <= 1 and epoch["val_loss"] > 0
    history = load_history(result.run_dir)
    assert len(history["batches"]) == steps and history["epochs"][0]["epoch"] == 1
    info = verify_run(result.run_dir)
    assert info.status == "completed" and info.reason == ""


@pytest.mark.slow
def test_stop_request_is_honoured_at_the_next_batch(tiny_dataset, tmp_path):
    stop = threading.Event()
    events = []

    def listener(event):
        events.append(event)
        if event["kind"] == "batch" and event["global_step"] == 2:
            stop.set()

    result = train(TrainConfig(arch="paper", epochs=5, batch_size=32), tiny_dataset,
                   listeners=[listener], stop_event=stop, runs_root=tmp_path, export=False)
    batches = [e for e in events if e["kind"] == "batch"]
    assert result.status == "stopped"
    assert len(batches) == 2  # requested while batch 2 was reported: no batch 3 runs
    assert events[-1]["kind"] == "stopped"
    (info,) = list_runs(tmp_path, include_default=False)
    assert info.status == "stopped" and info.usable
    assert info.summary["test_accuracy"] is not None


@pytest.mark.slow
def test_same_seed_gives_the_same_model(tiny_dataset):
    config = TrainConfig(arch="paper", epochs=1, batch_size=64, seed=7, augment_flip=True, augment_shift=2,
                         augment_scale=0.1)
    a = train(config, tiny_dataset, save=False, export=False)
    b = train(config, tiny_dataset, save=False, export=False)
    losses_a = [x["loss"] for x in a.history["batches"]]
    losses_b = [x["loss"] for x in b.history["batches"]]
    assert np.allclose(losses_a, losses_b, rtol=1e-3)
    assert a.metrics["test_accuracy"] == b.metrics["test_accuracy"]


def test_zoom_augmentation_scales_about_the_centre():
    """augment_scale zooms each image by its own factor in [1 - s, 1 + s] about the centre."""
    from fmnist.training import make_train_dataset

    x = np.zeros((64, 28, 28), np.uint8)
    x[:, 9:19, 9:19] = 255  # a centred 10x10 square
    y = np.zeros(64, np.int64)
    plain = next(iter(make_train_dataset(x, y, TrainConfig(batch_size=64))))[0].numpy()[..., 0]
    zoomed = next(iter(make_train_dataset(x, y, TrainConfig(batch_size=64, augment_scale=0.3))))[0].numpy()[..., 0]
    assert np.array_equal(plain, x.astype(np.float32))
    mass = zoomed.sum(axis=(1, 2)) / (255.0 * 100)  # area relative to the original square
    assert 0.7**2 - 0.05 <= mass.min() and mass.max() <= 1.3**2 + 0.05 and mass.std() > 0.05
    ys, xs = np.mgrid[0:28, 0:28]
    centre_y = (zoomed * ys).sum(axis=(1, 2)) / zoomed.sum(axis=(1, 2))
    centre_x = (zoomed * xs).sum(axis=(1, 2)) / zoomed.sum(axis=(1, 2))
    assert np.abs(centre_y - 13.5).max() < 0.05 and np.abs(centre_x - 13.5).max() < 0.05


@pytest.mark.slow
def test_a_failing_listener_ends_as_a_failed_run_with_a_message(tiny_dataset, tmp_path):
    def broken(event):
        if event["kind"] == "epoch":
            raise RuntimeError("listener exploded")

    events = []
    result = train(TrainConfig(arch="paper", epochs=1, batch_size=64), tiny_dataset,
                   listeners=[events.append, broken], runs_root=tmp_path, export=False)
    assert result.status == "failed" and "listener exploded" in result.message
    (info,) = list_runs(tmp_path, include_default=False)
    assert info.status == "failed" and not info.usable


@pytest.mark.parametrize("field,value,match", [
    ("epochs", 10**6, "epochs must be between"),
    ("batch_size", 0, "batch_size must be between"),
    ("learning_rate", float("nan"), "finite"),
    ("arch", "os.system", "unknown architecture"),
    ("optimizer", "lbfgs", "unknown optimizer"),
    ("widths", [1, 2], "widths"),
    ("dropout", 1.5, "dropout"),
])
def test_config_bounds(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value}).validate()


def test_config_round_trip_and_unknown_keys():
    config = preset_config("fast")
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown config field"):
        TrainConfig.from_dict({**config.to_dict(), "class_name": "Lambda"})


def test_presets_are_valid_and_paper_is_the_report_recipe():
    for name in PRESETS:
        preset_config(name)
    paper = preset_config("paper")
    assert (paper.arch, paper.epochs, paper.batch_size, paper.optimizer) == ("paper", 15, 150, "adam")
    assert paper.val_fraction > 0  # validated on held-out training data, not on the test set


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "constant"])
def test_learning_rate_preview_is_the_schedule_keras_trains_with(schedule):
    """The Train page's preview (numpy, no TensorFlow) and the optimizer's schedule are one formula."""
    from fmnist.training import learning_rate_preview, make_optimizer

    config = TrainConfig(arch="modern", epochs=4, batch_size=100, limit=2000, val_fraction=0.1,
                         schedule=schedule, learning_rate=3e-3, optimizer="adamw")
    preview = learning_rate_preview(config)
    assert preview["steps_per_epoch"] == 18  # 1,800 training images / 100
    assert preview["steps"][0] == 0 and preview["steps"][-1] == 4 * 18 - 1
    optimizer = make_optimizer(config, preview["steps_per_epoch"])
    for step, expected in zip(preview["steps"], preview["learning_rate"]):
        optimizer.iterations.assign(step)  # the public way to read the rate Keras uses at a step
        actual = float(optimizer.learning_rate)
        assert actual == pytest.approx(expected, rel=1e-5, abs=1e-8)  # float32 in Keras
    rates = preview["learning_rate"]
    assert max(rates) == pytest.approx(3e-3, rel=0.02)
    if schedule == "onecycle":  # up for the first quarter, then down
        peak = int(np.argmax(rates))
        assert 0.2 < preview["steps"][peak] / (4 * 18) < 0.3 and rates[-1] < 0.05 * max(rates)


@pytest.mark.slow
def test_bench_train_seeds_give_one_row_each_and_a_summary(monkeypatch, capsys):
    """`bench train --seeds 1,2 --no-throughput`: one row per seed, no throughput
    comparison, the summary's mean of the rows between their min and max, the machine load recorded."""
    import json

    import fmnist.data
    from fmnist.cli import main

    small = fmnist.data.synthetic_dataset(n_train=300, n_test=60, seed=12)
    monkeypatch.setattr(fmnist.data, "load_fashion_mnist", lambda *a, **k: small)
    assert main(["bench", "train", "--presets", "fast", "--epochs", "1", "--seeds", "1,2", "--no-throughput",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["results"]
    assert [r["seed"] for r in rows] == [1, 2] and all("throughput_ratio" not in r for r in rows)
    assert all(r["load_before"] is None or r["load_before"] >= 0 for r in rows)
    (summary,) = out["summary"]
    test = summary["test_accuracy"]
    assert summary["seeds"] == [1, 2]
    assert test["min"] <= test["mean"] <= test["max"]
    assert test["mean"] == pytest.approx((rows[0]["test_accuracy"] + rows[1]["test_accuracy"]) / 2, abs=1e-5)
    assert main(["bench", "train", "--presets", "fast", "--seeds", "a,b"]) == 2
    assert "--seeds takes comma-separated whole numbers" in capsys.readouterr().err
