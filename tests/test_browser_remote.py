"""Browser: the app classifies through a model server (the `remote` backend over KServe v2), and says
clearly what to do when that server is stopped; the Sweep page runs a tiny Optuna sweep whose best
run becomes the current model.

A real `python -m fmnist serve` of the shipped model on a free loopback port (fmnist.serving's
ServerProcess), and a real `streamlit run` (tests/test_browser.py's launcher) with
FMNIST_SERVING_URL pointing at it, in Debian's Chromium. Set FMNIST_SCREENSHOTS=folder to save
classify-remote.png and sweep.png (docs/app.md).
"""

from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path

import pytest

from tests import prereq
from tests.test_browser import (ARGS, CHROMIUM, CLASSES, DATA_DIR, SHIPPED, assert_no_errors, known_item,
                                open_page, photo_of, streamlit_server, sync_api, wait_idle)
from tests.waits import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SHOTS = os.environ.get("FMNIST_SCREENSHOTS")
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


@pytest.fixture(scope="module")
def browser():
    prereq.require(CHROMIUM is not None, "Chromium")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def shot(page, name: str, max_height: int = 2600) -> None:
    """The whole main area (the viewport grown to its height), in 256 colours."""
    if not SHOTS:
        return
    from PIL import Image

    Path(SHOTS).mkdir(parents=True, exist_ok=True)
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": 1400, "height": min(max_height, max(1000, int(height)))})
    wait_idle(page)
    time.sleep(1.5)  # plotly charts finish drawing
    image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        Path(SHOTS) / name, optimize=True)
    page.set_viewport_size({"width": 1400, "height": 1000})


def pick(page, key: str, option: str | re.Pattern) -> None:
    """Choose an option of the selectbox with widget key `key` (its list opens on a click)."""
    page.locator(f".st-key-{key} input[role='combobox']").click()
    page.get_by_role("option", name=option).click()
    wait_idle(page)


def upload(page, name: str, data: bytes) -> None:
    page.locator(UPLOADER).set_input_files(files=[{"name": name, "mimeType": "image/png", "buffer": data}])


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
    shot(page, "sweep.png", max_height=3000)
    page.close()
