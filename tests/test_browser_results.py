"""Browser: Results' Calibration tab (the ECE figures before and after temperature scaling) and Map tab
(a click on a point of the WebGL map shows that test image with its label and the model's answer),
with the shipped model. A real `streamlit run` (tests/test_browser.py's server and browser fixtures)
in Debian's Chromium.

Set FMNIST_SCREENSHOTS=folder to save the pictures used in docs/explain.md (results-calibration.png,
results-map.png).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_browser import (CLASSES, DATA_DIR, SHIPPED, assert_no_errors, browser, open_page,  # noqa: F401
                                server, wait_idle)
from tests.waits import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SHOTS = os.environ.get("FMNIST_SCREENSHOTS")


def shot(page, name: str, max_height: int = 3000) -> None:
    """Save the whole main area: the viewport grown to its height (Streamlit scrolls inside it)."""
    if not SHOTS:
        return
    Path(SHOTS).mkdir(parents=True, exist_ok=True)
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": 1400, "height": min(max_height, max(1000, int(height)))})
    wait_idle(page)
    time.sleep(1.5)  # plotly finishes drawing
    page.screenshot(path=str(Path(SHOTS) / name))
    page.set_viewport_size({"width": 1400, "height": 1000})


def isolated_point(coords: np.ndarray, mask: np.ndarray) -> int:
    """The row (among `mask`) farthest from every other point: a click there can only hit it."""
    rows = np.flatnonzero(mask)
    d = ((coords[rows, None] - coords[None]) ** 2).sum(-1)
    d[np.arange(len(rows)), rows] = np.inf
    return int(rows[d.min(1).argmax()])


def test_calibration_and_map_tabs(server, browser):
    from fmnist import calibration, featuremap, trust
    from fmnist.data import load_fashion_mnist

    labels = load_fashion_mnist(DATA_DIR).y_test
    probs = np.load(SHIPPED / "test_probs.npy")
    temperature = trust.load(SHIPPED).temperature
    before = calibration.expected_calibration_error(probs, labels)
    after = calibration.expected_calibration_error(calibration.apply_temperature(probs, temperature), labels)

    page = open_page(browser, f"{server['url']}/results")
    page.get_by_role("tab", name="Calibration").click()
    panel = page.get_by_role("tabpanel", name="Calibration")
    panel.get_by_text("ECE after temperature scaling").wait_for()
    metrics = panel.locator("[data-testid='stMetricValue']").all_inner_texts()
    assert metrics == [f"{before:.2%}", f"{after:.2%}", f"{temperature:.3f}"]
    panel.locator(".js-plotly-plot").wait_for()
    assert panel.get_by_text("What it means.").count() == 1
    assert_no_errors(page)
    shot(page, "results-calibration.png")

    # the map: click the most isolated mistake and see that image's caption
    fmap = featuremap.load(SHIPPED)
    row = isolated_point(fmap.coords, fmap.mistakes)
    item = int(fmap.index[row])
    page.get_by_role("tab", name="Map").click()
    chart = page.locator(".st-key-res_map_default .js-plotly-plot")
    chart.wait_for()
    wait_until(lambda: page.evaluate("el => !!(el._fullLayout && el._fullLayout.xaxis)", chart.element_handle()),
               timeout=30, what="the map's axes")
    x, y = (float(v) for v in fmap.coords[row])
    # the point's pixel: the plot area's corner plus the axes' data-to-pixel mapping
    offset = chart.evaluate("(el, p) => [el._fullLayout.xaxis.l2p(p[0]), el._fullLayout.yaxis.l2p(p[1])]", [x, y])
    chart.scroll_into_view_if_needed()  # a click outside the viewport reaches nothing
    time.sleep(0.5)
    box = chart.locator(".nsewdrag").first.bounding_box()
    assert 0 <= box["y"] + offset[1] <= page.viewport_size["height"], (box, offset)
    page.mouse.move(box["x"] + offset[0], box["y"] + offset[1])
    time.sleep(0.3)  # plotly picks the hovered point before the click
    page.mouse.click(box["x"] + offset[0], box["y"] + offset[1])
    caption = (f"Test image #{item}: true {CLASSES[int(fmap.labels[row])]}, "
               f"predicted {CLASSES[int(probs[item].argmax())]} ({probs[item].max():.0%}) · a mistake")
    page.get_by_text(caption).wait_for(timeout=30_000)
    wait_idle(page)
    assert_no_errors(page)
    shot(page, "results-map.png")
    page.close()
