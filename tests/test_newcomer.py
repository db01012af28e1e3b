"""Issue 12, what a new user hit: pinned with the CLI, AppTest and plain unit tests.

The browser half (reload after a page switch, Stop showing what was saved, a quiet server
terminal) is tests/test_browser_reattach.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fmnist.data import CLASS_NAMES
from fmnist.runs import DEFAULT_MODEL_DIR, config_label, load_metrics
from tests import prereq
from tests.test_app import app, goto, needs_data, runs_dir, texts  # noqa: F401  (AppTest fixtures, one definition)

ROOT = Path(__file__).resolve().parent.parent


# ---- the CLI (finding 11) -----------------------------------------------------------------------

def run_cli(*args: str, importtime: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "FMNIST_DATA_DIR": str(prereq.require_data())}
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "fmnist", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def imported_modules(stderr: str) -> set[str]:
    """Module names from `python -X importtime` (its lines end with the module, indented)."""
    return {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def no_tensorflow(modules: set[str]) -> bool:
    return not any(m == name or m.startswith(name + ".") for m in modules for name in ("tensorflow", "keras"))


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """Four test-set items saved as PNGs (112x112, light on dark as in the data set), plus a note
    that is not an image: a folder the way a user has one."""
    from PIL import Image

    from fmnist.data import load_fashion_mnist

    prereq.require_shipped_model()
    ds = load_fashion_mnist(prereq.require_data())
    folder = tmp_path_factory.mktemp("photos")
    for i in range(4):
        Image.fromarray(ds.x_test[i]).resize((112, 112)).save(folder / f"item{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_a_folder_with_openvino_and_without_tensorflow(photo_folder):
    done = run_cli("predict", str(photo_folder), "--json", importtime=True)
    assert done.returncode == 0, done.stderr[-2000:]
    answers = json.loads(done.stdout)
    assert [Path(a["file"]).name for a in answers] == [f"item{i}.png" for i in range(4)]  # the .txt is skipped
    assert all(a["backend"] == "openvino-fp32" and a["class_name"] in CLASS_NAMES for a in answers)
    assert all(abs(sum(a["probabilities"]) - 1) < 1e-3 for a in answers)
    modules = imported_modules(done.stderr)
    assert "openvino" in modules and no_tensorflow(modules)


def shipped_accuracy() -> str:
    """The shipped model's test accuracy as the CLI's first line writes it (from its metrics.json)."""
    return f"{100 * load_metrics(DEFAULT_MODEL_DIR)['test_accuracy']:.2f}%"


def test_predict_plain_output_names_model_and_backend(photo_folder):
    done = run_cli("predict", str(photo_folder / "item0.png"))
    assert done.returncode == 0, done.stderr
    first, answer = done.stdout.splitlines()[:2]
    assert first == f"model default (shipped default, {shipped_accuracy()}) · backend OpenVINO FP32"
    assert answer.startswith(str(photo_folder / "item0.png") + ": ")


def test_predict_an_empty_folder_is_a_clear_error(tmp_path):
    done = run_cli("predict", str(tmp_path))
    assert done.returncode == 2 and "no PNG, JPEG or WebP images in this folder" in done.stderr
    assert "Traceback" not in done.stderr


def test_evaluate_prints_full_class_names_without_tensorflow():
    prereq.require_shipped_model()
    done = run_cli("evaluate", importtime=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert no_tensorflow(imported_modules(done.stderr))
    matrix = done.stdout.split("Confusion matrix")[1].splitlines()[2:12]
    assert [row.split(None, 1)[1].rsplit(None, 10)[0] for row in matrix] == list(CLASS_NAMES)
    assert "Pullove " not in done.stdout and "Ankle b " not in done.stdout
    assert done.stdout.startswith(f"model default (shipped default, {shipped_accuracy()})")


def test_runs_calls_the_shipped_model_shipped_default(tmp_path):
    prereq.require_shipped_model()
    done = run_cli("runs", "--runs-dir", str(tmp_path))
    row = next(line for line in done.stdout.splitlines() if line.startswith("default "))
    assert row.rstrip().endswith("shipped default") and " best" not in row


# ---- names for changed presets (finding 3) --------------------------------------------------------

def test_a_changed_preset_gets_its_own_name():
    from fmnist.training import PRESETS

    fast = {**PRESETS["fast"], "preset": "fast"}
    assert config_label(fast) == "fast"
    assert config_label({**fast, "epochs": 7}) == "fast (custom: epochs 7)"
    assert config_label({**fast, "epochs": 7, "limit": 5000}) == "fast (custom: epochs 7, training set 5,000)"
    assert config_label({"arch": "modern", "epochs": 5}) == "custom modern"


# ---- the job queue: watchers (finding 1) ----------------------------------------------------------

def test_a_job_stays_alive_while_any_of_its_sessions_is(tiny_dataset, tmp_path):
    """A reload or a second tab attaches another session: the first one closing must not stop it."""
    from fmnist.jobs import JobManager
    from fmnist.training import TrainConfig

    manager = JobManager(use_process=False, orphan_grace_s=0.2, poll_s=0.05, export=False)
    alive = {"first-tab": True, "reload": True}
    manager.set_session_checker(lambda sid: alive.get(sid, False))
    try:
        job = manager.submit(TrainConfig(arch="modern", widths=[4, 8, 8], epochs=3, batch_size=32), "first-tab",
                             runs_root=tmp_path, dataset=tiny_dataset)
        manager.attach(job.id, "reload")
        alive["first-tab"] = False  # the old tab is gone for good
        final = manager.wait(job.id, 300)
        assert final["status"] == "completed", final["message"]
        assert final["sessions"] == ["first-tab", "reload"]
        # with every watcher gone, a job is stopped after the grace period (its best weights saved)
        job = manager.submit(TrainConfig(arch="modern", widths=[4, 8, 8], epochs=200, batch_size=8), "reload",
                             runs_root=tmp_path, dataset=tiny_dataset)
        while not job.snapshot()["last_batch"]:
            time.sleep(0.02)
        alive["reload"] = False
        assert manager.wait(job.id, 300)["status"] == "stopped"
    finally:
        manager.shutdown(timeout=60)


def test_spawned_children_do_not_rerun_the_app_script(tmp_path):
    """Inside `streamlit run`, `__main__` is the app script; "spawn" re-ran it in every training child
    (the server's terminal filled with Streamlit warnings). fmnist.child.plain_main starts children without it."""
    script = tmp_path / "app_like.py"
    marker = tmp_path / "ran"
    script.write_text(f"open({str(marker)!r}, 'a').write('x')\n")
    code = f"""
import multiprocessing as mp, runpy, sys, types
from fmnist.child import plain_main
fake = types.ModuleType("__main__"); fake.__file__ = {str(script)!r}
sys.modules["__main__"] = fake            # what Streamlit does for every script run
with plain_main():
    p = mp.get_context("spawn").Process(target=print, args=("child",)); p.start()
p.join(60)
assert sys.modules["__main__"] is fake and p.exitcode == 0
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "child" in done.stdout and not marker.exists()


# ---- small helpers the pages use (findings 8 and 9) ------------------------------------------------

def test_galleries_page_through_everything():
    from fmnist.explore import page_of

    items = list(range(108))
    assert page_of(items, 1, 48) == (items[:48], 1, 3)
    assert page_of(items, 3, 48) == (items[96:], 3, 3)
    assert page_of(items, 9, 48)[1] == 3 and page_of([], 1, 48) == ([], 1, 1)


def test_preprocessing_thumbnails_are_equal_and_decisions_labelled():
    from fmnist.explore import decision_rows, fit_square

    tall, wide = np.zeros((300, 100), np.uint8), np.full((40, 200, 3), 255, np.uint8)
    assert fit_square(tall).shape == (112, 112) and fit_square(wide).shape == (112, 112, 3)
    assert fit_square(wide)[56, 0].tolist() == [255, 255, 255] and fit_square(wide)[0, 0].tolist() == [128] * 3
    rows = decision_rows({"plain_background": True, "background_colour": [255, 250, 240], "border_share": 0.91234})
    assert rows == [{"decision": "Plain background", "value": "yes"},
                    {"decision": "Background colour", "value": "255, 250, 240"},
                    {"decision": "Border share", "value": "0.912"}]


def test_chart_legends_stay_clear_of_the_toolbar():
    from fmnist import charts

    fig = charts.class_count_figure({"train": [1] * 10, "validation (6,000)": [1] * 10})
    assert fig.layout.legend.xanchor == "left" and fig.layout.legend.x == 0  # the toolbar is top right


# ---- AppTest: the Train, Compare and Results pages (findings 3, 4, 6, 8) ----------------------------

def test_train_texts_come_from_the_presets(app):
    from fmnist.training import PRESETS

    goto(app, "train")
    app.radio(key="train_preset").set_value("fast").run()
    out = texts(app)
    assert f"{PRESETS['fast']['epochs']} epochs, good accuracy in minutes" in out
    epochs = PRESETS["fast"]["epochs"]
    assert f"climbs over the first {0.25 * epochs:g} epochs (automatic for one-cycle" in out
    app.number_input(key="train_fast_epochs").set_value(7).run()
    assert "labelled **fast (custom: epochs 7)**" in texts(app)


def test_train_form_mirrors_the_job_after_a_page_switch_and_its_run_becomes_current(app, needs_data):
    goto(app, "train")
    app.radio(key="train_preset").set_value("custom").run()
    app.text_input(key="train_custom_widths_modern").set_value("4,8,8").run()
    app.number_input(key="train_custom_epochs").set_value(2).run()
    app.number_input(key="train_custom_limit").set_value(1000).run()
    app.button(key="train_start").click().run()
    assert not app.exception, app.exception
    job_id = app.session_state["job_id"]
    assert app.query_params["job"] == [job_id] or app.query_params["job"] == job_id
    goto(app, "data")  # widget state of the Train page is gone after this
    goto(app, "train")
    from fmnist.jobs import get_manager as job_manager

    job = job_manager().get(job_id)
    if job.snapshot()["active"]:
        assert app.radio(key="train_preset").value == "custom"
        assert app.number_input(key="train_custom_epochs").value == 2
        assert app.number_input(key="train_custom_epochs").disabled
        assert app.button(key="train_stop").disabled is False
    final = job_manager().wait(job_id, 300)
    assert final["status"] == "completed", final["message"]
    app.run()
    assert app.session_state["current_run"] == Path(final["run_dir"]).name
    assert app.radio(key="train_preset").value == "custom"  # still the job's settings


def test_compare_has_configuration_and_training_set_columns(app):
    goto(app, "compare")
    table = app.dataframe[0].value
    assert {"configuration", "training set"} <= set(table.columns)
    row = table[table["run"] == "default"].iloc[0]
    assert row["configuration"] == "shipped default" and row["training set"] == 60_000
    # percentages as numbers with two decimals, like every page
    assert row["test accuracy"] == round(100 * load_metrics(DEFAULT_MODEL_DIR)["test_accuracy"], 2)


def test_results_gallery_pages_beyond_the_first(app, needs_data):
    goto(app, "results")
    app.slider(key="res_mis_limit").set_value(32).run()
    pager = app.number_input(key="mis_page")
    assert pager.max > 1
    pager.set_value(2).run()
    assert "(images 33-64, page 2 of" in texts(app)


def test_ensure_loaded_keeps_loading_out_of_latency():
    """The first call of a backend is made (and timed) as loading, once per server."""
    from pages._resources import ensure_loaded

    class Slow:
        name, calls = "keras", 0

        def predict_proba(self, x):
            Slow.calls += 1
            if Slow.calls == 1:
                time.sleep(0.3)  # a backend's first call loads its model
            return np.full((len(x), 10), 0.1)

    model = Slow()
    ensure_loaded(model)
    ensure_loaded(model)
    assert Slow.calls == 1
    t0 = time.perf_counter()
    model.predict_proba(np.zeros((1, 28, 28)))
    assert time.perf_counter() - t0 < 0.3
