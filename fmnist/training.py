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

`train` runs the parts in order, each usable alone: `fit` (a compiled model and four Keras callbacks,
one job each: progress events, divergence, stop request, best weights), `evaluate`, `run_summary`,
`save_run` (or `save_failed_run`), then the OpenVINO export, and the run's trust bundle (`fmnist.trust`:
temperature, unfamiliar-input thresholds, neighbour reference) and feature map (`fmnist.featuremap`),
so that a new run explains itself like the shipped model. A failure in those last steps is reported
as a status event and never loses the run.
"""

from __future__ import annotations

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
# The config's names are fmnist.config's; the CLI, the pages and the tests also import them from here.
from fmnist.config import OPTIMIZERS, PRECISIONS, PRESETS, SCHEDULES, TrainConfig, preset_config  # noqa: F401

Listener = Callable[[dict], None]


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
    the peak held (constant), cosine or linear (one-cycle) decay. `xp` is numpy (previews) or keras.ops
    (training): one formula."""
    warm = float(max(warmup_steps, 1))
    rest = float(max(total_steps - warmup_steps, 1))
    up = peak * (step + 1.0) / warm
    t = xp.clip((step - warmup_steps) / rest, 0.0, 1.0)
    if kind == "constant":
        down = peak + 0.0 * t
    elif kind == "cosine":
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
    if config.schedule == "constant" and not warmup:
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


def make_optimizer(config: TrainConfig, steps_per_epoch: int):
    """The config's Keras optimizer, with its learning-rate schedule over the whole run."""
    import keras

    total, warmup = schedule_steps(config, steps_per_epoch)
    if config.schedule == "constant" and not warmup:  # a warm-up needs the schedule, even when constant
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
    """tf.data pipeline: cached uint8 tensors, shuffled, batched, augmented per batch (fmnist.augment),
    prefetched."""
    import tensorflow as tf

    from fmnist import augment

    n = len(x)
    ds = tf.data.Dataset.from_tensor_slices((x[..., None], y.astype(np.int32))).cache()
    ds = ds.shuffle(n, seed=config.seed, reshuffle_each_iteration=True).batch(config.batch_size)
    options = dict(flip_images=bool(config.augment_flip), scale=float(config.augment_scale),
                   shift_pixels=int(config.augment_shift), photo_strength=float(config.augment_photo),
                   erase_probability=float(config.augment_erase))

    def prepare(images, labels, seeds, extra_seeds):
        # Stateless random ops keyed by seeded streams: the same seed gives the same augmentation,
        # whatever ran before in this process (stateful tf.random ops depend on graph op counters).
        images = augment.augment_batch(tf.cast(images, tf.float32), seeds, extra_seeds, **options)
        return images, tf.one_hot(labels, 10)

    def seed_stream(seed: int, pairs: int):
        return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2 * pairs).map(
            lambda v: tf.reshape(v, [pairs, 2]))

    # The first stream is the one runs before the photo and erase augmentations used: they train the same.
    seeds = tf.data.Dataset.zip(seed_stream(config.seed, 4), seed_stream(config.seed + 1_000_003, 2))
    ds = tf.data.Dataset.zip(ds, seeds).map(lambda batch, s: (*batch, *s))
    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def make_eval_dataset(x: np.ndarray, y: np.ndarray, batch_size: int = 1000):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x[..., None], y.astype(np.int32))).cache().batch(batch_size)
    return ds.map(lambda i, l: (tf.cast(i, tf.float32), tf.one_hot(l, 10))).prefetch(tf.data.AUTOTUNE)


def predict_probabilities(model, images: np.ndarray, tta_flip: bool = False, batch_size: int = 1000,
                          tta_shift: int = 0) -> np.ndarray:
    """(N, 10) probabilities from raw uint8/float images (N, 28, 28); optional averaging over the
    mirror image and shifted views (`predictor.test_views`), as the backends answer for the run."""
    from fmnist.predictor import average_views, test_views

    x, count = test_views(np.asarray(images, dtype=np.float32).reshape(-1, 28, 28, 1), tta_flip, tta_shift)
    return average_views(model.predict(x, batch_size=batch_size, verbose=0), count)


def compile_model(config: TrainConfig, steps_per_epoch: int):
    """A freshly built, seeded and compiled Keras model for a config (optimizer, loss, accuracy)."""
    import keras

    from fmnist.models import build_model

    keras.utils.set_random_seed(config.seed)
    model = build_model(config.arch, widths=config.widths, dropout=config.dropout, precision=config.precision)
    model.compile(optimizer=make_optimizer(config, steps_per_epoch),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
                  metrics=["accuracy"])
    return model


# ---------------------------------------------------------------------------------------------
# Keras callbacks, one job each. A stop (by request or divergence) shows in `model.stop_training`,
# which Keras keeps set until fit returns, so the epoch that was cut short is known to be partial.


def _callbacks(config: TrainConfig, emit: Listener, stop_event: threading.Event | None, steps_per_epoch: int,
               n_train: int, history: dict):
    """(progress, divergence, stop request, best weights, skip validation after a stop) callbacks,
    built where Keras is imported."""
    import keras

    class ProgressEvents(keras.callbacks.Callback):
        """Reports every batch and epoch to the listeners as plain events and records them in `history`."""

        def on_train_begin(self, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            self.epoch_t0 = self.last_batch_t = time.perf_counter()
            self.seen, self.mean_loss, self.mean_acc = 0, 0.0, 0.0  # this epoch's images and running means

        def on_train_batch_end(self, batch, logs=None):
            logs = logs or {}
            # Keras reports the epoch's running means (weighted by images); this batch's own values
            # are what the running means moved by. Charts show these, without the saw-tooth that
            # running means draw at every epoch boundary.
            loss = float(logs.get("loss", float("nan")))
            acc = float(logs.get("accuracy", float("nan")))
            seen = min((batch + 1) * config.batch_size, n_train)
            size = max(seen - self.seen, 1)
            batch_loss = (loss * seen - self.mean_loss * self.seen) / size
            batch_acc = min(max((acc * seen - self.mean_acc * self.seen) / size, 0.0), 1.0)
            self.seen, self.mean_loss, self.mean_acc = seen, loss, acc
            step = self.epoch * steps_per_epoch + batch + 1
            total = steps_per_epoch * config.epochs
            self.last_batch_t = time.perf_counter()
            elapsed = self.last_batch_t - self.t0
            history["batches"].append({"epoch": self.epoch + 1, "step": step, "loss": loss, "accuracy": acc,
                                       "batch_loss": batch_loss, "batch_accuracy": batch_acc})
            emit({"kind": "batch", "epoch": self.epoch + 1, "step": batch + 1, "global_step": step,
                  "total_steps": total, "loss": loss, "accuracy": acc, "batch_loss": batch_loss,
                  "batch_accuracy": batch_acc, "images_per_s": step * config.batch_size / max(elapsed, 1e-9),
                  "eta_s": (total - step) * elapsed / step})

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            # training-only time (up to the last batch), excluding validation, for throughput
            train_seconds = self.last_batch_t - self.epoch_t0
            row = {
                "epoch": epoch + 1,
                "loss": float(logs.get("loss", float("nan"))),
                "accuracy": float(logs.get("accuracy", float("nan"))),
                "val_loss": float(logs["val_loss"]) if "val_loss" in logs else None,
                "val_accuracy": float(logs["val_accuracy"]) if "val_accuracy" in logs else None,
                "learning_rate": float(np.asarray(self.model.optimizer.learning_rate)),
                "seconds": time.perf_counter() - self.epoch_t0,
                "train_seconds": train_seconds,
                "images_per_s": self.seen / max(train_seconds, 1e-9),
            }
            if self.model.stop_training:
                # Cut short by a stop: training metrics cover part of the epoch, and validation was
                # cut after its first batch (SkipValidationAfterStop), so it is not reported.
                row.update(partial=True, val_loss=None, val_accuracy=None)
            history["epochs"].append(row)
            emit({"kind": "epoch", **row})

    class StopOnRequest(keras.callbacks.Callback):
        """Ends training at the next batch once `stop_event` is set."""

        requested = False

        def on_train_batch_end(self, batch, logs=None):
            if stop_event is not None and stop_event.is_set() and not self.model.stop_training:
                self.requested = self.model.stop_training = True

    class SkipValidationAfterStop(keras.callbacks.Callback):
        """After a stop, ends the cut-short epoch's validation at its first batch: its figures are
        never used (best weights come from whole epochs), and a full pass delays "Stopped" by
        seconds on a slow CPU."""

        def on_test_batch_end(self, batch, logs=None):
            if self.model.stop_training:
                self.model.stop_evaluating = True

    class StopOnDivergence(keras.callbacks.Callback):
        """Ends training when the loss stops being a finite number."""

        diverged = False

        def on_train_batch_end(self, batch, logs=None):
            if not math.isfinite(float((logs or {}).get("loss", float("nan")))):
                self.diverged = self.model.stop_training = True

    class KeepBestWeights(keras.callbacks.Callback):
        """Keeps the weights of the best whole epoch by validation accuracy (not with weight averaging,
        whose averaged weights are what the optimizer leaves at the end)."""

        best_val, best_epoch, best_weights = -1.0, None, None

        def on_epoch_end(self, epoch, logs=None):
            val = (logs or {}).get("val_accuracy")
            if val is not None and float(val) > self.best_val and not self.model.stop_training and not config.ema:
                self.best_val, self.best_epoch = float(val), epoch + 1
                self.best_weights = self.model.get_weights()

    # Progress first, so that the batch that stops training is still reported.
    return ProgressEvents(), StopOnDivergence(), StopOnRequest(), KeepBestWeights(), SkipValidationAfterStop()


@dataclass
class Fitted:
    """What fitting leaves: an uncompiled model with the kept weights, and how the fit ended."""

    model: Any
    status: str  # completed | stopped
    seconds: float
    best_epoch: int | None
    params: int


def fit(config: TrainConfig, splits: fdata.Splits, emit: Listener, history: dict,
        stop_event: threading.Event | None = None, tensorboard_dir: Path | None = None) -> Fitted:
    """Fit a new model on the training split (validating on the validation split), reporting to `emit`
    and recording into `history`. Raises NaNLossError when the loss diverges."""
    configure_tensorflow()
    import keras

    from fmnist.models import build_model

    steps_per_epoch = math.ceil(len(splits.x_train) / config.batch_size)
    model = compile_model(config, steps_per_epoch)
    train_ds = make_train_dataset(splits.x_train, splits.y_train, config)
    val_ds = make_eval_dataset(splits.x_val, splits.y_val) if len(splits.x_val) else None
    progress, divergence, request, best, skip_validation = _callbacks(config, emit, stop_event, steps_per_epoch,
                                                                      len(splits.x_train), history)
    callbacks = [progress, divergence, request, best, skip_validation]
    if tensorboard_dir is not None:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(tensorboard_dir)))
    emit({"kind": "start", "epochs": config.epochs, "steps_per_epoch": steps_per_epoch,
          "total_steps": steps_per_epoch * config.epochs, "n_train": len(splits.x_train),
          "n_val": len(splits.x_val), "params": model.count_params()})
    t_fit = time.perf_counter()
    model.fit(train_ds, epochs=config.epochs, validation_data=val_ds, callbacks=callbacks, verbose=0,
              shuffle=False)  # the tf.data pipeline shuffles
    seconds = time.perf_counter() - t_fit
    if divergence.diverged:
        raise NaNLossError("the loss became NaN (diverged): lower the learning rate or turn off "
                           "the schedule's warm-up peak, then train again")
    if best.best_weights is not None:
        model.set_weights(best.best_weights)
    # A fresh, uncompiled copy to save: no optimizer state, no custom schedule in the file.
    clean = build_model(config.arch, widths=config.widths, dropout=config.dropout)
    clean.set_weights(model.get_weights())
    return Fitted(clean, "stopped" if request.requested else "completed", seconds, best.best_epoch,
                  int(model.count_params()))


def evaluate(model, config: TrainConfig, splits: fdata.Splits, dataset: fdata.Dataset) -> tuple[dict, np.ndarray]:
    """(metrics, test probabilities): the test-set report plus training (a sample of up to 10,000) and
    validation accuracy, with flip averaging when the config asks for it."""
    from fmnist.evaluation import evaluate_probabilities

    train_sample = fdata.stratified_limit(splits.y_train, min(len(splits.y_train), 10_000), config.seed)
    train_acc = float(np.mean(predict_probabilities(model, splits.x_train[train_sample]).argmax(1)
                              == splits.y_train[train_sample]))
    val_acc = (float(np.mean(predict_probabilities(model, splits.x_val, config.tta_flip,
                                                   tta_shift=config.tta_shift).argmax(1)
                             == splits.y_val)) if len(splits.x_val) else None)
    probs = predict_probabilities(model, dataset.x_test, config.tta_flip, tta_shift=config.tta_shift)
    metrics = evaluate_probabilities(probs, dataset.y_test)
    metrics.update({"train_accuracy": train_acc, "val_accuracy": val_acc, "tta_flip": config.tta_flip,
                    "tta_shift": config.tta_shift})
    return metrics, probs


def run_summary(config: TrainConfig, fitted: Fitted, history: dict, metrics: dict, total_seconds: float) -> dict:
    """The run's status.json content."""
    images_seen = len(history["batches"]) * config.batch_size
    return {
        "status": fitted.status, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "seconds": round(fitted.seconds, 2), "total_seconds": round(total_seconds, 2),
        "epochs_done": len([e for e in history["epochs"] if not e.get("partial")]), "params": fitted.params,
        "best_epoch": fitted.best_epoch, "best_val_accuracy": metrics["val_accuracy"],
        "train_accuracy": metrics["train_accuracy"],
        "images_per_s": round(images_seen / max(fitted.seconds, 1e-9), 1),
        "message": "stopped by request; best weights so far kept" if fitted.status == "stopped" else "",
    }


def save_run(writer, config: TrainConfig, history: dict, metrics: dict, probs: np.ndarray, model,
             summary: dict) -> Path:
    """Write a finished run through a runs.RunWriter and commit it; returns the run directory."""
    writer.write_json("config.json", config.to_dict())
    writer.write_json("history.json", history)
    writer.write_json("metrics.json", metrics)
    writer.write_npy("test_probs.npy", probs)
    writer.save_model(model)
    return writer.commit(summary)


def save_failed_run(writer, config: TrainConfig, history: dict, message: str, seconds: float) -> Path | None:
    """Keep a failed run's config, history and error (never raises; the staging folder goes on failure)."""
    try:
        writer.write_json("config.json", config.to_dict())
        writer.write_json("history.json", history)
        writer.write_json("error.json", {"message": message, "traceback": traceback.format_exc()})
        return writer.commit({"status": "failed", "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                              "seconds": round(seconds, 2), "message": message})
    except Exception:
        writer.abort()
        return None


def train(config: TrainConfig, dataset: fdata.Dataset | None = None, *, data_dir: str | None = None,
          listeners: Iterable[Listener] = (), stop_event: threading.Event | None = None,
          runs_root: str | os.PathLike | None = None, save: bool = True, export: bool = True,
          run_name: str | None = None, trust: bool | None = None) -> TrainResult:
    """Train, evaluate on the test set, save a run directory (and its OpenVINO IR, trust bundle and
    feature map: `trust` defaults to `export`, so the quick paths that skip the export skip these too).
    Never raises for training failures: they come back as status "failed" (and a "failed" event)."""
    from fmnist.runs import RunWriter, new_run_name

    listeners = list(listeners)

    def emit(event: dict) -> None:
        for listener in listeners:
            listener(event)

    config = config.validate()
    t_start = time.perf_counter()
    history: dict[str, list] = {"epochs": [], "batches": []}
    writer = None
    try:
        emit({"kind": "status", "message": "loading data"})
        if dataset is None:
            dataset = fdata.load_fashion_mnist(data_dir)
        splits = fdata.make_splits(dataset, config.val_fraction, config.seed, config.limit)
        if save:
            writer = RunWriter(runs_root, run_name or new_run_name(config.params_key))
        fitted = fit(config, splits, emit, history, stop_event,
                     writer.path("tensorboard") if writer is not None and config.tensorboard else None)
        emit({"kind": "status", "message": "evaluating on the test set"})
        metrics, probs = evaluate(fitted.model, config, splits, dataset)
        summary = run_summary(config, fitted, history, metrics, time.perf_counter() - t_start)
        run_dir = None
        if writer is not None:
            emit({"kind": "status", "message": "saving"})
            run_dir = save_run(writer, config, history, metrics, probs, fitted.model, summary)
            writer = None
            if export:
                _export_quietly(run_dir, emit, splits)
            if export if trust is None else trust:
                explain_quietly(run_dir, dataset, emit)
        status = fitted.status
        emit({"kind": status if status == "stopped" else "finished", "run_dir": str(run_dir) if run_dir else None,
              "message": summary["message"], "test_accuracy": metrics["test_accuracy"]})
        return TrainResult(status, run_dir, summary["message"], history, metrics, fitted.seconds)
    except Exception as exc:  # any failure becomes a failed run with a message, never a traceback
        message = str(exc) if isinstance(exc, (fdata.DataError, NaNLossError, ValueError)) else (
            f"{type(exc).__name__}: {exc}")
        run_dir = None
        if writer is not None:
            run_dir = save_failed_run(writer, config, history, message, time.perf_counter() - t_start)
        emit({"kind": "failed", "run_dir": str(run_dir) if run_dir else None, "message": message})
        return TrainResult("failed", run_dir, message, history, {}, time.perf_counter() - t_start)


def _export_quietly(run_dir: Path, emit: Listener, splits: fdata.Splits) -> None:
    """Export OpenVINO IR after training; a failure is reported as a status event, not raised."""
    from fmnist import export as fexport

    emit({"kind": "status", "message": "exporting to OpenVINO (FP32 and INT8)"})
    try:
        fexport.export_run(run_dir, calibration_images=splits.x_train)
    except Exception as exc:
        emit({"kind": "status", "message": f"OpenVINO export failed: {exc}"})


def explain_quietly(run_dir: Path, dataset: fdata.Dataset, emit: Listener) -> dict[str, float]:
    """Store a saved run's trust bundle and feature map (the test set is only mapped, never used to
    choose anything). Each failure is reported as a status event, not raised: the run stays usable
    without them (raw probabilities, no map) and `python -m fmnist.trust` / `python -m fmnist.featuremap`
    can add them later. Returns the seconds each step took."""
    from fmnist import featuremap
    from fmnist import trust as ftrust

    seconds = {}
    for key, message, store in (("trust", "Calibrating (temperature, unfamiliar-input thresholds)", ftrust.store),
                                ("map", "Computing the feature map (t-SNE)", featuremap.store)):
        emit({"kind": "status", "message": f"{message}..."})
        t0 = time.perf_counter()
        try:
            store(run_dir, dataset, progress=lambda text, m=message: emit({"kind": "status", "message": f"{m}: {text}"}))
        except Exception as exc:  # the run is saved: a missing extra must not turn it into a failure
            command = "fmnist.trust" if key == "trust" else "fmnist.featuremap"
            emit({"kind": "status", "message": f"{message} failed ({type(exc).__name__}: {exc}); the run is "
                                               f"kept without it (later: python -m {command} --run {run_dir})"})
        seconds[key] = round(time.perf_counter() - t0, 2)
    return seconds
