"""Browser tests: a real `streamlit run` server driven by Playwright in Debian's Chromium.

One server is shared by the whole module (FMNIST_RUNS_DIR points at a temporary folder). The
tests need the real Fashion-MNIST files (FMNIST_DATA_DIR), Chromium, Playwright and the shipped
model; without one they skip, or fail under CI=true (tests/prereq.py).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tests import prereq
from tests.waits import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
ERRORS = "[data-testid='stException'], [data-testid='stAlertContentError']"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")

CHROMIUM = prereq.require_chromium()
DATA_DIR = str(prereq.require_data())
sync_api = prereq.require_module("playwright.sync_api", "Playwright (pip install -r requirements.txt)")
SHIPPED = prereq.require_shipped_model()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def streamlit_server(runs: Path, extra_env: dict | None = None):
    """`streamlit run` on a free port with FMNIST_RUNS_DIR=runs; yields url, runs, t0 (its start), proc.
    Shared by these tests and tests/measure_app.py."""
    port = free_port()
    env = {**os.environ, "FMNIST_RUNS_DIR": str(runs), **(extra_env or {})}
    log = open(runs / f".streamlit-{port}.log", "wb")  # a dot-file: never listed as a run
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port",
                             str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start; see {log.name}")
            time.sleep(0.05)  # fine-grained: cold start is measured from t0
        yield {"url": url, "runs": runs, "t0": t0, "proc": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # FMNIST_JOBS_EXPORT=0: app trainings skip the OpenVINO export (tests/test_export.py covers it)
    extra = {"FMNIST_DATA_DIR": str(Path(DATA_DIR).resolve()), "FMNIST_JOBS_EXPORT": "0"}
    with streamlit_server(tmp_path_factory.mktemp("runs"), extra) as info:
        yield info


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def open_page(browser, url: str, width: int = 1400):
    page = browser.new_page(viewport={"width": width, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(url)
    wait_idle(page)
    return page


def wait_idle(page, timeout: float = 60.0) -> None:
    """Until the app has rendered, its script is no longer running and no element is left stale
    from the previous run (Streamlit marks those data-stale="true" until the rerun replaces them)."""
    page.wait_for_selector("[data-testid='stApp']")
    page.wait_for_selector("h1", timeout=timeout * 1000)
    page.wait_for_function("""() => !document.querySelector('[data-testid="stStatusWidget"]')
                                    && !document.querySelector('[data-stale="true"]')""",
                           timeout=timeout * 1000)


def assert_no_errors(page) -> None:
    errors = page.locator(ERRORS).all_inner_texts()
    assert not errors, errors


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()



def draw_strokes(page, strokes) -> None:
    """Open Classify's Draw tab and draw each ((x0, y0), (x1, y1)) stroke on the canvas, in 10 steps."""
    page.get_by_role("tab", name="Draw").click()
    canvas = page.locator("canvas.upper-canvas").first
    canvas.wait_for()
    box = canvas.bounding_box()
    for (x0, y0), (x1, y1) in strokes:
        page.mouse.move(box["x"] + x0, box["y"] + y0)
        page.mouse.down()
        for k in range(1, 11):
            page.mouse.move(box["x"] + x0 + (x1 - x0) * k / 10, box["y"] + y0 + (y1 - y0) * k / 10)
        page.mouse.up()


def test_cold_start_and_every_page_renders(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server["url"])
    page.wait_for_selector("h1", timeout=30_000)
    cold = time.monotonic() - server["t0"]
    print(f"cold start to first rendered page: {cold:.1f}s")
    assert cold < 20  # <= 5 s on an idle machine; loose here for a loaded CI machine
    for path in ("", "data", "train", "results", "classify", "compare"):
        page.goto(f"{server['url']}/{path}")
        wait_idle(page)
        assert_no_errors(page)
        assert page.locator("h1").first.inner_text()
    page.close()


def test_upload_names_are_shown_literally_and_never_used_as_paths(server, browser):
    """Hostile upload names (path traversal, markdown, a script link) are only ever displayed, as
    text; a text file renamed .png gets a clear message; nothing is written anywhere."""
    page = open_page(browser, f"{server['url']}/classify")
    before = {p for p in server["runs"].rglob("*")} | {p for p in Path(ROOT).iterdir()}
    evil = "../../../../tmp/fmnist-owned **bold** [link](javascript:alert(1)).png"
    targets = [Path("/tmp/fmnist-owned **bold** [link](javascript:alert(1)).png"), Path("/tmp/fmnist-owned")]
    for target in targets:  # where a traversal through the name would land
        target.unlink(missing_ok=True)
    image = np.zeros((28, 28), np.uint8)
    image[4:24, 8:20] = 220  # a light trouser-like block on black, already dataset-like
    page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(files=[
        {"name": evil, "mimeType": "image/png", "buffer": png_bytes(255 - image)},
        {"name": "notes.txt.png", "mimeType": "image/png", "buffer": b"just some text, renamed"},
    ])
    page.get_by_text("Model input (28x28)").wait_for(timeout=60_000)
    wait_idle(page)
    main = page.locator("[data-testid='stMain']")
    assert evil in main.inner_text()  # shown literally: no bold, no link
    assert main.locator("a[href^='javascript']").count() == 0
    assert main.locator("[data-testid='stException']").count() == 0
    message = main.locator("[data-testid='stAlertContentError']").inner_text()
    assert message.startswith("notes.txt.png:") and "PNG, JPEG" in message
    assert not any(target.exists() for target in targets)
    after = {p for p in server["runs"].rglob("*")} | {p for p in Path(ROOT).iterdir()}
    assert after - before == set()
    page.close()


def test_compare_measures_the_backends_side_by_side(server, browser):
    """Compare -> Measure: the backends of the current run timed in a separate process, with
    progress, as one table row per backend."""
    page = open_page(browser, f"{server['url']}/compare")
    slider = page.locator(".st-key-cmp_bench_n input[type=range]")
    slider.press("Home")  # the slider's first choice, 500 images: the test is about the page, not the figures
    wait_until(lambda: slider.get_attribute("aria-valuetext") == "500", 30, "the 500-image choice")
    wait_idle(page)
    page.locator(".st-key-cmp_measure button").click()
    page.get_by_text("Measured on 500 test images").wait_for(timeout=240_000)
    wait_idle(page)
    assert_no_errors(page)
    # the grid is drawn on a canvas; its accessible table holds the cells, filled in after the
    # frame appears (reading it at once gave an empty string)
    def cells() -> str:
        return page.evaluate("() => Array.from(document.querySelectorAll('[data-testid=stDataFrame]')).pop()"
                             ".querySelector('table')?.textContent || ''")

    backends = ("Keras", "OpenVINO FP32", "OpenVINO INT8")
    wait_until(lambda: all(b in cells() for b in backends), 30, f"a row for each of {backends}")
    page.close()


VISIBLE_CAPTIONS = """() => Array.from(document.querySelectorAll('[data-testid="stImageCaption"]'))
    .filter(el => el.offsetParent !== null).map(el => el.innerText.trim())"""


def test_clicking_an_off_diagonal_cell_shows_exactly_those_test_images(server, browser):
    """Results with the shipped model: a click on the cell in row Shirt, column T-shirt/top (the
    figure's orientation: rows true, columns predicted) shows the test items whose label is Shirt
    and whose stored prediction is T-shirt/top, most confident first, and no others."""
    from fmnist.data import load_fashion_mnist

    y = load_fashion_mnist(DATA_DIR).y_test
    probs = np.load(SHIPPED / "test_probs.npy")
    true, predicted = CLASSES.index("Shirt"), CLASSES.index("T-shirt/top")
    cell = np.flatnonzero((y == true) & (probs.argmax(1) == predicted))
    expected = cell[np.argsort(-probs[cell, predicted], kind="stable")].tolist()
    page = open_page(browser, f"{server['url']}/results")
    page.get_by_role("tab", name="Confusion matrix").click()
    chart = page.locator("[class*='st-key-res_confusion_'] .js-plotly-plot")
    chart.wait_for()
    box = chart.locator(".nsewdrag").first.bounding_box()
    page.mouse.click(box["x"] + box["width"] * (predicted + 0.5) / 10, box["y"] + box["height"] * (true + 0.5) / 10)
    page.get_by_text(f"True Shirt predicted as T-shirt/top: {len(expected):,} images").wait_for(timeout=30_000)
    wait_idle(page)
    shown = [int(re.match(r"#(\d+) Shirt → T-shirt/top", c).group(1)) for c in page.evaluate(VISIBLE_CAPTIONS)]
    assert shown == expected[:48]
    assert page.get_by_text(f"Showing {min(48, len(expected))} of {len(expected)}").count() == 1
    assert_no_errors(page)
    page.close()


def test_a_real_size_photo_is_classified_and_an_oversized_file_is_refused(server, browser):
    """A 12-megapixel JPEG phone photo of a trouser goes through the app to the pipeline's answer;
    a file over the server's 10 MB upload limit is refused by the uploader with its message."""
    from PIL import Image

    from fmnist.backends import get_backend
    from fmnist.data import load_fashion_mnist
    from fmnist.preprocess import prepare_photo_bytes

    item = known_item(load_fashion_mnist(DATA_DIR), "Trouser")
    rng = np.random.default_rng(4)
    canvas = np.full((3000, 4000, 3), 235, np.float32) + rng.normal(0, 6, (3000, 4000, 1))  # a grey-white sheet
    big = np.asarray(Image.fromarray(255 - item).resize((2000, 2000), Image.BICUBIC), np.float32)
    canvas[500:2500, 1000:3000] = np.minimum(canvas[500:2500, 1000:3000], big[..., None])
    buf = io.BytesIO()
    Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=92)
    photo = buf.getvalue()
    assert 1_000_000 < len(photo) < 10_000_000
    answer = get_backend(SHIPPED, "openvino-fp32").predict_proba(prepare_photo_bytes(photo).input[None])[0]
    assert CLASSES[int(answer.argmax())] == "Trouser"

    page = open_page(browser, f"{server['url']}/classify")
    uploader = page.locator("[data-testid='stFileUploaderDropzoneInput']")
    uploader.set_input_files(files=[{"name": "phone.jpg", "mimeType": "image/jpeg", "buffer": photo}])
    page.get_by_text("Model input (28x28)").wait_for(timeout=120_000)
    wait_idle(page)
    assert page.locator("[data-testid='stMain'] h3").first.inner_text() == "Trouser"
    assert_no_errors(page)
    uploader.set_input_files(files=[{"name": "huge.jpg", "mimeType": "image/jpeg",
                                     "buffer": photo[:2] + bytes(11 * 1024 * 1024)}])
    page.get_by_text(re.compile(r"File must be [\d.]+ ?MB or smaller")).wait_for(timeout=30_000)
    wait_idle(page)
    assert page.get_by_text("huge.jpg", exact=False).count() >= 1  # listed, with the refusal
    assert page.get_by_text("Model input (28x28)").count() == 1  # only the photo was classified
    page.close()


def _set_number(page, key: str, value) -> None:
    box = page.locator(f".st-key-{key} input")
    box.fill(str(value))
    box.press("Enter")
    wait_idle(page)


def start_training(page, epochs: int, limit: int, batch_size: int = 128, widths: str | None = None) -> None:
    page.get_by_text("custom", exact=True).click()
    wait_idle(page)
    if widths:
        box = page.locator(".st-key-train_custom_widths_modern input")
        box.fill(widths)
        box.press("Enter")
        wait_idle(page)
    _set_number(page, "train_custom_epochs", epochs)
    _set_number(page, "train_custom_limit", limit)
    _set_number(page, "train_custom_batch", batch_size)
    page.get_by_role("button", name="Start training").click()


def _batches_drawn(page) -> int:
    """Points in the live per-batch chart (plotly's rendered trace)."""
    return page.evaluate("""() => {
        const el = document.querySelector('.st-key-live_batches .js-plotly-plot');
        if (!el || !el.data || !el.data.length) return 0;
        return el.data[0].x.length; }""")


def test_training_live_chart_then_results_and_confusion_gallery(server, browser):
    page = open_page(browser, f"{server['url']}/train")
    start_training(page, epochs=1, limit=4000, batch_size=16)  # 225 batches: several 2 s updates
    steps, drawn, deadline = set(), 0, time.monotonic() + 180
    while time.monotonic() < deadline:  # progress and the live chart update while it trains
        for text in page.locator("[data-testid='stProgress']").all_inner_texts():
            match = re.search(r"step (\d+)/(\d+)", text)
            if match:
                steps.add(int(match.group(1)))
                total = int(match.group(2))
        drawn = max(drawn, _batches_drawn(page))
        if steps and drawn and drawn == total:
            break
        time.sleep(0.3)
    assert len(steps) >= 2, steps
    assert drawn == total  # every batch of the epoch is on the live chart
    page.locator("[data-testid='stAlertContentSuccess']").get_by_text(
        re.compile(r"Finished: test accuracy")).wait_for(timeout=240_000)
    text = page.locator("[data-testid='stAlertContentSuccess']").inner_text()
    name = re.search(r"Saved as (\S+?);", text).group(1)
    assert_no_errors(page)

    # the finished run is this session's current run: Results (same session, through the page
    # link) shows it; click a confusion-matrix cell
    page.get_by_role("link", name="Results").click()
    wait_idle(page)
    page.locator("[data-testid='stMain'] [data-testid='stCaptionContainer']").filter(
        has_text=name).first.wait_for(timeout=30_000)  # Results now shows the new run
    page.get_by_role("tab", name="Confusion matrix").click()
    chart = page.locator(".st-key-res_confusion_" + name.replace(".", "-") + " .js-plotly-plot")
    chart.wait_for()
    # click the diagonal cell of the first class: the largest one, so it always has images
    box = chart.locator(".nsewdrag").first.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.05, box["y"] + box["height"] * 0.05)
    page.get_by_text(re.compile(r"True T-shirt/top predicted as T-shirt/top: [\d,]+ images")).wait_for(timeout=30_000)
    wait_idle(page)
    assert page.get_by_text(re.compile(r"Showing \d+ of \d+")).count() >= 1
    assert_no_errors(page)
    page.close()


# Canvas strokes (280x280 canvas, default 18 px pen): a waistband and two legs, each two strokes
# wide. Offline, fmnist.preprocess.prepare_drawing of these strokes gives Trouser (0.89) with the
# shipped model.
TROUSER_STROKES = [((105, 42), (175, 42)), ((105, 54), (175, 54)), ((114, 42), (114, 245)),
                   ((124, 42), (124, 245)), ((156, 42), (156, 245)), ((166, 42), (166, 245))]


def photo_of(item: np.ndarray) -> bytes:
    """A test item as an upload: dark on white like a product photo, PNG."""
    return png_bytes(255 - item)


def known_item(ds, class_name: str, skip: int = 0) -> np.ndarray:
    """A test item of `class_name` that the shipped model (OpenVINO FP32, the app's default backend)
    answers correctly after the app's photo pipeline: an upload whose right answer is known."""
    from fmnist.backends import get_backend
    from fmnist.preprocess import prepare_photo_bytes

    label = CLASSES.index(class_name)
    backend = get_backend(SHIPPED, "openvino-fp32")
    found = 0
    for index in np.flatnonzero(ds.y_test == label)[:50]:
        prepared = prepare_photo_bytes(photo_of(ds.x_test[index]))
        if int(backend.predict_proba(prepared.input[None])[0].argmax()) == label:
            if found == skip:
                return ds.x_test[index]
            found += 1
    raise AssertionError(f"no test item of {class_name} that the shipped model answers correctly")


def classify_together(pages, images, tag: str, nth: int) -> tuple[list[str], list[float]]:
    """Both sessions upload at the same moment (session i: `session{i}{tag}.png`, a dark item on
    white like a photo); returns each session's predicted class and seconds to its answer."""
    t0 = time.monotonic()
    for i, (page, image) in enumerate(zip(pages, images)):
        page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(
            files=[{"name": f"session{i}{tag}.png", "mimeType": "image/png", "buffer": photo_of(image)}])
    done: dict[int, float] = {}
    while len(done) < len(pages):
        for i, page in enumerate(pages):
            if i not in done and page.get_by_text("Model input (28x28)").count() >= nth:
                done[i] = time.monotonic() - t0
        assert time.monotonic() - t0 < 60, f"no answer after 60 s: {done}"
        time.sleep(0.02)
    labels = []
    for page in pages:
        wait_idle(page)
        labels.append(page.locator("[data-testid='stMain'] h3").nth(nth - 1).inner_text())
    return labels, [done[i] for i in range(len(pages))]


def test_upload_draw_and_sessions_during_training_with_stop(server, browser):
    """One session trains (through widget clicks and a page switch) while two others classify:
    no errors, no cross-talk (answer times are printed); then Stop stops the training."""
    from fmnist.data import load_fashion_mnist

    ds = load_fashion_mnist(DATA_DIR)
    trainer = open_page(browser, f"{server['url']}/train")
    start_training(trainer, epochs=200, limit=3000, widths="8,16,32")  # small: Stop saves it quickly
    trainer.wait_for_function("() => document.querySelector('.st-key-live_batches .js-plotly-plot')",
                              timeout=120_000)

    # two other sessions classify different images while the training runs
    pages = []
    for idx in (0, 1):
        p = open_page(browser, f"{server['url']}/classify")
        pages.append(p)
    # each session uploads items of its own classes; each must see its own item's class
    rounds = [("Trouser", "Bag"), ("Sneaker", "Dress"), ("Ankle boot", "Pullover")]
    items = [[known_item(ds, cls) for cls in pair] for pair in rounds]
    first, warm = classify_together(pages, items[0], "a", 1)  # loads the model
    again, seconds = classify_together(pages, items[1], "b", 2)
    third, more = classify_together(pages, items[2], "c", 3)
    seconds += more
    assert [first, again, third] == [list(pair) for pair in rounds]  # no session got the other's answer
    for i, p in enumerate(pages):
        mine = [f"session{i}a.png", f"session{i}b.png", f"session{i}c.png"]
        assert sorted(p.locator("[data-testid='stFileChipName']").all_inner_texts()) == mine
        assert [t for t in p.locator("[data-testid='stMain'] strong").all_inner_texts() if ".png" in t] == mine
        for theirs in (f"session{1 - i}a.png", f"session{1 - i}b.png", f"session{1 - i}c.png"):
            assert p.get_by_text(theirs).count() == 0  # no cross-talk between sessions
        assert p.get_by_text("Model input (28x28)").count() == 3
        assert_no_errors(p)
    print(f"classification during training: first (model load) {[round(s, 2) for s in warm]} s, "
          f"then {[round(s, 2) for s in seconds]} s (median {statistics.median(seconds):.2f} s)")
    assert max(warm) < 30.0  # the first upload of each page also loads plotly.js in the browser
    # The 2 s target is a speed figure: it is measured and printed (above, and by
    # `python tests/measure_app.py`), not asserted, since CI machines and loads differ. What is
    # asserted is that every answer arrives, for the right session, while the training runs.
    assert max(seconds) < 30.0

    # a trouser silhouette drawn on the canvas (waistband, two legs) is answered Trouser
    drawer = pages[0]
    draw_strokes(drawer, TROUSER_STROKES)
    drawer.locator(".st-key-bars_draw").first.wait_for(timeout=30_000)  # a rerun may keep a stale copy
    # each stroke sends the canvas; the answer to the whole drawing comes with the last one
    drawer.wait_for_function("""() => { const h = document.querySelectorAll('[data-testid="stMain"] h3');
                                        return h.length && h[h.length - 1].innerText === 'Trouser'; }""",
                             timeout=60_000)
    assert_no_errors(drawer)

    # the form is locked while the job runs; the trainer leaves the page and the training keeps going
    before = _batches_drawn(trainer)
    assert trainer.locator(".st-key-train_preset input").first.is_disabled()
    trainer.get_by_role("link", name="Data").click()
    wait_idle(trainer)
    trainer.get_by_role("link", name="Train").click()
    trainer.wait_for_function(f"() => {{ const el = document.querySelector('.st-key-live_batches .js-plotly-plot');"
                              f" return el && el.data[0].x.length > {before}; }}", timeout=60_000)
    assert trainer.get_by_role("button", name="Stop").is_enabled()

    # Stop stops: within a batch, then the best weights are saved as a stopped run
    t0 = time.monotonic()
    trainer.get_by_role("button", name="Stop").click()
    trainer.locator("[data-testid='stMain']").get_by_text(re.compile(r"^Stopped:")).first.wait_for(timeout=180_000)
    print(f"stop to saved run: {time.monotonic() - t0:.1f}s")
    assert_no_errors(trainer)
    for p in (trainer, *pages):
        p.close()
