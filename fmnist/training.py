"""Training: a TrainConfig of plain values in, a saved run directory out, events along the way.

Listeners are plain callables that receive event dicts; the CLI's progress bar, the web app's
worker and the tests all listen the same way. Event kinds:
    start    {epochs, steps_per_epoch, total_steps, n_train, n_val, params}
    batch    {epoch, step, global_step, total_steps, loss, accuracy (the epoch's running means, as
              Keras reports them), batch_loss, batch_accuracy (this batch's own), images_per_s, eta_s}
    epoch    {epoch, loss, accuracy, val_loss, val_accuracy, learning_rate, seconds, images_per_s}
    status   {message}                     (loading data, evaluating, saving, exporting)
    finished / stopped / failed  {run_dir, message, test_accuracy}
A stop request (a threading.Event) is honoured at the next batch; the best weights so far (by
validation accuracy) are kept, evaluated and saved with status "stopped".
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from fmnist import data as fdata
from fmnist.models import ARCHITECTURES, DEFAULTS

Listener = Callable[[dict], None]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "onecycle")
PRECISIONS = ("float32", "bfloat16")


@dataclass
class TrainConfig:
    """Everything that defines a training run; JSON round-trips through to_dict/from_dict."""

    arch: str = "paper"
    widths: list[int] | None = None  # None: the architecture's defaults (models.DEFAULTS)
    dropout: float | list[float] | None = None  # None: defaults; one number or (conv, dense)
    epochs: int = 15
    batch_size: int = 150
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    augment_flip: bool = False
    augment_shift: int = 0  # pixels of random translation
    augment_scale: float = 0.0  # random zoom about the centre, up to this fraction either way (0.1 = ±10%)
    ema: float = 0.0  # weight-averaging momentum, 0 = off
    tta_flip: bool = False  # average predictions with the mirrored image at test time
    val_fraction: float = 0.1
    seed: int = 0
    limit: int | None = None  # stratified subset of the training set, for quick runs
    precision: str = "float32"  # or "bfloat16": mixed-precision training (weights stay float32)
    tensorboard: bool = False
    preset: str | None = None

    # Bounds shared by the CLI and the app: (low, high) inclusive.
    BOUNDS = {
        "epochs": (1, 200), "batch_size": (8, 4096), "learning_rate": (1e-6, 1.0),
        "warmup_epochs": (0.0, 50.0), "weight_decay": (0.0, 0.5), "label_smoothing": (0.0, 0.5),
        "augment_shift": (0, 6), "augment_scale": (0.0, 0.3), "ema": (0.0, 0.9999), "val_fraction": (0.0, 0.5),
        "seed": (0, 2**31 - 1), "limit": (100, 60_000),
    }

    def validate(self) -> "TrainConfig":
        """Raise ValueError with a specific message for any out-of-range or unknown value."""
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        for name, (low, high) in self.BOUNDS.items():
            value = getattr(self, name)
            if value is None and name == "limit":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            if not low <= value <= high:
                raise ValueError(f"{name} must be between {low} and {high}, got {value}")
        for name in ("epochs", "batch_size", "augment_shift", "seed"):
            if int(getattr(self, name)) != getattr(self, name):
                raise ValueError(f"{name} must be a whole number, got {getattr(self, name)}")
        n_widths = (2, 3, 4) if self.arch == "modern" else (len(DEFAULTS[self.arch]["widths"]),)
        if self.widths is not None:
            if (not isinstance(self.widths, (list, tuple)) or len(self.widths) not in n_widths
                    or not all(isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= 1024
                               for w in self.widths)):
                raise ValueError(f"{self.arch} takes {' or '.join(map(str, n_widths))} widths, each 1-1024, "
                                 f"got {self.widths}")
        if self.dropout is not None:
            values = self.dropout if isinstance(self.dropout, (list, tuple)) else [self.dropout]
            if (len(values) not in (1, 2) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                     and 0.0 <= v <= 0.9 for v in values)):
                raise ValueError(f"dropout must be one or two numbers between 0 and 0.9, got {self.dropout}")
        if self.limit is not None and self.limit * self.val_fraction < 10 and self.val_fraction > 0:
            raise ValueError("limit is too small for a validation split: use at least 10 validation images")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build and validate from plain values, refusing unknown keys (e.g. a tampered config)."""
        if not isinstance(values, dict):
            raise ValueError("config must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        values = dict(values)
        if isinstance(values.get("widths"), tuple):
            values["widths"] = list(values["widths"])
        return cls(**values).validate()

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    @property
    def params_key(self) -> str:
        return self.preset or self.arch


# Presets are plain values; see README "Training recipes" for how each was measured.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(arch="paper", epochs=15, batch_size=150, optimizer="adam", learning_rate=1e-3),
    "fast": dict(arch="modern", widths=[16, 32, 64, 128], epochs=3, batch_size=256, optimizer="adamw",
                 learning_rate=5e-3, schedule="onecycle", weight_decay=5e-4, label_smoothing=0.1),
    "best": dict(arch="modern", widths=[24, 48, 96, 192], epochs=18, batch_size=256, optimizer="adamw",
                 learning_rate=4e-3, schedule="onecycle", weight_decay=5e-4, label_smoothing=0.1,
                 augment_flip=True, augment_shift=2, tta_flip=True, precision="bfloat16"),
}


def preset_config(name: str, **overrides) -> TrainConfig:
    """A preset's TrainConfig with optional overrides (None values are ignored)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    values = {**PRESETS[name], "preset": name}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values).validate()


@dataclass
class TrainResult:
    status: str  # completed | stopped | failed
    run_dir: Path | None
    message: str = ""
    history: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0


class NaNLossError(RuntimeError):
    pass


def configure_tensorflow() -> None:
    """Quiet TensorFlow's C++ logging; call before the first TensorFlow import."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and initialise its devices with file descriptor 2 pointed at /dev/null.

    TensorFlow 2.21 prints oneDNN/CUDA notices from C++ before its log level applies; a command
    line tool should not greet people with them. Python exceptions still surface after the import.
    """
    import sys

    if "tensorflow" in sys.modules:
        return
    configure_tensorflow()
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def learning_rate_at(step, kind: str, peak: float, total_steps: int, warmup_steps: int, xp=np):
    """The schedule's learning rate at `step` (a number or array): linear warm-up to `peak`, then
    cosine or linear (one-cycle) decay. `xp` is numpy (previews) or keras.ops (training): one formula."""
    warm = float(max(warmup_steps, 1))
    rest = float(max(total_steps - warmup_steps, 1))
    up = peak * (step + 1.0) / warm
    t = xp.clip((step - warmup_steps) / rest, 0.0, 1.0)
    if kind == "cosine":
        down = peak * 0.5 * (1.0 + xp.cos(math.pi * t))
    else:
        down = peak * (1.0 - t) + peak * 1e-3 * t
    return xp.where(step < warmup_steps, up, down)


def schedule_steps(config: TrainConfig, steps_per_epoch: int) -> tuple[int, int]:
    """(total steps, warm-up steps) of a config's schedule."""
    warmup_epochs = config.warmup_epochs
    if config.schedule == "onecycle" and not warmup_epochs:
        warmup_epochs = 0.25 * config.epochs  # one-cycle: a quarter of the run going up
    return steps_per_epoch * config.epochs, int(round(warmup_epochs * steps_per_epoch))


def learning_rate_preview(config: TrainConfig, points: int = 200) -> dict:
    """The learning rate over a config's whole training, without TensorFlow (the Train page plots it
    before Start): {"steps": [...], "learning_rate": [...], "steps_per_epoch": int}."""
    n_train = (config.limit or fdata.FILES["train"][2]) * (1.0 - config.val_fraction)
    steps_per_epoch = max(1, math.ceil(n_train / config.batch_size))
    total, warmup = schedule_steps(config, steps_per_epoch)
    steps = np.unique(np.linspace(0, total - 1, min(points, total)).round()).astype(np.float64)
    if config.schedule == "constant":
        rates = np.full_like(steps, config.learning_rate)
    else:
        rates = learning_rate_at(steps, config.schedule, config.learning_rate, total, warmup)
    return {"steps": steps.astype(int).tolist(), "learning_rate": rates.tolist(), "steps_per_epoch": steps_per_epoch}


def _keras_schedule(kind: str, peak: float, total_steps: int, warmup_steps: int):
    """learning_rate_at as a Keras LearningRateSchedule."""
    import keras
    from keras import ops

    class Schedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return learning_rate_at(ops.cast(step, "float32"), kind, peak, total_steps, warmup_steps, xp=ops)

        def get_config(self):
            return {"kind": kind, "peak": peak, "total_steps": total_steps, "warmup_steps": warmup_steps}

    return Schedule()


def _make_optimizer(config: TrainConfig, steps_per_epoch: int):
    import keras

    total, warmup = schedule_steps(config, steps_per_epoch)
    if config.schedule == "constant":
        lr = config.learning_rate
    else:
        lr = _keras_schedule(config.schedule, config.learning_rate, total, warmup)
    ema = dict(use_ema=True, ema_momentum=config.ema) if config.ema else {}
    if config.optimizer == "adam":
        return keras.optimizers.Adam(lr, **ema)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=config.weight_decay, **ema)
    return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True,
                                weight_decay=config.weight_decay or None, **ema)


def make_train_dataset(x: np.ndarray, y: np.ndarray, config: TrainConfig):
    """tf.data pipeline: cached uint8 tensors, shuffled, batched, augmented per batch, prefetched."""
    import tensorflow as tf

    n = len(x)
    ds = tf.data.Dataset.from_tensor_slices((x[..., None], y.astype(np.int32))).cache()
    ds = ds.shuffle(n, seed=config.seed, reshuffle_each_iteration=True).batch(config.batch_size)
    flip, shift, scale = config.augment_flip, int(config.augment_shift), float(config.augment_scale)

    def prepare(images, labels, seeds):
        # Stateless random ops keyed by a seeded stream: the same seed gives the same augmentation,
        # whatever ran before in this process (stateful tf.random ops depend on graph op counters).
        images = tf.cast(images, tf.float32)
        b = tf.shape(images)[0]
        if flip:
            mirrored = tf.reverse(images, axis=[2])
            coin = tf.random.stateless_uniform([b, 1, 1, 1], seed=seeds[0]) < 0.5
            images = tf.where(coin, mirrored, images)
        if scale:
            # Zoom about the image centre with bilinear resampling: photos reach the model a fraction of
            # a pixel larger or smaller and softer than the dataset's items (docs/photos.md).
            factor = tf.random.stateless_uniform([b], seeds[3], 1.0 - scale, 1.0 + scale)
            inv, centre = 1.0 / factor, 13.5
            zeros = tf.zeros_like(inv)
            transforms = tf.stack([inv, zeros, centre * (1.0 - inv), zeros, inv, centre * (1.0 - inv),
                                   zeros, zeros], axis=1)
            images = tf.raw_ops.ImageProjectiveTransformV3(
                images=images, transforms=transforms, output_shape=[28, 28], fill_value=0.0,
                interpolation="BILINEAR", fill_mode="CONSTANT")
        if shift:
            size = 28 + 2 * shift
            padded = tf.pad(images, [[0, 0], [shift, shift], [shift, shift], [0, 0]])
            # one random crop offset per image, gathered in a single vectorised op
            dy = tf.random.stateless_uniform([b], seeds[1], 0, 2 * shift + 1, dtype=tf.int32)
            dx = tf.random.stateless_uniform([b], seeds[2], 0, 2 * shift + 1, dtype=tf.int32)
            rows = dy[:, None] + tf.range(28)[None, :]
            cols = dx[:, None] + tf.range(28)[None, :]
            flat = tf.reshape(padded, [b, size * size])
            index = rows[:, :, None] * size + cols[:, None, :]
            images = tf.reshape(tf.gather(flat, tf.reshape(index, [b, -1]), batch_dims=1), [b, 28, 28, 1])
        return images, tf.one_hot(labels, 10)

    seeds = tf.data.Dataset.random(seed=config.seed, rerandomize_each_iteration=True).batch(8).map(
        lambda v: tf.reshape(v, [4, 2]))
    ds = tf.data.Dataset.zip(ds, seeds).map(lambda batch, s: (*batch, s))
    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def make_eval_dataset(x: np.ndarray, y: np.ndarray, batch_size: int = 1000):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x[..., None], y.astype(np.int32))).cache().batch(batch_size)
    return ds.map(lambda i, l: (tf.cast(i, tf.float32), tf.one_hot(l, 10))).prefetch(tf.data.AUTOTUNE)


def predict_probabilities(model, images: np.ndarray, tta_flip: bool = False, batch_size: int = 1000) -> np.ndarray:
    """(N, 10) probabilities from raw uint8/float images (N, 28, 28); optional flip averaging."""
    x = np.asarray(images, dtype=np.float32).reshape(-1, 28, 28, 1)
    probs = model.predict(x, batch_size=batch_size, verbose=0)
    if tta_flip:
        probs = 0.5 * (probs + model.predict(x[:, :, ::-1], batch_size=batch_size, verbose=0))
    return np.asarray(probs, dtype=np.float32)


def _bridge_callback(config: TrainConfig, emit: Callable[[dict], None], stop_event: threading.Event | None,
                     steps_per_epoch: int, n_train: int, history: dict, state: dict):
    import keras

    class EventBridge(keras.callbacks.Callback):
        """Turns Keras callbacks into plain events; honours stop requests; keeps the best weights."""

        def on_train_begin(self, logs=None):
            state["t0"] = time.perf_counter()
            state["best_val"] = -1.0
            state["best_weights"] = None

        def on_epoch_begin(self, epoch, logs=None):
            state["epoch"] = epoch
            state["epoch_t0"] = time.perf_counter()
            state["so_far"] = (0, 0.0, 0.0)  # images seen this epoch, their mean loss and accuracy

        def on_train_batch_end(self, batch, logs=None):
            logs = logs or {}
            # Keras reports the epoch's running means (weighted by images); this batch's own values
            # are what the running means moved by. Charts show these, without the saw-tooth that
            # running means draw at every epoch boundary.
            loss = float(logs.get("loss", float("nan")))
            acc = float(logs.get("accuracy", float("nan")))
            seen_before, loss_before, acc_before = state["so_far"]
            seen = min((batch + 1) * config.batch_size, n_train)
            size = max(seen - seen_before, 1)
            batch_loss = (loss * seen - loss_before * seen_before) / size
            batch_acc = min(max((acc * seen - acc_before * seen_before) / size, 0.0), 1.0)
            state["so_far"] = (seen, loss, acc)
            step = state["epoch"] * steps_per_epoch + batch + 1
            total = steps_per_epoch * config.epochs
            elapsed = time.perf_counter() - state["t0"]
            rate = step * config.batch_size / max(elapsed, 1e-9)
            state["last_batch_t"] = time.perf_counter()
            history["batches"].append({"epoch": state["epoch"] + 1, "step": step, "loss": loss, "accuracy": acc,
                                       "batch_loss": batch_loss, "batch_accuracy": batch_acc})
            emit({"kind": "batch", "epoch": state["epoch"] + 1, "step": batch + 1, "global_step": step,
                  "total_steps": total, "loss": loss, "accuracy": acc, "batch_loss": batch_loss,
                  "batch_accuracy": batch_acc, "images_per_s": rate, "eta_s": (total - step) * elapsed / step})
            if not math.isfinite(loss):
                state["nan"] = True
                self.model.stop_training = True
            elif stop_event is not None and stop_event.is_set():
                state["stopped"] = True
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            seconds = time.perf_counter() - state["epoch_t0"]
            # training-only time (up to the last batch), excluding validation, for throughput
            train_seconds = state.get("last_batch_t", state["epoch_t0"]) - state["epoch_t0"]
            images = state["so_far"][0]
            lr = self.model.optimizer.learning_rate
            row = {
                "epoch": epoch + 1,
                "loss": float(logs.get("loss", float("nan"))),
                "accuracy": float(logs.get("accuracy", float("nan"))),
                "val_loss": float(logs["val_loss"]) if "val_loss" in logs else None,
                "val_accuracy": float(logs["val_accuracy"]) if "val_accuracy" in logs else None,
                "learning_rate": float(np.asarray(lr)),
                "seconds": seconds,
                "train_seconds": train_seconds,
                "images_per_s": images / max(train_seconds, 1e-9),
            }
            if state.get("stopped") or state.get("nan"):
                row["partial"] = True  # cut short by a stop request: metrics cover part of the epoch
            history["epochs"].append(row)
            val = row["val_accuracy"]
            if val is not None and val > state["best_val"] and not row.get("partial") and not config.ema:
                state["best_val"] = val
                state["best_epoch"] = epoch + 1
                state["best_weights"] = self.model.get_weights()
            emit({"kind": "epoch", **row})

    return EventBridge()


def train(config: TrainConfig, dataset: fdata.Dataset | None = None, *, data_dir: str | None = None,
          listeners: Iterable[Listener] = (), stop_event: threading.Event | None = None,
          runs_root: str | os.PathLike | None = None, save: bool = True, export: bool = True,
          run_name: str | None = None) -> TrainResult:
    """Train, evaluate on the test set, save a run directory (and its OpenVINO IR). Never raises
    for training failures: they come back as status "failed" (and a "failed" event)."""
    listeners = list(listeners)

    def emit(event: dict) -> None:
        for listener in listeners:
            listener(event)

    config = config.validate()
    t_start = time.perf_counter()
    history: dict[str, list] = {"epochs": [], "batches": []}
    state: dict[str, Any] = {}
    writer = None
    try:
        emit({"kind": "status", "message": "loading data"})
        if dataset is None:
            dataset = fdata.load_fashion_mnist(data_dir)
        splits = fdata.make_splits(dataset, config.val_fraction, config.seed, config.limit)
        configure_tensorflow()
        import keras

        from fmnist.models import build_model

        keras.utils.set_random_seed(config.seed)
        model = build_model(config.arch, widths=config.widths, dropout=config.dropout,
                            precision=config.precision)
        steps_per_epoch = math.ceil(len(splits.x_train) / config.batch_size)
        model.compile(
            optimizer=_make_optimizer(config, steps_per_epoch),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
            metrics=["accuracy"],
        )
        train_ds = make_train_dataset(splits.x_train, splits.y_train, config)
        val_ds = make_eval_dataset(splits.x_val, splits.y_val) if len(splits.x_val) else None
        callbacks = [_bridge_callback(config, emit, stop_event, steps_per_epoch, len(splits.x_train),
                                      history, state)]
        name = run_name or _default_run_name(config)
        if save:
            from fmnist.runs import RunWriter

            writer = RunWriter(runs_root, name)
            if config.tensorboard:
                callbacks.append(keras.callbacks.TensorBoard(log_dir=str(writer.path("tensorboard"))))
        emit({"kind": "start", "epochs": config.epochs, "steps_per_epoch": steps_per_epoch,
              "total_steps": steps_per_epoch * config.epochs, "n_train": len(splits.x_train),
              "n_val": len(splits.x_val), "params": model.count_params()})
        t_fit = time.perf_counter()
        model.fit(train_ds, epochs=config.epochs, validation_data=val_ds, callbacks=callbacks, verbose=0,
                  shuffle=False)  # the tf.data pipeline shuffles
        fit_seconds = time.perf_counter() - t_fit
        if state.get("nan"):
            raise NaNLossError("the loss became NaN (diverged): lower the learning rate or turn off "
                               "the schedule's warm-up peak, then train again")
        status = "stopped" if state.get("stopped") else "completed"
        if state.get("best_weights") is not None:
            model.set_weights(state["best_weights"])
        # Save a fresh, uncompiled copy: no optimizer state, no custom schedule in the file.
        clean = build_model(config.arch, widths=config.widths, dropout=config.dropout)
        clean.set_weights(model.get_weights())

        emit({"kind": "status", "message": "evaluating on the test set"})
        from fmnist.evaluation import evaluate_probabilities

        train_sample = fdata.stratified_limit(splits.y_train, min(len(splits.y_train), 10_000), config.seed)
        train_acc = float(np.mean(predict_probabilities(clean, splits.x_train[train_sample]).argmax(1)
                                  == splits.y_train[train_sample]))
        val_acc = (float(np.mean(predict_probabilities(clean, splits.x_val, config.tta_flip).argmax(1)
                                 == splits.y_val)) if len(splits.x_val) else None)
        probs = predict_probabilities(clean, dataset.x_test, config.tta_flip)
        metrics = evaluate_probabilities(probs, dataset.y_test)
        metrics.update({"train_accuracy": train_acc, "val_accuracy": val_acc, "tta_flip": config.tta_flip})
        epochs_done = len([e for e in history["epochs"] if not e.get("partial")])
        images_seen = len(history["batches"]) * config.batch_size
        summary = {
            "status": status, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "seconds": round(fit_seconds, 2), "total_seconds": round(time.perf_counter() - t_start, 2),
            "epochs_done": epochs_done, "params": int(model.count_params()),
            "best_epoch": state.get("best_epoch"), "best_val_accuracy": val_acc,
            "train_accuracy": train_acc, "images_per_s": round(images_seen / max(fit_seconds, 1e-9), 1),
            "message": "stopped by request; best weights so far kept" if status == "stopped" else "",
        }
        run_dir = None
        if writer is not None:
            emit({"kind": "status", "message": "saving"})
            writer.write_json("config.json", config.to_dict())
            writer.write_json("history.json", history)
            writer.write_json("metrics.json", metrics)
            writer.write_npy("test_probs.npy", probs)
            writer.save_model(clean)
            run_dir = writer.commit(summary)
            writer = None
            if export:
                _export_quietly(run_dir, emit, splits)
        result = TrainResult(status, run_dir, summary["message"], history, metrics, fit_seconds)
        emit({"kind": status if status == "stopped" else "finished", "run_dir": str(run_dir) if run_dir else None,
              "message": summary["message"], "test_accuracy": metrics["test_accuracy"]})
        return result
    except Exception as exc:  # any failure becomes a failed run with a message, never a traceback
        message = str(exc) if isinstance(exc, (fdata.DataError, NaNLossError, ValueError)) else (
            f"{type(exc).__name__}: {exc}")
        run_dir = None
        if writer is not None:
            try:
                writer.write_json("config.json", config.to_dict())
                writer.write_json("history.json", history)
                writer.write_json("error.json", {"message": message, "traceback": traceback.format_exc()})
                run_dir = writer.commit({"status": "failed", "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                         "seconds": round(time.perf_counter() - t_start, 2), "message": message})
            except Exception:
                writer.abort()
        emit({"kind": "failed", "run_dir": str(run_dir) if run_dir else None, "message": message})
        return TrainResult("failed", run_dir, message, history, {}, time.perf_counter() - t_start)


def _default_run_name(config: TrainConfig) -> str:
    from fmnist.runs import new_run_name

    return new_run_name(config.params_key)


def _export_quietly(run_dir: Path, emit: Callable[[dict], None], splits: fdata.Splits) -> None:
    """Export OpenVINO IR after training when the export module is available; report, don't fail."""
    try:
        from fmnist import export as fexport
    except ImportError:
        return
    emit({"kind": "status", "message": "exporting to OpenVINO (FP32 and INT8)"})
    try:
        fexport.export_run(run_dir, calibration_images=splits.x_train)
    except Exception as exc:
        emit({"kind": "status", "message": f"OpenVINO export failed: {exc}"})
