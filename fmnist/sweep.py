"""Hyperparameter sweeps on Optuna: many trainings of the project's own `train`, one Optuna trial each.

Each trial draws values from SEARCH_SPACE (knobs of TrainConfig, on top of a preset whose epochs and
training-set size the caller fixes), trains with `fmnist.training.train`, reports every epoch's
validation accuracy to Optuna and is stopped through the training's stop event when the pruner says
so. What a trial leaves:
    COMPLETE  a normal verified run, named `...-sweep-t<number>-<study>-...`, with a `sweep/` bundle
              (`trial.json`: study, trial number, parameters, value) under the run's manifests
    PRUNED    no run: its best-weights "stopped" run is removed (one rename out of sight, then
              deleted); the study keeps its parameters and per-epoch values
    FAIL      a training failure keeps train's failed run (config, history, error); a stop request
              (Ctrl-C) removes the partial run like a pruned one. The reason is the trial's
              user attribute "reason".
Storage: an Optuna journal file (default `<runs>/.sweeps/journal.log`; hidden because every visible
folder of the runs root is listed as a run) or any Optuna RDB URL (sqlite:///, postgresql://,
mysql://), so workers on several machines join one study by running the same command.
See docs/sweeps.md.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

from fmnist import data as fdata
from fmnist.config import TrainConfig, preset_config
from fmnist.console import ProgressBar
from fmnist.models import DEFAULTS

Listener = Callable[[dict], None]

# The search space: plain values, drawn by Optuna's TPE sampler. Each entry names a TrainConfig field
# (or, for width_scale, how the preset's widths are scaled); bounds sit inside TrainConfig.BOUNDS.
SEARCH_SPACE: dict[str, dict] = {
    "width_scale": {"kind": "categorical", "choices": [0.5, 1.0, 1.5, 2.0], "field": "widths",
                    "help": "multiplies the preset's channel widths (fast: 16,32,64,128)"},
    "learning_rate": {"kind": "float", "low": 3e-4, "high": 2e-2, "log": True, "field": "learning_rate",
                      "help": "peak learning rate of the preset's schedule"},
    "weight_decay": {"kind": "float", "low": 1e-5, "high": 1e-2, "log": True, "field": "weight_decay",
                     "help": "decoupled weight decay (AdamW; SGD's L2); plain Adam ignores it"},
    "label_smoothing": {"kind": "float", "low": 0.0, "high": 0.2, "field": "label_smoothing",
                        "help": "share of the target spread over the other classes"},
    "batch_size": {"kind": "categorical", "choices": [64, 128, 256], "field": "batch_size",
                   "help": "images per step"},
    "augment_flip": {"kind": "categorical", "choices": [False, True], "field": "augment_flip",
                     "help": "random horizontal flips"},
    "augment_shift": {"kind": "int", "low": 0, "high": 3, "field": "augment_shift",
                      "help": "random translation, in pixels"},
    "augment_erase": {"kind": "float", "low": 0.0, "high": 0.5, "field": "augment_erase",
                      "help": "probability of random erasing"},
}
PRUNERS = ("median", "halving", "none")
# The training's own events passed on to a sweep's listeners (with "trial": number); its terminal ones
# (finished, stopped, failed) are not: trial_finished says how each trial ended.
PASSED_THROUGH = ("start", "batch", "epoch", "status")
STOPPED_REASON = "stopped by request (Ctrl-C or Stop) before it finished"
DEFAULT_STUDY = "fmnist-sweep"
SWEEPS_DIR = ".sweeps"  # under the runs root; hidden, so that the run listing never sees it
TAG_BUNDLE = "sweep"  # the run bundle holding the trial's tag (runs.BUNDLES lists it)
_STUDY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_RDB_SCHEMES = ("sqlite", "postgresql", "mysql", "mariadb", "oracle", "mssql")


# ---- the search space ------------------------------------------------------------------------------

def fixed_value(name: str, value: Any) -> Any:
    """A knob's value held fixed for a whole sweep (the CLI's --fix KNOB=VALUE; text or a value),
    checked against SEARCH_SPACE: one of its choices, or a number inside its range. ValueError otherwise."""
    spec = SEARCH_SPACE.get(name)
    if spec is None:
        raise ValueError(f"unknown search-space knob {name!r}; choose one of {', '.join(SEARCH_SPACE)}")
    if spec["kind"] == "categorical":
        for choice in spec["choices"]:
            if isinstance(choice, bool) or isinstance(value, bool):  # true/false, any case
                if str(choice).lower() == str(value).strip().lower():
                    return choice
            elif _number(value) == choice:  # 1 and 1.0 name the same width scale
                return choice
        raise ValueError(f"{name} must be one of {', '.join(map(str, spec['choices']))}, got {value!r}")
    number = _number(value)
    whole = spec["kind"] != "int" or number == int(number) if math.isfinite(number) else False
    if isinstance(value, bool) or not whole or not spec["low"] <= number <= spec["high"]:
        kind = "a whole number" if spec["kind"] == "int" else "a number"
        raise ValueError(f"{name} must be {kind} from {spec['low']:g} to {spec['high']:g}, got {value!r}")
    return int(number) if spec["kind"] == "int" else number


def _number(value: Any) -> float:
    """A number from text or a number; NaN when it is neither."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def parse_fixed(items: Iterable[str]) -> dict[str, Any]:
    """{knob: value} from KNOB=VALUE texts (the CLI's --fix); ValueError saying which one is wrong."""
    fixed: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--fix takes KNOB=VALUE (e.g. batch_size=128), got {item!r}")
        fixed[name.strip()] = fixed_value(name.strip(), text)
    return fixed


def suggest(trial, fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The trial's values for every knob of SEARCH_SPACE: drawn through Optuna's suggest_* calls, except
    the knobs `fixed` holds for the whole sweep (not searched, not in trial.params)."""
    params: dict[str, Any] = {}
    for name, spec in SEARCH_SPACE.items():
        if fixed and name in fixed:
            params[name] = fixed[name]
        elif spec["kind"] == "categorical":
            params[name] = trial.suggest_categorical(name, spec["choices"])
        elif spec["kind"] == "int":
            params[name] = trial.suggest_int(name, spec["low"], spec["high"])
        else:
            params[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
    return params


def base_config(preset: str | None = "fast", epochs: int | None = None, limit: int | None = None) -> TrainConfig:
    """The configuration every trial starts from: a preset with the sweep's epochs and training-set size.
    ValueError with the reason (unknown preset, out-of-range epochs, limit too small)."""
    return preset_config(preset, epochs=epochs, limit=limit)


def config_for(params: dict[str, Any], base: TrainConfig) -> TrainConfig:
    """A trial's TrainConfig: `base` with the trial's values (width_scale scales its widths)."""
    changes: dict[str, Any] = {}
    for name, value in params.items():
        spec = SEARCH_SPACE.get(name)
        if spec is None:
            raise ValueError(f"unknown search-space knob {name!r}")
        if name == "width_scale":
            widths = base.widths or DEFAULTS[base.arch]["widths"]
            changes["widths"] = [max(1, min(1024, int(round(w * value)))) for w in widths]
        else:
            changes[spec["field"]] = value
    return base.replace(**changes).validate()


# ---- storage and studies -----------------------------------------------------------------------------

def default_storage(runs_root: str | os.PathLike | None = None) -> str:
    """The default storage: an Optuna journal file in the runs folder's hidden `.sweeps/`."""
    from fmnist.runs import runs_root as resolve_root

    return str((resolve_root(runs_root) / SWEEPS_DIR / "journal.log").absolute())


def storage_label(storage: str) -> str:
    """A storage for display: an RDB URL without its password; a journal file as its path."""
    if "://" not in storage:
        return storage
    try:
        from sqlalchemy.engine import make_url

        return make_url(storage).render_as_string(hide_password=True)
    except Exception:
        return storage.split("://", 1)[0] + "://..."


def _storage(storage: str | None, runs_root: str | os.PathLike | None, create: bool):
    """(Optuna storage object, its display label). A string with "://" is an RDB URL, anything else a
    journal file path. ValueError with one line when it cannot be opened."""
    import optuna

    url = (storage or "").strip() or default_storage(runs_root)
    label = storage_label(url)
    if "://" in url:
        scheme = url.split("://", 1)[0].split("+", 1)[0].lower()
        if scheme not in _RDB_SCHEMES:
            raise ValueError(f"unsupported storage {label!r}: give a journal file path, sqlite:///FILE, "
                             "postgresql://USER:PASSWORD@HOST/DB or mysql://USER:PASSWORD@HOST/DB")
        try:
            return optuna.storages.RDBStorage(url), label
        except ImportError:
            raise ValueError(f"cannot open storage {label}: the {scheme} driver is not installed "
                             "(PostgreSQL: pip install psycopg2-binary; MySQL: pip install pymysql)") from None
        except Exception as exc:  # SQLAlchemy's URL and connection errors, one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ValueError(f"cannot open storage {label}: {first}") from None
    path = Path(url).expanduser()
    if path.is_dir():
        raise ValueError(f"storage {label} is a folder: give a journal file path (e.g. {path / 'journal.log'})")
    if not path.is_file() and not create:
        raise ValueError(f"no sweeps yet: {label} does not exist")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
        return optuna.storages.JournalStorage(backend), label
    except OSError as exc:
        raise ValueError(f"cannot open storage {label}: {exc.strerror or exc}") from None


def make_pruner(name: str = "median"):
    """The pruner by name. median: a trial whose best validation accuracy so far is below the median
    of finished trials at the same epoch stops (after 3 finished trials, from epoch 1); halving:
    successive halving from epoch 1 keeping the top third at epochs 1, 3, 9, ... (prunes from the
    second trial on, no warm-up: good for short sweeps); none: never prune."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0, interval_steps=1)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")


def open_study(study: str | None, storage: str | None, create: bool = True, *, pruner: str = "median",
               runs_root: str | os.PathLike | None = None):
    """An Optuna Study maximising validation accuracy, created if missing (create=True), with the
    TPE sampler (constant liar, so parallel workers spread out) and the named pruner. ValueError
    for a bad name or storage, or an unknown study when create=False."""
    import optuna

    name = DEFAULT_STUDY if study is None else study.strip()
    if not _STUDY_RE.match(name):
        raise ValueError(f"invalid study name {study!r}: use 1-64 letters, digits, '.', '_' or '-'")
    sampler = optuna.samplers.TPESampler(constant_liar=True)
    store, label = _storage(storage, runs_root, create)
    if create:
        opened = optuna.create_study(study_name=name, storage=store, direction="maximize", sampler=sampler,
                                     pruner=make_pruner(pruner), load_if_exists=True)
    else:
        try:
            opened = optuna.load_study(study_name=name, storage=store, sampler=sampler, pruner=make_pruner(pruner))
        except KeyError:
            known = ", ".join(optuna.get_all_study_names(store)) or "none"
            raise ValueError(f"no study called {name!r} in {label} (studies there: {known})") from None
    if opened.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ValueError(f"study {name!r} in {label} minimises: it was not made by fmnist sweep")
    return opened


def list_studies(storage: str | None = None, *, runs_root: str | os.PathLike | None = None) -> list[str]:
    """The studies in a storage, sorted (none when the default journal file does not exist yet)."""
    import optuna

    try:
        store, _ = _storage(storage, runs_root, create=False)
    except ValueError:
        if storage is None and not Path(default_storage(runs_root)).exists():
            return []
        raise
    return sorted(optuna.get_all_study_names(store))


def _check_settings(study, base: TrainConfig, fixed: dict[str, Any]) -> None:
    """One study, one fixed setting: trials of different presets, epochs, training-set sizes or fixed
    knobs are not comparable. The first worker records them; a worker asking for others gets a
    ValueError."""
    wanted = {"preset": base.preset, "epochs": base.epochs, "limit": base.limit, "fixed": fixed}
    recorded = study.user_attrs.get("settings")
    if recorded is None:
        study.set_user_attr("settings", wanted)
    elif recorded != wanted:
        def text(s: dict) -> str:
            size = f"{s['limit']:,} images" if s.get("limit") else "all images"
            held = "".join(f", {k}={v}" for k, v in (s.get("fixed") or {}).items())
            return f"preset {s.get('preset') or 'none'}, {s.get('epochs')} epochs, {size}{held}"

        raise ValueError(f"study {study.study_name!r} runs {text(recorded)}; this sweep asks for {text(wanted)}: "
                         "use the same settings or another --study")


# ---- reading a study back ------------------------------------------------------------------------------

def study_rows(study: str, storage: str | None = None, *, runs_root: str | os.PathLike | None = None) -> list[dict]:
    """One row per trial: number, state, value, params, run (run folder or None), seconds, reason,
    epochs ({epoch: validation accuracy}), host."""
    opened = open_study(study, storage, create=False, runs_root=runs_root)
    rows = []
    for t in opened.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "value": t.value, "params": dict(t.params),
                     "run": t.user_attrs.get("run"), "seconds": t.user_attrs.get("seconds"),
                     "reason": t.user_attrs.get("reason", ""),
                     "epochs": {int(k): v for k, v in sorted(t.intermediate_values.items())},
                     "host": t.user_attrs.get("host")})
    return rows


def study_figures(study: str, storage: str | None = None, *,
                  runs_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Optuna's own Plotly figures: "history", "parallel" (one finished trial or more) and
    "importance" (two or more); those that cannot be drawn yet are left out."""
    import optuna
    from optuna import visualization as vis

    opened = open_study(study, storage, create=False, runs_root=runs_root)
    complete = len(opened.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    figures = {}
    for key, plot, needed in (("history", vis.plot_optimization_history, 1),
                              ("parallel", vis.plot_parallel_coordinate, 1),
                              ("importance", vis.plot_param_importances, 2)):
        if complete >= needed:
            try:
                figures[key] = plot(opened)
            except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. no parameter varied yet
                continue
    return figures


def best_run(study: str, storage: str | None = None, *,
             runs_root: str | os.PathLike | None = None) -> Path | None:
    """The best COMPLETE trial's run folder (None when there is none yet, or it was saved on another
    machine)."""
    rows = [r for r in study_rows(study, storage, runs_root=runs_root) if r["state"] == "COMPLETE" and r["run"]]
    if not rows:
        return None
    path = Path(max(rows, key=lambda r: r["value"])["run"])
    return path if path.is_dir() else None


# ---- running a sweep -------------------------------------------------------------------------------------

def _discard_run(run_dir: Path | None) -> None:
    """Remove a run a sweep does not keep: one rename out of the listing (hidden), then delete."""
    if run_dir is None or not run_dir.is_dir():
        return
    hidden = run_dir.parent / f".discarded-{run_dir.name}-{uuid.uuid4().hex[:6]}"
    os.rename(run_dir, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def _remove_staging(root: Path, run_name: str) -> None:
    """The hidden staging folder an interrupted training leaves behind."""
    from fmnist.runs import STAGING_PREFIX

    for path in root.glob(f"{STAGING_PREFIX}{run_name}-*"):
        shutil.rmtree(path, ignore_errors=True)


def _tag_run(run_dir: Path, study: str, number: int, params: dict, value: float) -> None:
    """Write the trial's tag as the run's verified `sweep/` bundle."""
    from fmnist.runs import add_files

    tag = {"study": study, "trial": number, "params": params, "value": value,
           "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    add_files(run_dir, {f"{TAG_BUNDLE}/trial.json": json.dumps(tag, indent=2).encode()})


def prepare_sweep(trials: int, *, study: str | None = None, storage: str | None = None,
                  timeout: float | None = None, preset: str | None = "fast", epochs: int | None = None,
                  limit: int | None = None, pruner: str = "median", fixed: dict[str, Any] | None = None,
                  runs_root: str | os.PathLike | None = None) -> tuple[TrainConfig, dict[str, Any], Any]:
    """(base TrainConfig, fixed knobs, opened Study) once every argument is checked, the storage opened
    and the study's settings agree; ValueError saying what is wrong. run_sweep starts with it; the
    command line calls it first too, to answer mistakes before TensorFlow's start-up."""
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be a whole number of at least 1, got {trials!r}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not math.isfinite(timeout) or timeout <= 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if pruner not in PRUNERS:
        raise ValueError(f"unknown pruner {pruner!r}; choose one of {', '.join(PRUNERS)}")
    base = base_config(preset, epochs, limit)
    fixed = {name: fixed_value(name, value) for name, value in (fixed or {}).items()}
    opened = open_study(study, storage, pruner=pruner, runs_root=runs_root)
    _check_settings(opened, base, fixed)
    return base, fixed, opened


def run_sweep(trials: int, *, study: str | None = None, storage: str | None = None, timeout: float | None = None,
              preset: str | None = "fast", epochs: int | None = None, limit: int | None = None,
              runs_root: str | os.PathLike | None = None, data_dir: str | None = None,
              dataset: fdata.Dataset | None = None, listeners: Iterable[Listener] = (),
              stop_event: threading.Event | None = None, pruner: str = "median",
              fixed: dict[str, Any] | None = None, export: bool = False) -> dict:
    """Run `trials` trials (this worker's share: other workers on the same study add theirs) and return
    the sweep_finished event. Stops starting new trials once `timeout` seconds have passed; when
    `stop_event` is set, the trial in flight stops at its next batch and is marked FAIL. `fixed` holds
    knobs of SEARCH_SPACE at one value (not searched: {"batch_size": 128}). `export`
    also exports each kept run to OpenVINO with its trust bundle and feature map (slow). Raises
    ValueError (bad arguments, storage, study settings) or fdata.DataError before the first trial."""
    from fmnist.runs import runs_root as resolve_root

    t0 = time.monotonic()
    base, fixed, opened = prepare_sweep(trials, study=study, storage=storage, timeout=timeout, preset=preset,
                                        epochs=epochs, limit=limit, pruner=pruner, fixed=fixed,
                                        runs_root=runs_root)
    if dataset is None:
        dataset = fdata.load_fashion_mnist(data_dir)
    listeners = list(listeners)

    def emit(event: dict) -> None:
        for listener in listeners:
            listener(event)

    name = opened.study_name
    label = storage_label((storage or "").strip() or default_storage(runs_root))
    emit({"kind": "sweep_started", "study": name, "storage": label, "trials": trials, "pruner": pruner,
          "preset": base.preset, "epochs": base.epochs, "limit": base.limit, "fixed": fixed})
    counts = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}
    numbers: list[int] = []
    timed_out, interrupted = False, None
    while len(numbers) < trials and not (stop_event is not None and stop_event.is_set()):
        if timeout is not None and time.monotonic() - t0 >= timeout:
            timed_out = True
            break
        finished = _run_trial(opened, base, fixed, dataset, resolve_root(runs_root), emit, stop_event, export)
        numbers.append(finished["number"])
        counts[finished["state"]] += 1
        if finished["reason"] == STOPPED_REASON:
            interrupted = finished["number"]
    best_value, best = _study_best(opened)
    summary = {"kind": "sweep_finished", "study": name, "completed": counts["COMPLETE"], "pruned": counts["PRUNED"],
               "failed": counts["FAIL"], "best_value": best_value, "best_run": best,
               "stopped": bool(stop_event is not None and stop_event.is_set()), "timed_out": timed_out,
               "numbers": numbers, "interrupted_trial": interrupted, "seconds": round(time.monotonic() - t0, 1),
               "study_trials": len(opened.get_trials(deepcopy=False))}
    emit(summary)
    return summary


def _study_best(opened) -> tuple[float | None, str | None]:
    """(value, run folder) of the study's best COMPLETE trial, any worker's."""
    import optuna

    complete = opened.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return None, None
    top = max(complete, key=lambda t: t.value)
    return top.value, top.user_attrs.get("run")


def _run_trial(opened, base: TrainConfig, fixed: dict[str, Any], dataset: fdata.Dataset, root: Path, emit: Listener,
               stop_event: threading.Event | None, export: bool) -> dict:
    """Ask for one trial, train it, tell Optuna how it ended; returns the trial_finished event."""
    from fmnist.runs import new_run_name
    from fmnist.training import train

    trial = opened.ask()
    number, t0 = trial.number, time.monotonic()
    run_name = new_run_name(f"sweep-t{number}-{opened.study_name}")
    state, value, run_dir, reason = "FAIL", None, None, ""
    try:
        params = suggest(trial, fixed)
        config = config_for(params, base)
        trial.set_user_attr("host", socket.gethostname())
        emit({"kind": "trial_started", "number": number, "params": params, "epochs": config.epochs})
        trial_stop = threading.Event()
        pruned: dict[str, Any] = {}

        def listen(event: dict) -> None:
            if stop_event is not None and stop_event.is_set():
                trial_stop.set()
            if event["kind"] == "epoch" and event.get("val_accuracy") is not None and not event.get("partial"):
                epoch, val = event["epoch"], float(event["val_accuracy"])
                trial.report(val, epoch)
                emit({"kind": "trial_epoch", "number": number, "epoch": epoch, "epochs": config.epochs,
                      "val_accuracy": val})
                # the last epoch is never pruned: its training is already paid for
                if epoch < config.epochs and not trial_stop.is_set() and trial.should_prune():
                    pruned.update(epoch=epoch, val_accuracy=val)
                    trial_stop.set()
            if event["kind"] in PASSED_THROUGH:
                emit({**event, "trial": number})

        result = train(config, dataset, listeners=[listen], stop_event=trial_stop, runs_root=root,
                       export=export, run_name=run_name)
        run_dir = result.run_dir
        if result.status == "completed":
            state, value = "COMPLETE", float(result.metrics["val_accuracy"])
            trial.set_user_attr("run", str(Path(run_dir).absolute()))
            trial.set_user_attr("test_accuracy", result.metrics.get("test_accuracy"))
            try:
                _tag_run(run_dir, opened.study_name, number, params, value)
            except Exception as exc:  # the run is saved and verified; only its tag is missing
                emit({"kind": "status", "message": f"could not tag {run_dir}: {exc}"})
        elif result.status == "stopped":
            _discard_run(run_dir)
            run_dir = None
            if pruned:
                state = "PRUNED"
                reason = (f"pruned after epoch {pruned['epoch']}: validation accuracy "
                          f"{pruned['val_accuracy']:.2%} below the pruner's bar")
            else:
                reason = STOPPED_REASON
        else:
            reason = f"training failed: {result.message}"
    except BaseException as exc:  # KeyboardInterrupt included: the trial must not stay RUNNING
        reason = f"interrupted ({type(exc).__name__})" if not isinstance(exc, Exception) else (
            f"{type(exc).__name__}: {exc}")
        _remove_staging(root, run_name)
        _tell(opened, trial, "FAIL", None, reason, time.monotonic() - t0)
        raise
    seconds = _tell(opened, trial, state, value, reason, time.monotonic() - t0)
    finished = {"kind": "trial_finished", "number": number, "state": state, "value": value,
                "run_dir": str(run_dir) if run_dir else None, "seconds": seconds, "reason": reason}
    emit(finished)
    return finished


def _tell(opened, trial, state: str, value: float | None, reason: str, seconds: float) -> float:
    """Record how a trial ended (its reason and time as user attributes first: a finished trial takes
    no more)."""
    import optuna

    seconds = round(seconds, 1)
    trial.set_user_attr("seconds", seconds)
    if reason:
        trial.set_user_attr("reason", reason)
    opened.tell(trial, value if state == "COMPLETE" else None, state=getattr(optuna.trial.TrialState, state))
    return seconds


# ---- the command line ----------------------------------------------------------------------------------

class _TrialPrefix:
    """A stream that puts the sweep's position in front of each line the training's ProgressBar writes."""

    def __init__(self, stream, prefix: Callable[[], str]):
        self.stream, self.prefix = stream, prefix

    def isatty(self) -> bool:
        return getattr(self.stream, "isatty", lambda: False)()

    def write(self, text: str) -> None:
        if text.startswith("\r"):
            self.stream.write("\r" + self.prefix() + text[1:])
        else:
            self.stream.write(self.prefix() + text)

    def flush(self) -> None:
        self.stream.flush()


class SweepProgress:
    """The sweep on the console: one line per trial start, epoch and end (trial count, epoch, best value
    so far), and the training's own progress bar (fmnist.console.ProgressBar) prefixed with the trial."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.trials, self.started, self.number, self.best = 0, 0, None, None
        self.tty = getattr(stream, "isatty", lambda: False)()
        self.bar = ProgressBar(stream=_TrialPrefix(stream, self._position))

    def _position(self) -> str:
        best = f"best {self.best:.2%}" if self.best is not None else "best -"
        return f"trial {self.number} ({self.started}/{self.trials}, {best}) "

    def _line(self, text: str) -> None:
        self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
        self.stream.flush()

    def __call__(self, event: dict) -> None:
        kind = event["kind"]
        if kind == "sweep_started":
            self.trials = event["trials"]
            size = f"{event['limit']:,} images" if event.get("limit") else "all images"
            held = "".join(f", {k}={v}" for k, v in (event.get("fixed") or {}).items())
            self._line(f"sweep {event['study']!r} in {event['storage']}: {event['trials']} trials of preset "
                       f"{event['preset'] or 'none'}, {event['epochs']} epochs, {size}{held}; pruner {event['pruner']}")
        elif kind == "trial_started":
            self.started, self.number = self.started + 1, event["number"]
            values = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in event["params"].items())
            self._line(f"{self._position()}started: {values}")
        elif kind == "trial_epoch":
            self._line(f"{self._position()}epoch {event['epoch']}/{event['epochs']}: "
                       f"validation accuracy {event['val_accuracy']:.2%}")
        elif kind == "trial_finished":
            if event["state"] == "COMPLETE" and (self.best is None or event["value"] > self.best):
                self.best = event["value"]
            result = f"{event['value']:.2%} -> {event['run_dir']}" if event["state"] == "COMPLETE" else event["reason"]
            self._line(f"{self._position()}{event['state']} in {event['seconds']:.0f}s: {result}")
        elif kind == "batch":
            self.bar(event)


def add_cli(subparsers, cli_error) -> None:
    """`python -m fmnist sweep --trials N [--study NAME] [--storage URL] [--timeout S] [--preset P]
    [--epochs E] [--limit N] [--pruner P] [--fix KNOB=VALUE] [--runs-dir D] [--data-dir D] [--export] [--json]`."""
    p = subparsers.add_parser(
        "sweep", help="hyperparameter sweep: Optuna trials of train, pruned early, each kept as a run",
        description="Run Optuna trials of the training over the search space in docs/sweeps.md; every "
                    "finished trial is saved as a verified run tagged with its study and trial number. "
                    "Workers on several machines join one study by running the same command with the "
                    "same --study and --storage. Ctrl-C stops cleanly (exit 130).")
    p.add_argument("--trials", type=int, required=True, help="trials this worker runs (at least 1)")
    p.add_argument("--study", help=f"study name (default: {DEFAULT_STUDY})")
    p.add_argument("--storage", help="journal file path, or an Optuna RDB URL: sqlite:///FILE, "
                                     "postgresql://USER:PASSWORD@HOST/DB, mysql://... "
                                     f"(default: RUNS_DIR/{SWEEPS_DIR}/journal.log)")
    p.add_argument("--timeout", type=float, help="start no new trial after this many seconds")
    p.add_argument("--preset", default="fast", help="the preset every trial starts from (default: fast)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default: the preset's)")
    p.add_argument("--limit", type=int, help="train on a stratified subset of this many images")
    p.add_argument("--pruner", default="median", help=f"{', '.join(PRUNERS)} (default: median)")
    p.add_argument("--fix", action="append", metavar="KNOB=VALUE",
                   help="hold a knob of the search space at one value, e.g. --fix batch_size=128 (repeatable)")
    p.add_argument("--export", action="store_true",
                   help="also export each kept run to OpenVINO, with its trust bundle and feature map (slow)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--data-dir", help=f"folder with the Fashion-MNIST files (default: ${fdata.ENV_VAR})")
    p.add_argument("--runs-dir", help="where runs are saved (default: $FMNIST_RUNS_DIR or ./runs)")

    def run(args) -> int:
        import signal

        import optuna

        from fmnist.training import import_tensorflow_quietly

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own lines
        preset = None if args.preset.lower() == "none" else args.preset
        try:  # bad arguments are answered before TensorFlow's seconds of start-up
            fixed = parse_fixed(args.fix or ())
            prepare_sweep(args.trials, study=args.study, storage=args.storage, timeout=args.timeout, preset=preset,
                          epochs=args.epochs, limit=args.limit, pruner=args.pruner, fixed=fixed,
                          runs_root=args.runs_dir)
        except ValueError as exc:
            raise cli_error(str(exc))
        import_tensorflow_quietly()
        stop = threading.Event()

        def on_signal(signum, frame) -> None:
            if stop.is_set():  # a second Ctrl-C: give up on the trial in flight now
                raise KeyboardInterrupt
            stop.set()
            print("\nstopping: the trial in flight ends at its next batch (Ctrl-C again to abandon it)",
                  file=sys.stderr, flush=True)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            summary = run_sweep(args.trials, study=args.study, storage=args.storage, timeout=args.timeout,
                                preset=preset,
                                epochs=args.epochs, limit=args.limit, runs_root=args.runs_dir,
                                data_dir=args.data_dir, listeners=[SweepProgress()], stop_event=stop,
                                pruner=args.pruner, fixed=fixed, export=args.export)
        except (ValueError, fdata.DataError) as exc:
            raise cli_error(str(exc))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if args.json:
            print(json.dumps(summary, indent=2))
        best = (f"best {summary['best_value']:.2%}: {summary['best_run']}" if summary["best_value"] is not None
                else "no finished trial yet")
        n = len(summary["numbers"])
        counts = (f"{n} trial{'' if n == 1 else 's'} here ({summary['completed']} complete, {summary['pruned']} "
                  f"pruned, {summary['failed']} failed) in {summary['seconds']:.0f}s")
        if summary["stopped"]:
            marked = ("" if summary["interrupted_trial"] is None
                      else f"; trial {summary['interrupted_trial']} marked FAIL (stopped)")
            print(f"error: interrupted: {counts}{marked}; study {best}", file=sys.stderr)
            return 130
        if not args.json:
            print(f"{counts}{'; --timeout reached' if summary['timed_out'] else ''}; study {summary['study']!r} "
                  f"{best}")
        return 0

    p.set_defaults(func=run)
