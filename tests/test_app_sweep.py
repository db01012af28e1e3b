"""Sweeps in the app (issue 16): the sweep job kind of the training queue (fmnist.jobs) and the Sweep
page under AppTest: a tiny Optuna sweep waits its turn like a training, fills its trials' table and
Optuna's figures, "Use the best run" makes its best run the current model, Stop ends it cleanly, and
bad input is answered with one line. And the sidebar's remote backend: offered only with a serving
URL, and a server that does not answer is named, with the command to start it, while a local backend
answers (tests/test_browser_remote.py drives a real one)."""

from __future__ import annotations

import json

import pytest

from fmnist.data import synthetic_dataset
from fmnist.jobs import SWEEP_TRIALS, sweep_progress
from fmnist.runs import STAGING_PREFIX, list_runs, verify_run
from fmnist.sweep import STOPPED_REASON, best_run, default_storage, study_rows
from fmnist.training import TrainConfig
from tests.test_app import FAKE_DRAWING, ROOT, app, fake_canvas, goto, needs_data, runs_dir, texts  # noqa: F401
from tests.test_jobs import TINY, data, threads  # noqa: F401  (the job queue's fixtures)
from tests.waits import wait_until

pytestmark = pytest.mark.slow  # every test trains


def test_bad_sweep_input_is_refused_before_anything_is_queued(threads, tmp_path):
    from fmnist.sweep import prepare_sweep

    storage = default_storage(tmp_path)
    prepare_sweep(2, study="unit", storage=storage, preset="paper", epochs=1)  # the study records its settings
    for kwargs, message in ((dict(trials=2, epochs=2, study="unit"), "runs preset paper, 1 epochs"),
                            (dict(trials=0), "trials must be"), (dict(trials=SWEEP_TRIALS[1] + 1), "trials must be"),
                            (dict(trials=2, study="no spaces"), "invalid study name"),
                            (dict(trials=2, preset="fastest"), "unknown preset"),
                            (dict(trials=2, limit=50), "limit must be between")):
        with pytest.raises(ValueError, match=message):
            threads.submit_sweep("s", **{"preset": "paper", "epochs": 1, "storage": storage, "runs_root": tmp_path,
                                         **kwargs})
    assert threads.jobs() == []


def test_stop_ends_the_trial_in_flight_and_keeps_nothing_torn(threads, data, tmp_path):
    storage = default_storage(tmp_path)
    threads.set_session_checker(lambda sid: sid == "s")  # session "gone" closed its tab
    sweep = threads.submit_sweep("s", 3, preset="paper", epochs=200, study="stop", storage=storage,
                                 runs_root=tmp_path, dataset=data)
    orphan = threads.submit_sweep("gone", 2, preset="paper", epochs=200, study="stop", storage=storage,
                                  runs_root=tmp_path, dataset=data)
    wait_until(lambda: sweep.snapshot()["last_batch"] or not sweep.snapshot()["active"], 120,
               "the first trial's first batch")
    current = sweep.snapshot()["sweep"]["current"]
    assert current is not None and current["number"] == 0 and current["params"]
    # a queued sweep nobody watches any more is cancelled after the grace (0.3 s here), like a training
    assert threads.wait(orphan.id, 30)["status"] == "cancelled"
    sweep.stop()
    final = threads.wait(sweep.id, 120)
    assert final["status"] == "stopped" and "(stopped)" in final["message"], final["message"]
    rows = study_rows("stop", storage)
    assert [(r["number"], r["state"], r["reason"]) for r in rows] == [(0, "FAIL", STOPPED_REASON)]
    assert final["sweep"]["current"] is None and final["run_dir"] is None
    assert not list(tmp_path.glob(f"{STAGING_PREFIX}*")) and not [r for r in list_runs(tmp_path) if not r.is_default]


def test_the_sweep_page_runs_a_sweep_and_uses_its_best_run(needs_data, app, runs_dir):
    from fmnist.jobs import get_manager

    goto(app, "sweep")
    assert [app.number_input(key=k).value for k in ("sweep_trials", "sweep_epochs", "sweep_limit")] == [6, 2, 3000]
    assert app.selectbox(key="sweep_preset").value == "fast"
    assert "No studies yet" in texts(app)
    app.text_input(key="sweep_study").set_value("not a name").run()
    app.button(key="sweep_start").click().run()
    assert [e.value for e in app.error if "Cannot start" in e.value and "invalid study name" in e.value]
    assert "sweep_job_id" not in app.session_state
    app.text_input(key="sweep_study").set_value("apptest").run()
    app.number_input(key="sweep_trials").set_value(2).run()
    app.selectbox(key="sweep_preset").set_value("paper").run()
    app.number_input(key="sweep_epochs").set_value(1).run()
    app.number_input(key="sweep_limit").set_value(1000).run()
    app.button(key="sweep_start").click().run()
    assert not app.exception, [e.value for e in app.exception]
    manager = get_manager()
    sweep = manager.get(app.session_state["sweep_job_id"])
    assert sweep.kind == "sweep" and app.query_params["sweep"] == sweep.id  # a reload finds it again
    assert app.button(key="sweep_stop").disabled is False and app.button(key="sweep_start").disabled is True
    # a training submitted meanwhile waits for the sweep: one job at a time, one queue
    training = manager.submit(TrainConfig(**TINY), "other", runs_root=runs_dir, dataset=synthetic_dataset(200, 50))
    seen = set()

    def ended():
        snap = sweep.snapshot()
        seen.add(len(snap["sweep"]["finished"]))
        assert not (snap["status"] == "running" and training.snapshot()["status"] == "running")
        return not snap["active"]

    wait_until(ended, 300, "the sweep to end")
    final = sweep.snapshot()
    assert final["status"] == "completed", final["message"]
    assert {0, 2} <= seen and "2 completed, 0 pruned, 0 failed" in final["message"]  # it filled as it ran
    progress = sweep_progress(final)
    assert (progress["done"], progress["total"], progress["fraction"], progress["eta_s"]) == (2, 2, 1.0, None)
    assert manager.wait(training.id, 120)["status"] == "completed"  # its turn came after the sweep
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    assert app.selectbox(key="sweep_study_pick").value == "apptest"
    table = next(d.value for d in app.dataframe if "val. accuracy" in d.value.columns)
    rows = study_rows("apptest", default_storage())
    assert table["trial"].tolist() == [r["number"] for r in rows] == [0, 1]
    assert all(r["state"] == "COMPLETE" and verify_run(r["run"]).usable for r in rows)
    assert [(f["number"], f["value"], f["run_dir"]) for f in final["sweep"]["finished"]] == \
        [(r["number"], r["value"], r["run"]) for r in rows]
    assert table["val. accuracy"].tolist() == pytest.approx([r["value"] * 100 for r in rows])
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in app.get("plotly_chart")]
    assert any("Optimization History" in t for t in titles) and any("Parallel Coordinate" in t for t in titles)
    assert any(m.label == "Best validation accuracy" and m.value == f"{max(r['value'] for r in rows):.2%}"
               for m in app.metric)
    assert "Finished: 2 completed" in texts(app)  # the page and the sidebar
    best = best_run("apptest", default_storage())
    assert app.session_state["current_run"] != best.name
    app.button(key="sweep_use_best").click().run()
    assert not app.exception and app.session_state["current_run"] == best.name
    assert f"**{best.name}** is now the current run" in texts(app)
    assert final["run_dir"] == str(best) and final["sweep"]["best_value"] == max(r["value"] for r in rows)
    goto(app, "home")
    assert best.name in texts(app)  # the current model everywhere, after a page switch too
    # a second tab (or a reload) opened from the URL finds the sweep again and watches it
    from streamlit.testing.v1 import AppTest

    tab = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    tab.query_params["sweep"] = sweep.id
    tab.run()
    goto(tab, "sweep")
    assert tab.session_state["sweep_job_id"] == sweep.id and "Finished: 2 completed" in texts(tab)
    assert tab.selectbox(key="sweep_study_pick").value == "apptest" and tab.dataframe


def test_the_remote_backend_is_offered_with_a_serving_url_and_a_stopped_server_is_named(needs_data, app,
                                                                                         fake_canvas, monkeypatch):
    import socket

    from fmnist.backends import get_backend
    from fmnist.data import CLASS_NAMES
    from fmnist.preprocess import prepare_drawing
    from fmnist.runs import DEFAULT_MODEL_DIR

    assert not [o for o in app.selectbox(key="backend").options if "Remote" in o]  # FMNIST_SERVING_URL unset
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("FMNIST_SERVING_URL", url)
    app.run()
    backend = app.selectbox(key="backend")
    assert backend.options[-1] == f"Remote (KServe v2: {url})"  # the options as shown
    backend.set_value("remote").run()
    goto(app, "classify")
    (warning,) = [w.value for w in app.warning]
    assert url in warning and f"python -m fmnist serve --port {url.rsplit(':', 1)[1]}" in warning
    assert warning.endswith("Using OpenVINO FP32 instead.")
    expected = get_backend(DEFAULT_MODEL_DIR, "openvino-fp32").predict_proba(prepare_drawing(FAKE_DRAWING).input[None])
    assert f"### {CLASS_NAMES[int(expected.argmax())]}" in [m.value for m in app.markdown]
    assert any("openvino-fp32 (fp32)" in c.value for c in app.caption)  # the local answer, named as such
