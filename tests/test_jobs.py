"""The training job queue: one job at a time, queue positions, stop, cancel, sessions kept apart,
closed sessions' jobs stopped, child processes cleaned up, memory flat across cycles."""

from __future__ import annotations

import gc
import os
import time

import numpy as np
import pytest

from fmnist.data import synthetic_dataset
from fmnist.jobs import JobManager
from fmnist.training import TrainConfig
from tests.waits import wait_until

pytestmark = pytest.mark.slow  # every test trains (threads or child processes)

TINY = dict(arch="modern", widths=[4, 8, 8], epochs=1, batch_size=64, val_fraction=0.1)


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(n_train=400, n_test=100)


@pytest.fixture
def threads():
    manager = JobManager(use_process=False, orphan_grace_s=0.3, poll_s=0.05, export=False)
    yield manager
    manager.shutdown(timeout=60)


def test_one_job_at_a_time_with_queue_positions_and_no_cross_talk(threads, data, tmp_path):
    a = threads.submit(TrainConfig(**TINY), "session-a", runs_root=tmp_path, dataset=data)
    b = threads.submit(TrainConfig(**{**TINY, "seed": 1}), "session-b", runs_root=tmp_path, dataset=data)
    seen_b_waiting = False
    deadline = time.monotonic() + 120
    while a.snapshot()["active"]:
        assert time.monotonic() < deadline, f"job a still active after 120 s: {a.snapshot()['status']}"
        a_started = a.snapshot()["status"] != "queued"  # until the scheduler picks a up, b is 2nd
        snap_b = b.snapshot()
        if snap_b["status"] == "queued" and a_started:
            assert snap_b["queue_position"] == 1
            seen_b_waiting = True
        assert not (a.snapshot()["status"] == "running" and snap_b["status"] == "running")
        time.sleep(0.02)
    assert seen_b_waiting
    final_a, final_b = threads.wait(a.id, 120), threads.wait(b.id, 120)
    assert final_a["status"] == final_b["status"] == "completed", (final_a["message"], final_b["message"])
    assert final_a["run_dir"] != final_b["run_dir"]
    assert not os.path.exists(os.path.join(final_a["run_dir"], "openvino"))  # the manager's export=False
    assert final_a["epochs"] and final_a["batches"] and final_a["start"]["n_train"] == 360
    assert [j.id for j in threads.jobs_for("session-a")] == [a.id]
    assert [j.id for j in threads.jobs_for("session-b")] == [b.id]
    assert final_a["config"]["seed"] == 0 and final_b["config"]["seed"] == 1


def test_stop_within_a_batch_and_cancel_queued(threads, data, tmp_path):
    long = threads.submit(TrainConfig(**{**TINY, "epochs": 200, "batch_size": 8}), "s", runs_root=tmp_path,
                          dataset=data)
    queued = threads.submit(TrainConfig(**TINY), "s", runs_root=tmp_path, dataset=data)
    _first_batch(long)
    assert queued.snapshot()["queue_position"] == 1
    queued.stop()
    assert queued.snapshot()["status"] == "cancelled"
    long.stop()
    # stop() records the events the training sent before the request (a loaded machine lets the
    # trainer run ahead of the scheduler), so this is the step the training had reached
    step_at_stop = long.snapshot()["last_batch"]["global_step"]
    final = threads.wait(long.id, 120)
    assert final["status"] == "stopped"
    assert final["last_batch"]["global_step"] <= step_at_stop + 2  # honoured within a batch or two
    assert final["run_dir"] and os.path.isdir(final["run_dir"])


def _first_batch(job, timeout: float = 120) -> None:
    """Until the job has trained its first batch; a job that ends before it fails with its message."""
    def reached():
        snap = job.snapshot()
        assert snap["last_batch"] or snap["active"], f"job ended before its first batch: {snap['message']}"
        return snap["last_batch"]

    wait_until(reached, timeout, "the job's first batch")


def test_invalid_config_is_refused_before_queueing(threads):
    with pytest.raises(ValueError, match="epochs"):
        threads.submit({**TINY, "epochs": 0}, "s")


def test_first_use_job_stores_both_bundles_once_per_run(threads, tiny_run, tiny_dataset, tmp_path):
    """A run trained before the trust bundle and the map: one job (a second request joins it) computes
    both, stored through runs.add_files, and the run verifies with them."""
    import shutil

    from fmnist import featuremap, trust
    from fmnist.jobs import missing_artifacts
    from fmnist.runs import verify_run

    run = tmp_path / tiny_run.name
    shutil.copytree(tiny_run, run)
    assert missing_artifacts(run) == ["trust", "map"]
    job = threads.submit_artifacts(run, "session-a", dataset=tiny_dataset)
    again = threads.submit_artifacts(str(run) + "/", "session-b", dataset=tiny_dataset)  # another tab
    assert again.id == job.id and {"session-a", "session-b"} <= set(job.snapshot()["sessions"])
    assert threads.artifacts_job(run).id == job.id  # found again by the run alone (a reload)
    final = threads.wait(job.id, 240)
    assert final["status"] == "completed", final["message"]
    assert final["kind"] == "artifacts" and final["message"] == "computed calibration and feature map"
    info = verify_run(run)
    assert info.usable and info.bundles.get("trust") == "ok" and info.bundles.get("map") == "ok", info.bundles
    assert missing_artifacts(run) == []
    assert trust.load(run).temperature > 0 and len(featuremap.load(run).coords) == len(tiny_dataset.y_test)
    with pytest.raises(ValueError, match="already has"):
        threads.submit_artifacts(run, "session-a", dataset=tiny_dataset)


def test_first_use_job_with_another_data_set_fails_with_one_line(threads, tiny_run, data, tmp_path):
    import shutil

    from fmnist.jobs import missing_artifacts

    run = tmp_path / tiny_run.name
    shutil.copytree(tiny_run, run)
    job = threads.submit_artifacts(run, "s", dataset=data)  # 100 test items, the run's answers cover 128
    final = threads.wait(job.id, 120)
    assert final["status"] == "failed"
    assert "test set of 128 images, the data here has 100" in final["message"] and "\n" not in final["message"]
    assert missing_artifacts(run) == ["trust", "map"]  # nothing half-written
    assert not [p.name for p in run.iterdir() if p.name.startswith(".staging")]


def test_closed_session_job_is_stopped(data, tmp_path):
    manager = JobManager(use_process=False, orphan_grace_s=0.3, poll_s=0.05, export=False)
    alive = {"s": True}
    manager.set_session_checker(lambda sid: alive.get(sid, False))
    try:
        job = manager.submit(TrainConfig(**{**TINY, "epochs": 200, "batch_size": 8}), "s", runs_root=tmp_path,
                             dataset=data)
        _first_batch(job)
        alive["s"] = False  # the tab closed
        final = manager.wait(job.id, 120)
        assert final["status"] == "stopped"
        # a page reload adopts the job under the new session id
        other = manager.submit(TrainConfig(**TINY), "old", runs_root=tmp_path, dataset=data)
        manager.adopt(other.id, "s")
        alive["s"] = True
        assert manager.wait(other.id, 120)["status"] == "completed"
    finally:
        manager.shutdown(timeout=60)


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _training_children() -> list:
    """Live spawned children of this process (the multiprocessing resource tracker aside)."""
    import psutil

    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
            if "spawn_main" in cmd and child.status() != psutil.STATUS_ZOMBIE:
                out.append(cmd)
        except psutil.Error:
            pass
    return out


def test_child_process_train_classify_cycles_kill_and_memory(data, tmp_path):
    """Trainings run in spawned children: killed jobs leave no process or half-written run, and the
    server's memory stays flat over repeated train-then-classify cycles."""
    from fmnist.backends import get_backend

    from fmnist.keras_process import stop_worker

    stop_worker()  # a Keras worker an earlier test's page started is no training child: not counted below
    manager = JobManager(use_process=True, poll_s=0.05, export=False)
    try:
        # kill: the child ends at once and its staging folder is removed
        job = manager.submit(TrainConfig(**{**TINY, "epochs": 200, "batch_size": 8}), "k", runs_root=tmp_path,
                             dataset=data)
        _first_batch(job)
        pid = manager.pid(job.id)
        assert pid is not None and pid != os.getpid()
        manager.kill(job.id)
        final = manager.wait(job.id, 60)
        assert final["status"] == "stopped" and "without saving" in final["message"]
        assert not _alive(pid)
        assert not list(tmp_path.glob(".staging-*"))

        rss = []
        for cycle in range(3):
            job = manager.submit(TrainConfig(**{**TINY, "seed": cycle}), "c", runs_root=tmp_path, dataset=data)
            final = manager.wait(job.id, 180)
            assert final["status"] == "completed", final["message"]
            model = get_backend(final["run_dir"], "keras")
            probs = model.predict_proba(data.x_test[:32])
            assert probs.shape == (32, 10) and np.allclose(probs.sum(1), 1, atol=1e-4)
            del model
            gc.collect()
            manager.forget_finished(keep=2)
            rss.append(_rss_mb())
        print(f"server RSS after each train+classify cycle: {[round(r) for r in rss]} MiB")
        # TensorFlow is loaded into this process by the first cycle's classification (rss[0] is after
        # it); each later cycle must not add more than a few MiB (measured: +0 to +1 MiB per cycle)
        assert rss[-1] - rss[0] < 24, rss
        assert max(b - a for a, b in zip(rss, rss[1:])) < 16, rss
        assert len(manager.jobs()) <= 2  # forget_finished keeps the logs bounded
        # the child is reaped just after its last event
        wait_until(lambda: not manager.children(), 10, "the last training child to be reaped")
        assert not _training_children(), "a training child process outlived its job"
    finally:
        manager.shutdown(timeout=60)
