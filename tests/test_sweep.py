"""Hyperparameter sweeps (fmnist.sweep): the search space, storage, one-line errors, a stop in flight,
and two `python -m fmnist sweep` workers sharing one study file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fmnist import sweep
from fmnist.cli import main
from fmnist.config import TrainConfig
from fmnist.runs import BUNDLES, list_runs, read_verified_bundle, verify_run
from tests.waits import wait_until

ROOT = Path(__file__).resolve().parent.parent


def corner_params() -> list[dict]:
    """Every knob at its low end, then at its high end (categorical: first and last choice)."""
    low, high = {}, {}
    for name, spec in sweep.SEARCH_SPACE.items():
        categorical = spec["kind"] == "categorical"
        low[name], high[name] = (spec["choices"][0], spec["choices"][-1]) if categorical else (spec["low"], spec["high"])
    return [low, high]


@pytest.mark.parametrize("preset", ["fast", "paper", "best", None])
def test_search_space_gives_valid_configs(preset):
    base = sweep.base_config(preset, epochs=2, limit=3000)
    for params in corner_params():
        config = sweep.config_for(params, base)
        assert config.validate() is config
        assert (config.epochs, config.limit, config.preset) == (2, 3000, preset)  # fixed by the caller
        widths = base.widths or sweep.DEFAULTS[base.arch]["widths"]
        assert config.widths == [max(1, round(w * params["width_scale"])) for w in widths]
        for name, value in params.items():
            if name != "width_scale":
                assert getattr(config, sweep.SEARCH_SPACE[name]["field"]) == value
    for name, spec in sweep.SEARCH_SPACE.items():  # inside the config's own bounds
        if name in TrainConfig.BOUNDS and spec["kind"] != "categorical":
            low, high = TrainConfig.BOUNDS[name]
            assert low <= spec["low"] < spec["high"] <= high, name
    with pytest.raises(ValueError, match="unknown search-space knob"):
        sweep.config_for({"momentum": 0.9}, sweep.base_config())


def test_trials_draw_every_knob_but_the_fixed_ones():
    import optuna

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    base = sweep.base_config("fast", epochs=2, limit=3000)
    fixed = sweep.parse_fixed(["batch_size=128", "augment_flip=false", "width_scale=1"])
    assert fixed == {"batch_size": 128, "augment_flip": False, "width_scale": 1.0}
    for i in range(20):
        trial = study.ask()
        params = sweep.suggest(trial, fixed if i % 2 else None)
        assert set(params) == set(sweep.SEARCH_SPACE)
        assert set(trial.params) == set(sweep.SEARCH_SPACE) - (set(fixed) if i % 2 else set())
        config = sweep.config_for(params, base)  # valid, or it raises
        if i % 2:
            assert (config.batch_size, config.augment_flip, config.widths) == (128, False, base.widths)
        study.tell(trial, 0.5)


def test_default_storage_lives_hidden_in_the_runs_folder(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    assert sweep.default_storage(runs) == str((runs / ".sweeps" / "journal.log").absolute())
    monkeypatch.setenv("FMNIST_RUNS_DIR", str(tmp_path / "elsewhere"))
    assert sweep.default_storage() == str((tmp_path / "elsewhere" / ".sweeps" / "journal.log").absolute())
    assert sweep.list_studies(runs_root=runs) == [] and not runs.exists()  # reading creates nothing
    sweep.open_study("a", None, runs_root=runs)
    sweep.open_study("b", None, runs_root=runs)
    assert sweep.list_studies(runs_root=runs) == ["a", "b"]
    assert list_runs(runs, include_default=False) == []  # the hidden .sweeps folder is not a run
    assert sweep.TAG_BUNDLE in BUNDLES  # the tag is a verified bundle of the run


def test_sqlite_url_and_unknown_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    sweep.open_study("s1", url)
    assert sweep.list_studies(url) == ["s1"]
    with pytest.raises(ValueError, match=r"no study called 'nope' .*studies there: s1"):
        sweep.open_study("nope", url, create=False)
    assert sweep.study_figures("s1", url) == {} and sweep.best_run("s1", url) is None  # nothing finished yet


def test_a_study_keeps_its_settings(tmp_path):
    storage = str(tmp_path / "j.log")
    sweep.prepare_sweep(2, study="s", storage=storage, preset="fast", epochs=2, limit=3000)
    sweep.prepare_sweep(5, study="s", storage=storage, preset="fast", epochs=2, limit=3000)  # same: joins
    with pytest.raises(ValueError, match=r"study 's' runs preset fast, 2 epochs, 3,000 images; this sweep asks "
                                         r"for preset fast, 3 epochs"):
        sweep.prepare_sweep(2, study="s", storage=storage, preset="fast", epochs=3, limit=3000)
    with pytest.raises(ValueError, match=r"this sweep asks for preset fast, 2 epochs, 3,000 images, batch_size=64"):
        sweep.prepare_sweep(2, study="s", storage=storage, preset="fast", epochs=2, limit=3000,
                            fixed={"batch_size": 64})


def test_timeout_stops_starting_trials(tiny_dataset, tmp_path):
    """--timeout is checked before each trial: past it, no new trial starts (here: none at all)."""
    events = []
    summary = sweep.run_sweep(3, study="t", storage=str(tmp_path / "j.log"), timeout=1e-9, runs_root=tmp_path / "runs",
                              dataset=tiny_dataset, listeners=[events.append])
    assert summary["timed_out"] and not summary["stopped"] and summary["numbers"] == [] and summary["study_trials"] == 0
    assert [e["kind"] for e in events] == ["sweep_started", "sweep_finished"] and events[-1] == summary
    assert summary["best_value"] is None and summary["best_run"] is None


@pytest.mark.parametrize("args, message", [
    (["--trials", "0"], "trials must be a whole number of at least 1, got 0"),
    (["--trials", "2", "--preset", "nope"], "unknown preset 'nope'; choose one of paper, fast, best"),
    (["--trials", "2", "--limit", "50"], "limit must be between 100 and 60000, got 50"),
    (["--trials", "2", "--epochs", "0"], "epochs must be between 1 and 200, got 0"),
    (["--trials", "2", "--timeout", "-5"], "timeout must be a positive number of seconds, got -5.0"),
    (["--trials", "2", "--pruner", "fastest"], "unknown pruner 'fastest'; choose one of median, halving, none"),
    (["--trials", "2", "--fix", "batch_size=100"], "batch_size must be one of 64, 128, 256, got '100'"),
    (["--trials", "2", "--fix", "momentum=0.9"], "unknown search-space knob 'momentum'"),
    (["--trials", "2", "--fix", "learning_rate"], "--fix takes KNOB=VALUE"),
    (["--trials", "2", "--study", "a/b"], "invalid study name 'a/b'"),
    (["--trials", "2", "--storage", "redis://host"], "unsupported storage 'redis://host'"),
    (["--trials", "2", "--storage", "postgresql://me:secret@db.example/fm"],
     "cannot open storage postgresql://me:***@db.example/fm: "),  # driver missing or server unreachable
    (["--trials", "2", "--storage", "sqlite:////no/such/folder/x.db"], "cannot open storage sqlite:////no/such"),
])
def test_bad_arguments_get_one_line(args, message, tmp_path, capsys):
    code = main(["sweep", *args, "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert "secret" not in err  # a storage password is never printed
    assert not any((tmp_path / "runs").glob("[!.]*"))  # no run was started


# The tiny search of the process tests: 3,000 images, 2 epochs, the fast preset at half its widths
# and one batch size (the costly corners of the space held fixed; the rest is searched).
FIXED = {"width_scale": 0.5, "batch_size": 128}


def sweep_command(tmp_path: Path, data_dir: Path, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fmnist", "sweep", "--trials", str(trials), "--limit", "3000", "--epochs", "2",
            "--study", "pair", "--preset", "paper", "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(data_dir),
            *(f"--fix={k}={v}" for k, v in FIXED.items()), *extra]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(600)
def test_two_workers_share_one_study(real_data_dir, tmp_path):
    """Two `python -m fmnist sweep --trials 4` started at once on the default storage (one journal file
    in the runs folder): 8 trials, none run twice, some pruned after epoch 1 (successive halving),
    every COMPLETE trial a verified, tagged run that `python -m fmnist runs` lists, nothing else left."""
    cmd = sweep_command(tmp_path, real_data_dir, 4, "--pruner", "halving", "--json")
    t0 = time.monotonic()
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        outputs = [p.communicate(timeout=540) for p in procs]
    finally:
        for p in procs:
            p.kill()
    wall = time.monotonic() - t0
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    summaries = [json.loads(out) for out, _ in outputs]
    numbers = [n for s in summaries for n in s["numbers"]]
    assert sorted(numbers) == list(range(8)), summaries  # each trial number run once, by one worker
    assert all(len(s["numbers"]) == 4 and s["failed"] == 0 for s in summaries)

    runs = tmp_path / "runs"
    assert Path(sweep.default_storage(runs)).is_file()
    rows = sweep.study_rows("pair", runs_root=runs)
    states = [r["state"] for r in rows]
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    print(f"\ntwo workers, 8 trials: {wall:.0f} s wall, {len(complete)} complete, {len(pruned)} pruned")
    assert len(rows) == 8 and set(states) <= {"COMPLETE", "PRUNED"}, rows
    assert pruned and complete, states
    for r in pruned:  # stopped after epoch 1 of 2, their runs removed
        assert r["reason"].startswith("pruned after epoch 1") and list(r["epochs"]) == [1] and r["run"] is None

    listed = json.loads(subprocess.run(
        [sys.executable, "-m", "fmnist", "runs", "--json", "--runs-dir", str(runs)], cwd=ROOT,
        capture_output=True, text=True, timeout=120, check=True).stdout)
    by_path = {row["path"]: row for row in listed}
    for r in complete:
        row = by_path[r["run"]]
        assert row["status"] == "completed" and row["reason"] == "" and f"sweep-t{r['number']}-pair" in row["name"]
        assert verify_run(r["run"]).bundles.get("sweep") == "ok"
        tag = json.loads(read_verified_bundle(Path(r["run"]), "sweep", ("trial.json",))["trial.json"])
        assert (tag["study"], tag["trial"], tag["params"]) == ("pair", r["number"], {**r["params"], **FIXED})
        assert row["best_val_accuracy"] == pytest.approx(r["value"], abs=1e-6)
    kept = sorted(p.name for p in runs.iterdir() if p.name != sweep.SWEEPS_DIR)  # no staging or removed run left
    assert kept == sorted(Path(r["run"]).name for r in complete)
    best = max(complete, key=lambda r: r["value"])
    assert sweep.best_run("pair", runs_root=runs) == Path(best["run"])
    figures = sweep.study_figures("pair", runs_root=runs)
    assert {"history", "parallel"} <= set(figures) and ("importance" in figures) == (len(complete) >= 2)


@pytest.mark.slow
@pytest.mark.integration
def test_ctrl_c_stops_the_command_cleanly(real_data_dir, tmp_path):
    """Ctrl-C during a trial: exit 130 with one line, the trial marked FAIL, no run or staging left."""
    storage = str(tmp_path / "journal.log")  # a journal file of one's own (--storage PATH)
    proc = subprocess.Popen(sweep_command(tmp_path, real_data_dir, 3, "--pruner", "none", "--storage", storage),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: [lines.append(line) for line in proc.stderr], daemon=True)
    reader.start()
    try:
        # the progress bar's first line: training is under way
        wait_until(lambda: any(" epoch 1 [" in line for line in lines), 240, "the first trial's progress")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=180)
        reader.join(timeout=10)
    finally:
        proc.kill()
    err = "".join(lines)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: interrupted: 1 trial here (0 complete, 0 pruned, 1 failed)"), err
    assert "trial 0 marked FAIL (stopped)" in last
    rows = sweep.study_rows("pair", storage)
    assert [(r["state"], r["reason"]) for r in rows] == [("FAIL", sweep.STOPPED_REASON)]
    assert not any((tmp_path / "runs").iterdir())  # the partial run removed, no staging folder left
