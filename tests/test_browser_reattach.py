"""Browser: a training survives a page switch and a reload, and Stop shows what was saved.

A real `streamlit run` (tests/test_browser.py's launcher) with FMNIST_ORPHAN_GRACE_S=4: a job
whose page is gone and not found again is stopped within seconds, so a reload that failed to
reattach would show here as a `stopped` run. Set FMNIST_SCREENSHOTS=folder to save the pictures
used in docs/app.md.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from tests import prereq
from tests.test_browser import (ARGS, CHROMIUM, DATA_DIR, assert_no_errors, open_page, streamlit_server,
                                sync_api, wait_idle)
from tests.waits import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SHOTS = os.environ.get("FMNIST_SCREENSHOTS")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    extra = {"FMNIST_DATA_DIR": str(Path(DATA_DIR).resolve()), "FMNIST_JOBS_EXPORT": "0",
             "FMNIST_ORPHAN_GRACE_S": "4"}
    with streamlit_server(tmp_path_factory.mktemp("runs"), extra) as info:
        yield info


@pytest.fixture(scope="module")
def browser():
    prereq.require(CHROMIUM is not None, "Chromium")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def shot(page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.set_viewport_size({"width": 1400, "height": 1300})
        time.sleep(1.5)
        page.screenshot(path=str(Path(SHOTS) / name))
        page.set_viewport_size({"width": 1400, "height": 1000})


def set_number(page, key: str, value) -> None:
    box = page.locator(f".st-key-{key} input")
    box.fill(str(value))
    box.press("Enter")
    wait_idle(page)


def start_custom(page, epochs: int, limit: int, batch: int, widths: str) -> None:
    page.get_by_text("custom", exact=True).click()
    wait_idle(page)
    box = page.locator(".st-key-train_custom_widths_modern input")
    box.fill(widths)
    box.press("Enter")
    wait_idle(page)
    set_number(page, "train_custom_epochs", epochs)
    set_number(page, "train_custom_limit", limit)
    set_number(page, "train_custom_batch", batch)
    page.get_by_role("button", name="Start training").click()


def progress_step(page) -> int:
    """The step in the progress bar's text (0 before the first batch)."""
    for text in page.locator("[data-testid='stProgress']").all_inner_texts():
        match = re.search(r"step ([\d,]+)/", text)
        if match:
            return int(match.group(1).replace(",", ""))
    return 0


def current_run_text(page) -> str:
    """The sidebar's Run selectbox as shown (the chosen run's label)."""
    return page.locator(".st-key-current_run input").input_value()


def run_json(runs: Path, name: str, file: str = "status.json") -> dict:
    return json.loads((runs / name / file).read_text())


def stop_and_saved_name(page) -> str:
    """Press Stop and wait for the "Stopped:" notice; the name of the run it saved."""
    t0 = time.monotonic()
    page.get_by_role("button", name="Stop").click()
    alert = page.locator("[data-testid='stAlertContentWarning']").filter(has_text="Stopped:")
    alert.wait_for(timeout=180_000)
    print(f"Stop to 'Stopped' on the page: {time.monotonic() - t0:.1f} s")
    wait_idle(page)
    return re.search(r"Saved as (\S+?);", alert.inner_text()).group(1)


def test_reload_after_page_switch_keeps_the_training(server, browser):
    page = open_page(browser, f"{server['url']}/train")
    t0 = time.monotonic()
    # far longer than the test: it is stopped at the end. A training that could finish (12 epochs took
    # 10-90 s depending on the machine) once ended before the reloaded page showed its progress.
    start_custom(page, epochs=200, limit=3000, batch=32, widths="8,16,32")
    first_text = wait_until(lambda: page.locator("[data-testid='stProgress']").all_inner_texts(), 60,
                            "the progress bar after Start")
    assert "since Start" in first_text[0] or "step" in first_text[0], first_text  # says what happens
    wait_until(lambda: progress_step(page) > 0, 180, "the first batch")
    print(f"Start to first progress: {time.monotonic() - t0:.1f} s")
    assert "job=" in page.url

    # another page, back through the sidebar, then a reload: the job id stays in the URL throughout
    page.get_by_role("link", name="Data").click()
    wait_idle(page)
    assert "job=" in page.url, page.url
    page.get_by_role("link", name="Train").click()
    wait_idle(page)
    assert "job=" in page.url, page.url
    before = progress_step(page)
    page.reload()
    reloaded = time.monotonic()
    wait_idle(page)
    wait_until(lambda: progress_step(page) > before, 60, "progress after the reload")
    assert page.get_by_role("button", name="Stop").is_enabled()
    page.locator("[data-testid='stMain'] h1").scroll_into_view_if_needed()
    shot(page, "train-after-reload.png")
    # the form shows the running job's own settings, locked
    assert page.locator(".st-key-train_preset input[type=radio]:checked").evaluate(
        "el => el.closest('label').innerText.trim()") == "custom"
    assert page.locator(".st-key-train_custom_epochs input").input_value() == "200"
    page.get_by_text("Settings of the running training").click()  # collapsed while it runs
    assert page.locator(".st-key-train_custom_epochs input").is_disabled()
    assert page.get_by_text(re.compile("job\\(s\\) from other sessions")).count() == 0
    # outlive the orphan grace (4 s) since the reload: the old session is gone for good, and the
    # job must still be running here, then be stopped from this page below
    time.sleep(max(0.0, reloaded + 6 - time.monotonic()))
    step = progress_step(page)
    assert step > 0, "the training ended before the orphan grace had passed: make it longer"
    wait_until(lambda: progress_step(page) > step, 60, "progress past the orphan grace")

    # the reloaded page's Stop reaches the job the old session started: its run is saved
    name = stop_and_saved_name(page)
    assert run_json(server["runs"], name)["status"] == "stopped"
    assert_no_errors(page)
    # the new run is the sidebar's current run, on this page and on the next
    assert name in current_run_text(page)
    # the server's terminal stayed quiet through the training (it used to fill with these)
    log = "".join(p.read_text(errors="replace") for p in server["runs"].glob(".streamlit-*.log"))
    for noise in ("missing ScriptRunContext", "Session state does not function", "to view a Streamlit app",
                  "cuInit", "Traceback"):
        assert noise not in log, noise
    page.get_by_role("link", name="Results").click()
    wait_idle(page)
    assert name in current_run_text(page)
    assert page.locator("[data-testid='stMain']").get_by_text(name).count() >= 1
    page.close()


def test_stop_shows_the_saved_epoch_not_the_partial_one(server, browser):
    page = open_page(browser, f"{server['url']}/train")
    start_custom(page, epochs=50, limit=2000, batch=16, widths="8,16,32")
    # past the first full epoch (113 steps of 16 images) and into the second
    wait_until(lambda: progress_step(page) > 130, 240, "a batch of epoch 2")
    name = stop_and_saved_name(page)
    run = server["runs"] / name
    summary = run_json(server["runs"], name)
    test_accuracy = run_json(server["runs"], name, "metrics.json")["test_accuracy"]
    history = json.loads((run / "history.json").read_text())
    full = [e for e in history["epochs"] if not e.get("partial")]
    assert summary["status"] == "stopped" and history["epochs"][-1].get("partial")
    main = page.locator("[data-testid='stMain']")
    metrics = dict(zip(main.locator("[data-testid='stMetricLabel']").all_inner_texts(),
                       main.locator("[data-testid='stMetricValue']").all_inner_texts()))
    assert metrics["Validation accuracy"] == f"{summary['best_val_accuracy']:.2%}", metrics
    assert metrics["Test accuracy"] == f"{test_accuracy:.2%}", metrics
    assert metrics["Epochs saved"].startswith(str(len(full))), metrics
    # the saved curves: one point per full epoch (the interrupted one is not drawn)
    drawn = page.evaluate("() => document.querySelector('.st-key-saved_epoch_acc .js-plotly-plot')"
                          ".data[0].x.length")
    assert drawn == len(full)
    assert main.get_by_text(re.compile(r"Stopped at epoch \d+, step \d+")).count() == 1
    assert_no_errors(page)
    shot(page, "train-stopped.png")
    if SHOTS:
        page.get_by_role("link", name="Compare").click()
        wait_idle(page)
        shot(page, "compare.png")
    page.close()
