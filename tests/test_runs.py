"""Run directories: atomic saves, manifest checks, planted and tampered runs refused unloaded."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from fmnist import runs
from fmnist.keras_backend import load_model
from fmnist.runs import RunError, RunWriter, list_runs, verify_run


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    target = tmp_path / "runs" / tiny_run.name
    shutil.copytree(tiny_run, target)
    return target


def _rewrite_manifest(run_dir):
    """What an attacker who knows the format would do: make the manifest match the planted files."""
    manifest = runs.build_manifest(run_dir)
    (run_dir / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.slow
def test_completed_run_verifies_and_loads(run_copy, tiny_dataset):
    info = verify_run(run_copy)
    assert info.status == "completed" and info.usable and info.reason == ""
    model = load_model(run_copy)
    probs = np.asarray(model(tiny_dataset.x_test[:8, :, :, None].astype("float32")))
    stored = runs.load_test_probs(run_copy)[:8]
    assert np.allclose(probs, stored, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("edit", ["metrics", "truncate-model", "history"])
def test_edited_or_truncated_files_are_refused(run_copy, edit):
    if edit == "metrics":
        path = run_copy / "metrics.json"
        path.write_text(path.read_text().replace('"test_accuracy": ', '"test_accuracy": 0.99 + 0 * '))
    elif edit == "truncate-model":
        path = run_copy / "model.keras"
        path.write_bytes(path.read_bytes()[:1000])
    else:
        (run_copy / "history.json").write_text("{}")
    info = verify_run(run_copy)
    assert info.status == "broken" and ("sha256" in info.reason or "size" in info.reason)
    with pytest.raises(RunError, match="refusing to load"):
        load_model(run_copy)
    listed = {i.name: i for i in list_runs(run_copy.parent, include_default=False)}
    assert listed[run_copy.name].status == "broken"


@pytest.mark.slow
def test_planted_h5_file_is_refused(run_copy):
    (run_copy / "model.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    info = verify_run(run_copy)
    assert info.status == "broken" and "model.h5" in info.reason
    with pytest.raises(RunError):
        load_model(run_copy)


@pytest.mark.slow
def test_config_naming_os_system_is_refused_even_with_a_matching_manifest(run_copy):
    config = json.loads((run_copy / "config.json").read_text())
    config["arch"] = "os.system"
    (run_copy / "config.json").write_text(json.dumps(config))
    _rewrite_manifest(run_copy)
    with pytest.raises(RunError, match="not a valid training config"):
        load_model(run_copy)


@pytest.mark.slow
def test_planted_lambda_layer_never_runs(run_copy, tmp_path):
    """A model.keras whose Lambda layer writes a marker file when deserialised: the project
    rebuilds the architecture from its own code and reads weights only, so the marker never appears."""
    import keras

    marker = tmp_path / "pwned"
    code = f"lambda x: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), x)[1]"
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Lambda(eval(code), name="evil")(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    marker.unlink(missing_ok=True)  # building the layer above calls it once; start clean
    keras.Model(inputs, outputs).save(run_copy / "model.keras")
    assert not marker.exists()
    _rewrite_manifest(run_copy)
    with pytest.raises(RunError, match="weights do not match"):
        load_model(run_copy)
    assert not marker.exists()
    # the CLI refuses it too, with one line and no traceback
    proc = subprocess.run([sys.executable, "-m", "fmnist", "evaluate", str(run_copy), "--backend", "keras"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_run_without_manifest_is_not_loaded(run_copy):
    (run_copy / "manifest.json").unlink()
    assert verify_run(run_copy).status == "broken"
    with pytest.raises(RunError, match="manifest"):
        load_model(run_copy)


def test_listing_never_crashes_on_junk(tmp_path):
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "manifest.json").write_bytes(b"\xff\xfe not json")
    (tmp_path / "a-file.txt").write_text("hello")
    infos = list_runs(tmp_path, include_default=False)
    assert {i.name: i.status for i in infos} == {"not-a-run": "broken", "garbage": "broken"}
    assert all(i.reason for i in infos)


def test_unfinished_staging_is_never_listed(tmp_path):
    writer = RunWriter(tmp_path, "20260101-000000-paper-abcd")
    writer.write_json("config.json", {"arch": "paper"})
    assert list_runs(tmp_path, include_default=False) == []
    final = writer.commit({"status": "completed"})
    assert final.name == "20260101-000000-paper-abcd"


_WRITER_LOOP = textwrap.dedent("""
    import os, sys, numpy as np
    from fmnist.runs import RunWriter, add_files
    root = sys.argv[1]
    print("writing", flush=True)  # imports done: from here on the process only writes runs
    for i in range(10_000):
        w = RunWriter(root, f"run-{os.getpid()}-{i}")
        w.write_json("config.json", {"arch": "paper", "i": i})
        w.write_json("history.json", {"epochs": []})
        w.write_npy("test_probs.npy", np.random.rand(2000, 10).astype("float32"))
        w.path("model.keras").write_bytes(os.urandom(200_000))
        run = w.commit({"status": "completed"})
        add_files(run, {"openvino/fp32/model.bin": os.urandom(100_000), "openvino/fp32/model.xml": b"<net/>"})
""")

# Seconds after the writer reports that it has started writing: from its very first file to
# several whole runs and IR bundles in (one run plus its bundle takes ~10-40 ms here).
KILL_OFFSETS_S = (0.0, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.08, 0.12, 0.2, 0.3, 0.5)


@pytest.mark.slow
def test_runs_killed_mid_write_are_complete_or_absent(tmp_path):
    """SIGKILL a process that keeps saving runs (and adding IR bundles) at fixed offsets after it
    reports that it has started writing: every listed run is complete and verified, and every
    bundle is either whole or absent."""
    import select

    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    interrupted, staged_before = 0, set()
    for offset in KILL_OFFSETS_S:
        proc = subprocess.Popen([sys.executable, "-c", _WRITER_LOOP, str(tmp_path)], env=env,
                                stdout=subprocess.PIPE)
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            assert ready and proc.stdout.readline() == b"writing\n", "the writer never started writing"
            time.sleep(offset)
            assert proc.poll() is None, "the writer exited on its own"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc.stdout.close()
        # a new hidden staging folder left behind = the kill landed inside a run's save
        staged = {p.name for p in tmp_path.glob(".staging-*")}
        interrupted += bool(staged - staged_before)
        staged_before = staged
    infos = list_runs(tmp_path, include_default=False)
    assert len(infos) >= 5, "the writer should have finished several runs"
    assert interrupted >= 1, "no kill landed inside a save: the offsets test nothing"
    for info in infos:
        assert info.status == "completed" and info.reason == "", (info.name, info.reason)
        assert info.bundles.get("openvino", "ok") == "ok", (info.name, info.bundles)


_CONCURRENT_WRITER = textwrap.dedent("""
    import os, sys, numpy as np
    from fmnist.runs import RunWriter, add_files
    root, shared, tag = sys.argv[1], sys.argv[2], sys.argv[3]
    for i in range(12):
        w = RunWriter(root, f"run-{tag}-{i}")
        w.write_json("config.json", {"arch": "paper", "writer": tag, "i": i})
        w.write_json("history.json", {"epochs": []})
        w.write_npy("test_probs.npy", np.full((500, 10), i, "float32"))
        w.path("model.keras").write_bytes(os.urandom(100_000))
        w.commit({"status": "completed"})
        for _ in range(4):  # both processes also re-export the same run over and over
            payload = os.urandom(20_000)
            add_files(shared, {"openvino/fp32/model.bin": payload, "openvino/fp32/model.xml": tag.encode() * 10,
                               "openvino/int8/model.bin": payload})
""")


def _make_run(root, name: str):
    w = RunWriter(root, name)
    w.write_json("config.json", {"arch": "paper"})
    w.write_json("history.json", {"epochs": []})
    w.write_npy("test_probs.npy", np.zeros((10, 10), "float32"))
    w.path("model.keras").write_bytes(b"weights")
    return w.commit({"status": "completed"})


@pytest.mark.slow
def test_two_processes_saving_into_one_root_at_once_never_corrupt_each_other(tmp_path):
    """Two processes commit runs into the same root and re-export the same run concurrently: every run
    is complete and verified, and the shared run's IR bundle is whole and from one writer."""
    shared = _make_run(tmp_path, "shared")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    procs = [subprocess.Popen([sys.executable, "-c", _CONCURRENT_WRITER, str(tmp_path), str(shared), tag],
                              env=env, stderr=subprocess.PIPE, text=True) for tag in ("a", "b")]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    infos = {info.name: info for info in list_runs(tmp_path, include_default=False)}
    assert set(infos) == {"shared"} | {f"run-{t}-{i}" for t in "ab" for i in range(12)}
    for info in infos.values():
        assert info.status == "completed" and info.reason == "", (info.name, info.reason)
        if info.name != "shared":
            assert info.config["writer"] == info.name.split("-")[1]
    assert infos["shared"].bundles == {"openvino": "ok"}
    fp32 = shared / "openvino" / "fp32"
    assert fp32.joinpath("model.xml").read_bytes() in (b"a" * 10, b"b" * 10)
    assert fp32.joinpath("model.bin").read_bytes() == (shared / "openvino" / "int8" / "model.bin").read_bytes()
    assert not [p for p in shared.iterdir() if p.name.startswith((".staging-", ".retired-"))]
