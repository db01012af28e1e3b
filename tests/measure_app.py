"""Measure the app's must-show figures in Debian's Chromium (not a pytest module).

    export FMNIST_DATA_DIR=/work/shared/data/fashion-mnist
    python tests/measure_app.py coldstart [--repeat 3]    # `streamlit run` start -> first rendered page
    python tests/measure_app.py stroke [--strokes 10]     # canvas stroke -> prediction, OpenVINO FP32
    python tests/measure_app.py throughput [--repeat 2]   # app training vs CLI, images/s (status.json)
    python tests/measure_app.py steady [--seconds 20]     # CPU by process: idle, and mid-training
    python tests/measure_app.py sessions [--rounds 5]     # 2 sessions classify while a 3rd trains
    python tests/measure_app.py screenshots OUT_DIR       # full-page PNG of every page

Each command starts its own `streamlit run` on a free port with FMNIST_RUNS_DIR in a temporary
folder (the shipped default model is always there), so nothing in ./runs is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
import test_browser as tb  # noqa: E402  (ARGS, open_page, wait_idle, free_port)

from playwright.sync_api import sync_playwright  # noqa: E402

CAPTION_MS = ("() => Array.from(document.querySelectorAll('[data-testid=stCaptionContainer]'))"
              ".map(e => e.innerText).filter(t => t.includes(' ms')).join('|')")


@contextmanager
def server(runs: Path, extra_env: dict | None = None):
    """tests/test_browser.py's server, yielding (url, the time `streamlit run` started)."""
    with tb.streamlit_server(runs, extra_env) as info:
        yield info["url"], info["t0"]


def launch(p):
    return p.chromium.launch(executable_path=shutil.which("chromium"), args=tb.ARGS)


def coldstart(args) -> None:
    times = []
    with sync_playwright() as p:
        browser = launch(p)  # the browser is already open; the clock starts with `streamlit run`
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp, server(Path(tmp)) as (url, t0):
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(url)
                page.wait_for_selector("h1", timeout=60_000)
                page.wait_for_selector("[data-testid='stSidebar'] [data-testid='stSelectbox']", timeout=60_000)
                times.append(time.monotonic() - t0)
                page.close()
        browser.close()
    print("cold start to first rendered page (s):", [round(t, 2) for t in times],
          "median", round(statistics.median(times), 2))


def stroke(args) -> None:
    with tempfile.TemporaryDirectory() as tmp, server(Path(tmp)) as (url, _), sync_playwright() as p:
        browser = launch(p)
        page = tb.open_page(browser, f"{url}/classify")
        backend = page.locator(".st-key-backend").inner_text()
        page.get_by_role("tab", name="Draw").click()
        canvas = page.locator("canvas.upper-canvas").first
        canvas.wait_for()
        box = canvas.bounding_box()
        times = []
        for i in range(args.strokes + 1):  # the first stroke loads the model: not counted
            before = page.evaluate(CAPTION_MS)
            x0, y0 = box["x"] + 40 + i * 18, box["y"] + 30
            page.mouse.move(x0, y0)
            page.mouse.down()
            for k in range(10):
                page.mouse.move(x0 + (k % 2) * 6, y0 + k * 20)
            t0 = time.monotonic()
            page.mouse.up()
            page.wait_for_function(f"(b) => {{ const t = ({CAPTION_MS})(); return t && t !== b; }}",
                                   arg=before, timeout=30_000)
            times.append(time.monotonic() - t0)
            time.sleep(0.3)
        print("backend:", backend.replace("\n", " "), "| last caption:", page.evaluate(CAPTION_MS))
        print("stroke -> prediction (s):", [round(t, 3) for t in times])
        print(f"p50 over {args.strokes} strokes (first, model-loading stroke excluded): "
              f"{statistics.median(times[1:]):.3f} s, max {max(times[1:]):.3f} s")
        browser.close()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (Linux /proc), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _processes() -> dict[int, str]:
    """pid -> 'train' (the job's child), 'server' (streamlit), 'browser' (chromium), for this user."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "multiprocessing" in cmd and "spawn" in cmd:
            found[int(entry.name)] = "train"
        elif "streamlit run" in cmd:
            found[int(entry.name)] = "server"
        elif "chrom" in cmd.split(" ", 1)[0]:
            found[int(entry.name)] = "browser"
    return found


class CpuSampler:
    """CPU seconds used by the app's processes while a training runs, sampled every 0.25 s."""

    def __init__(self):
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.kinds: dict[int, str] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self.stop.wait(0.25):
            for pid, kind in _processes().items():
                used = _cpu_seconds(pid)
                if used:
                    self.kinds[pid] = kind
                    self.first.setdefault(pid, used)
                    self.last[pid] = used

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, kind in self.kinds.items():
            out[kind] = out.get(kind, 0.0) + self.last[pid] - self.first[pid]
        return {k: round(v, 1) for k, v in sorted(out.items())}


def _app_training(url: str, runs: Path, epochs: int, limit: int, batch: int) -> dict:
    with sync_playwright() as p:
        browser = launch(p)
        page = tb.open_page(browser, f"{url}/train")
        # like a user who reads the layer table first: the server has imported TensorFlow to build it
        page.locator("[data-testid='stDataFrame']").first.wait_for(timeout=120_000)
        page.locator(".st-key-lr_preview .js-plotly-plot").wait_for(timeout=60_000)  # as a user sees it
        with CpuSampler() as cpu:
            t0 = time.monotonic()
            tb.start_training(page, epochs=epochs, limit=limit, batch_size=batch)
            page.locator("[data-testid='stAlertContentSuccess']").get_by_text("Finished").wait_for(timeout=1_800_000)
            wall = time.monotonic() - t0
        browser.close()
    status = [json.loads(s.read_text()) for s in runs.glob("*/status.json")]
    assert len(status) == 1, status
    print(f"    app: {wall:.0f} s from Start to Finished; CPU seconds meanwhile by process: {cpu.totals()}",
          flush=True)
    return status[0]


def _cli_training(runs: Path, epochs: int, limit: int, batch: int) -> dict:
    subprocess.run([sys.executable, "-m", "fmnist", "train", "--arch", "modern", "--epochs", str(epochs),
                    "--limit", str(limit), "--batch-size", str(batch), "--no-export", "--runs-dir", str(runs)],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status = [json.loads(s.read_text()) for s in runs.glob("*/status.json")]
    assert len(status) == 1, status
    return status[0]


def throughput(args) -> None:
    app, cli = [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            cli.append(_cli_training(Path(tmp), args.epochs, args.limit, args.batch)["images_per_s"])
        with tempfile.TemporaryDirectory() as tmp, server(Path(tmp), {"FMNIST_JOBS_EXPORT": "0"}) as (url, _):
            app.append(_app_training(url, Path(tmp), args.epochs, args.limit, args.batch)["images_per_s"])
        print(f"  cli {cli[-1]:.0f} img/s, app {app[-1]:.0f} img/s", flush=True)
    ratio = statistics.median(app) / statistics.median(cli)
    pairs = [a / c for a, c in zip(app, cli)]
    print(f"training throughput, modern, epochs={args.epochs}, limit={args.limit}, batch={args.batch}: "
          f"CLI {[round(c) for c in cli]} img/s, app (Train page open) {[round(a) for a in app]} img/s; "
          f"app/CLI (medians) = {ratio:.1%}; per pair {[f'{r:.0%}' for r in pairs]}, "
          f"median {statistics.median(pairs):.1%}")


def steady(args) -> None:
    """CPU seconds by process over `seconds`: the idle app (Train, Data), then in the middle of a
    long training with the Train page open and with the Data page open."""
    def sample(label: str) -> None:
        with CpuSampler() as cpu:
            time.sleep(args.seconds)
        print(f"{label}, {args.seconds:.0f} s: {cpu.totals()}", flush=True)

    with tempfile.TemporaryDirectory() as tmp, server(Path(tmp), {"FMNIST_JOBS_EXPORT": "0"}) as (url, _), \
            sync_playwright() as p:
        browser = launch(p)
        for path in ("train", "data"):
            page = tb.open_page(browser, f"{url}/{path}")
            time.sleep(3)
            sample(f"{path} page, idle")
            page.close()
        page = tb.open_page(browser, f"{url}/train")
        tb.start_training(page, epochs=30, limit=10_000, batch_size=128)
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 2", timeout=180_000)
        sample("train page, training")
        page.get_by_role("link", name="Data").click()
        tb.wait_idle(page)
        time.sleep(3)
        sample("data page, training")
        browser.close()


def sessions(args) -> None:
    """Issue 7's scenario: one session trains (the live Train page open), two others upload a photo
    at the same moment, `rounds` times; prints each answer's seconds (upload to rendered answer)."""
    from fmnist.data import load_fashion_mnist

    ds = load_fashion_mnist(os.environ.get("FMNIST_DATA_DIR"))
    with tempfile.TemporaryDirectory() as tmp, server(Path(tmp), {"FMNIST_JOBS_EXPORT": "0"}) as (url, _), \
            sync_playwright() as p:
        browser = launch(p)
        trainer = tb.open_page(browser, f"{url}/train")
        tb.start_training(trainer, epochs=200, limit=20_000, widths="16,32,64")
        trainer.wait_for_function("() => document.querySelector('.st-key-live_batches .js-plotly-plot')",
                                  timeout=120_000)
        pages = [tb.open_page(browser, f"{url}/classify") for _ in range(2)]
        times, cpu_kinds = [], None
        with CpuSampler() as cpu:
            for r in range(args.rounds + 1):  # round 0 loads plotly.js in each page: not counted
                images = [ds.x_test[2 * r], ds.x_test[2 * r + 1]]
                _, seconds = tb.classify_together(pages, images, f"r{r}", r + 1)
                if r:
                    times += seconds
                print(f"  round {r}: {[round(t, 2) for t in seconds]} s", flush=True)
            cpu_kinds = cpu.totals()
        snap = trainer.locator("[data-testid='stProgress']").first.inner_text()
        print(f"training still running: {snap!r}")
        trainer.get_by_role("button", name="Stop").click()
        print(f"classification during training, {len(times)} answers: p50 {statistics.median(times):.2f} s, "
              f"max {max(times):.2f} s; CPU seconds meanwhile by process: {cpu_kinds}")
        browser.close()


def screenshots(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, server(Path(tmp)) as (url, _), sync_playwright() as p:
        browser = launch(p)
        page = tb.open_page(browser, url, width=args.width)
        for path in ("", "data", "train", "results", "classify", "compare"):
            page.goto(f"{url}/{path}")
            tb.wait_idle(page)
            page.wait_for_function("() => !document.querySelector('[data-testid=stSpinner]')", timeout=120_000)
            time.sleep(1.5)  # plotly and images settle
            errors = page.locator(tb.ERRORS).all_inner_texts()
            # the app scrolls inside its main area: grow the window to the content's height
            height = page.evaluate("() => Math.max(...Array.from(document.querySelectorAll("
                                   "'[data-testid=stMain], [data-testid=stMainBlockContainer]')).map(e => e.scrollHeight))")
            page.set_viewport_size({"width": args.width, "height": min(max(int(height) + 40, 1000), 6000)})
            time.sleep(1.0)
            page.screenshot(path=str(out / f"{path or 'home'}.png"), full_page=True)
            page.set_viewport_size({"width": args.width, "height": 1000})
            print(f"{path or 'home'}: errors={errors}")
        browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("coldstart")
    s.add_argument("--repeat", type=int, default=3)
    s.set_defaults(func=coldstart)
    s = sub.add_parser("stroke")
    s.add_argument("--strokes", type=int, default=10)
    s.set_defaults(func=stroke)
    s = sub.add_parser("throughput")
    s.add_argument("--repeat", type=int, default=2)
    s.add_argument("--epochs", type=int, default=1)
    s.add_argument("--limit", type=int, default=10_000)
    s.add_argument("--batch", type=int, default=128)
    s.set_defaults(func=throughput)
    s = sub.add_parser("steady")
    s.add_argument("--seconds", type=float, default=20.0)
    s.set_defaults(func=steady)
    s = sub.add_parser("sessions")
    s.add_argument("--rounds", type=int, default=5)
    s.set_defaults(func=sessions)
    s = sub.add_parser("screenshots")
    s.add_argument("out")
    s.add_argument("--width", type=int, default=1400)
    s.set_defaults(func=screenshots)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
