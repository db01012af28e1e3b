"""The seams shared by several modules (issue 13): one child-process helper, one manifest API, one
preset-with-overrides function, one run-row function, the job log kept bounded by the server itself,
and the one place that touches Streamlit internals."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from fmnist import runs
from fmnist.child import Child, ChildEnded
from fmnist.config import PRESETS, preset_config
from tests.waits import wait_until

ROOT = Path(__file__).resolve().parents[1]


# ---- fmnist.child: run a function elsewhere, relay its events ----------------------------------------

def echo_target(link, count: int) -> None:
    """Child target: `count` progress events, then answer requests until None."""
    for i in range(count):
        link.emit({"kind": "progress", "i": i})
    while (request := link.receive()) is not None:
        link.emit({"kind": "answer", "double": request * 2, "stop": link.stop.is_set()})


def failing_target(link) -> None:
    link.emit({"kind": "progress"})
    raise ValueError("bad input\nsecond line")


def sleeping_target(link) -> None:
    link.emit({"kind": "ready", "pid": os.getpid()})
    time.sleep(120)


@pytest.mark.parametrize("in_thread", [True, False], ids=["thread", "process"])
def test_child_relays_events_requests_and_the_end(in_thread):
    child = Child(echo_target, (3,), name="fmnist-test-echo", in_thread=in_thread)
    try:
        events = [child.next_event(timeout=60) for _ in range(3)]
        assert [e["i"] for e in events] == [0, 1, 2]
        child.send(21)
        assert child.next_event(timeout=60) == {"kind": "answer", "double": 42, "stop": False}
        child.request_stop()
        child.send(1)
        assert child.next_event(timeout=60)["stop"] is True
        assert child.drain() == [] and not child.ended
        child.send(None)  # the target returns: only the end marker follows, never shown as an event
        with pytest.raises(ChildEnded):
            child.next_event(timeout=60)
        assert child.ended
    finally:
        assert child.close(grace_s=30) == 0


def test_a_failing_target_becomes_one_failed_event():
    child = Child(failing_target, name="fmnist-test-fail", in_thread=True)
    try:
        wait_until(lambda: not child.is_alive(), 30, "the failing thread to end")
        events = child.drain()
        assert events == [{"kind": "progress"},
                          {"kind": "failed", "run_dir": None, "message": "ValueError: bad input\nsecond line"}]
        assert child.ended
    finally:
        child.close()


def test_a_killed_child_is_seen_at_once_not_after_a_timeout():
    child = Child(sleeping_target, name="fmnist-test-sleep")
    try:
        ready = child.next_event(timeout=60)
        assert ready["kind"] == "ready" and child.pid == ready["pid"] != os.getpid()
        os.kill(ready["pid"], signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(ChildEnded):
            child.next_event(timeout=60)
        assert time.monotonic() - t0 < 10  # the broken pipe, not the 60 s timeout
    finally:
        assert child.close(grace_s=0) == -signal.SIGKILL


# ---- the job log stays bounded without anyone calling forget_finished ---------------------------------

def test_the_scheduler_forgets_old_finished_jobs():
    """The web server never calls forget_finished: the manager's scheduler keeps only the
    `keep_finished` most recent finished jobs, so a server that runs for months keeps its memory flat."""
    from fmnist.jobs import JobManager

    manager = JobManager(max_running=0, use_process=False, poll_s=0.05, export=False, keep_finished=2)
    try:
        jobs = [manager.submit(preset_config("fast", epochs=1), "s") for _ in range(4)]
        for job in jobs:
            job.stop()  # queued (max_running=0 starts nothing): cancelled at once
        assert all(job.snapshot()["status"] == "cancelled" for job in jobs)
        wait_until(lambda: len(manager.jobs()) == 2, 10, "the scheduler to forget the oldest jobs")
        assert [j.id for j in manager.jobs()] == [jobs[2].id, jobs[3].id]
        assert manager.get(jobs[0].id) is None and manager.get(jobs[3].id) is jobs[3]
    finally:
        manager.shutdown(timeout=10)


# ---- one manifest API ----------------------------------------------------------------------------

def test_manifest_api_builds_checks_and_rewrites(tmp_path):
    run = tmp_path / "r"
    (run / "sub").mkdir(parents=True)
    (run / "a.json").write_text("{}")
    (run / "sub" / "b.bin").write_bytes(b"\0" * 10)
    (run / ".lock").write_text("")
    manifest = runs.build_manifest(run)
    assert manifest["format"] == runs.RUN_FORMAT and sorted(manifest["files"]) == ["a.json", "sub/b.bin"]
    assert manifest["files"]["sub/b.bin"] == runs.file_entry(b"\0" * 10) == runs.file_entry(run / "sub" / "b.bin")
    runs.write_manifest(run)
    assert runs.manifest_files(run) == manifest["files"]
    digest = runs.manifest_digest(run)
    entry = runs.file_entry(run / "a.json")
    assert runs.entry_mismatch(entry, runs.file_entry(b"{}")) is None
    assert runs.entry_mismatch(entry, runs.file_entry(b"{ }")) == "size"
    assert runs.entry_mismatch(entry, runs.file_entry(b"[]")) == "sha256"
    (run / "a.json").write_text("[]")
    runs.write_manifest(run)
    assert runs.manifest_digest(run) != digest and runs.manifest_digest(tmp_path / "none") == "missing"
    (run / runs.MANIFEST).write_text(json.dumps({"files": []}))
    with pytest.raises(ValueError, match="malformed"):
        runs.manifest_files(run)


# ---- one preset-with-overrides function, one run-row function -------------------------------------

def test_preset_config_is_what_the_cli_builds():
    from fmnist.cli import build_parser, config_from_args

    args = build_parser().parse_args(["train", "--preset", "fast", "--epochs", "5", "--arch", "paper"])
    config = config_from_args(args)
    assert config == preset_config("fast", epochs=5, arch="paper", limit=None)
    assert (config.preset, config.epochs, config.arch, config.widths) == ("fast", 5, "paper", None)
    assert preset_config("best", epochs=None).epochs == PRESETS["best"]["epochs"]  # None: not given
    assert preset_config(None, epochs=2).preset is None and preset_config(None).arch == "paper"
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("fastest")


def test_run_row_serves_the_cli_and_compare(shipped_model, tmp_path):
    (tmp_path / "broken").mkdir()
    rows = {r["name"]: r for r in map(runs.run_row, runs.list_runs(tmp_path))}
    default = rows[runs.DEFAULT_NAME]
    assert default["configuration"] == "shipped default" and default["training_set"] == runs.FULL_TRAINING_SET
    assert isinstance(default["test_accuracy"], float) and default["status"] == "completed"
    broken = rows["broken"]
    assert broken["status"] == "broken" and broken["reason"] and broken["configuration"] is None


# ---- the Streamlit internals, in one place each ----------------------------------------------------

def test_navigation_guard_leaves_the_legacy_mode_and_fails_soft(monkeypatch):
    """pages/_navigation.py reads one Streamlit internal; the pinned Streamlit still has it, and
    without it the guard does nothing instead of failing."""
    from streamlit.runtime.pages_manager import PagesManager

    from pages._navigation import leave_legacy_pages_mode, legacy_pages_mode

    monkeypatch.setattr(PagesManager, "uses_pages_directory", True)
    assert legacy_pages_mode() and leave_legacy_pages_mode()
    assert PagesManager.uses_pages_directory is False and not leave_legacy_pages_mode()
    monkeypatch.delattr(PagesManager, "uses_pages_directory")
    assert not legacy_pages_mode() and not leave_legacy_pages_mode()


def test_post_script_gc_is_an_option_the_pinned_streamlit_knows():
    """.streamlit/config.toml turns off Streamlit's garbage collection after every rerun with a hidden
    (undocumented) option; an unknown option would only print a warning, so pin that it still exists."""
    import tomllib

    import streamlit as st

    assert isinstance(st.get_option("runner.postScriptGC"), bool)  # an unknown key raises
    settings = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert settings["runner"]["postScriptGC"] is False
