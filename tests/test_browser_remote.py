"""Browser: the app classifies through a model server (the `remote` backend over KServe v2), and says
clearly what to do when that server is stopped; the Sweep page runs a tiny Optuna sweep whose best
run becomes the current model.

A real `python -m fmnist serve` of the shipped model on a free loopback port (fmnist.serving's
ServerProcess), and a real `streamlit run` (tests/test_browser.py's launcher) with
FMNIST_SERVING_URL pointing at it, in Debian's Chromium. Set FMNIST_SCREENSHOTS=folder to save
classify-remote.png and sweep.png (docs/app.md).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.test_browser import (CLASSES, DATA_DIR, SHIPPED, assert_no_errors, browser, known_item,  # noqa: F401
                                open_page, photo_of, streamlit_server, wait_idle)
from tests.test_browser_explain import SHOTS, shot
from tests.waits import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]
UPLOADER = "[data-testid='stFileUploaderDropzoneInput']"


@pytest.fixture(scope="module")
def model_server():
    """`python -m fmnist serve` of the shipped model on a free loopback port."""
    from fmnist.serving import ServerProcess

    server = ServerProcess(SHIPPED, startup_timeout=90)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_server):
    extra = {"FMNIST_DATA_DIR": str(Path(DATA_DIR).resolve()), "FMNIST_JOBS_EXPORT": "0",
             "FMNIST_SERVING_URL": model_server.url}
    with streamlit_server(tmp_path_factory.mktemp("runs"), extra) as info:
        yield info


def pick(page, key: str, option: str | re.Pattern) -> None:
    """Choose an option of the selectbox with widget key `key` (its list opens on a click)."""
    page.locator(f".st-key-{key} input[role='combobox']").click()
    page.get_by_role("option", name=option).click()
    wait_idle(page)


def upload(page, name: str, data: bytes) -> None:
    page.locator(UPLOADER).set_input_files(files=[{"name": name, "mimeType": "image/png", "buffer": data}])


@pytest.mark.timeout(1500 if SHOTS else 300)  # with screenshots it also runs a default sweep (minutes)
def test_classify_through_the_model_server_then_a_clear_message_when_it_stops(server, browser, model_server):
    from fmnist.backends import get_backend
    from fmnist.data import load_fashion_mnist
    from fmnist.preprocess import prepare_photo_bytes

    dataset = load_fashion_mnist(DATA_DIR)
    photo = photo_of(known_item(dataset, "Trouser"))
    local = get_backend(SHIPPED, "openvino-fp32").predict_proba(prepare_photo_bytes(photo).input[None])[0]
    page = open_page(browser, f"{server['url']}/classify")
    label = f"Remote (KServe v2: {model_server.url})"
    pick(page, "backend", label)
    wait_until(lambda: "backend=remote" in page.url, 30, "the choice in the URL")  # a reload keeps it
    wait_idle(page)
    main = page.locator("[data-testid='stMain']")
    main.get_by_text(label).first.wait_for(timeout=60_000)  # the caption names the server

    t0 = time.monotonic()
    upload(page, "trouser.png", photo)
    page.get_by_text("Model input (28x28)").wait_for(timeout=60_000)
    wait_idle(page)
    print(f"upload to remote answer: {time.monotonic() - t0:.1f} s")
    assert main.locator("h3").filter(has_text=CLASSES[int(local.argmax())]).count() == 1
    caption = main.get_by_text(re.compile(r"calibrated probability · remote \(fp32\) on http://127\.0\.0\.1"))
    assert caption.count() == 1, main.inner_text()[:2000]
    assert_no_errors(page)
    assert main.locator("[data-testid='stAlertContentWarning']").count() == 0  # no fallback to a local backend
    shot(page, "classify-remote.png")

    model_server.stop()  # the server goes away under the running app
    upload(page, "sneaker.png", photo_of(known_item(dataset, "Sneaker")))
    error = main.locator("[data-testid='stAlertContentError']")
    error.first.wait_for(timeout=60_000)
    wait_idle(page)
    text = error.first.inner_text()
    print(f"with the server stopped: {text}")
    assert model_server.url in text and "python -m fmnist serve" in text and "local backend" in text
    assert main.locator("[data-testid='stException']").count() == 0
    assert "Traceback" not in main.inner_text()
    shot(page, "classify-remote-stopped.png")
    page.close()
    if SHOTS:  # the Sweep page's picture: a sweep with the page's defaults (minutes; AppTest covers its logic)
        sweep_screenshot(browser, server)


def sweep_screenshot(browser, server) -> None:
    """Start a sweep with the Sweep page's defaults, wait for it, use its best run, save sweep.png."""
    page = open_page(browser, f"{server['url']}/sweep")
    page.get_by_role("button", name="Start sweep").click()
    t0 = time.monotonic()
    done = page.locator("[data-testid='stAlertContentSuccess']").filter(has_text="Finished:")

    def ended() -> bool:
        assert_no_errors(page)  # "Cannot start: ..." or "Sweep failed: ...": at once, not after the deadline
        return done.count() > 0

    progress = page.locator("[data-testid='stProgress']").filter(has_text=re.compile(r"[2-5]/6 trials done"))
    wait_until(lambda: ended() or progress.count(), 900, "two trials of the default sweep", interval=1.0)
    if progress.count():
        assert "ETA" in progress.inner_text()
        page.mouse.move(0, 0)
        shot(page, "sweep-running.png", max_height=3000)
    wait_until(ended, 900, "the default sweep to finish", interval=1.0)
    print(f"default sweep: {time.monotonic() - t0:.0f} s, {done.inner_text()}")
    wait_idle(page)
    page.get_by_role("button", name="Use the best run").click()
    note = page.get_by_text(re.compile("is now the current run"))
    note.wait_for(timeout=60_000)
    wait_idle(page)
    best = re.search(r"(\S+) is now the current run", note.inner_text()).group(1)
    assert best in page.locator(".st-key-current_run input").input_value()
    assert page.locator(".st-key-sweep_fig_history .js-plotly-plot").count() == 1
    assert_no_errors(page)
    page.mouse.move(0, 0)  # no tooltip over the picture
    shot(page, "sweep.png", max_height=3000)
    page.close()
