"""Missing prerequisites: skip on a developer's machine, fail under CI.

A test that needs something the machine may lack (the real Fashion-MNIST files, Chromium,
Playwright, the shipped model) calls `require`. Outside CI it skips, and `-ra` lists the skip in
the summary; with CI=true (what `.ci/run` sets) it fails, so a suite can never go green by
skipping its most end-to-end tests.
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from types import ModuleType

import pytest


def in_ci() -> bool:
    """True when the environment variable CI is "true" or "1" (any case), as CI services set it."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def require(ok: bool, what: str) -> None:
    """Skip (outside CI) or fail (under CI) unless `ok`; `what` names the missing prerequisite.

    Works at module level as well as inside tests and fixtures.
    """
    if ok:
        return
    message = f"missing prerequisite: {what}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: a missing prerequisite fails instead of skipping)",
                    pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require_module(name: str, what: str | None = None) -> ModuleType:
    """Import and return module `name`, or `require` it as missing (`what` overrides the message)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        require(False, what or f"Python module {name!r} ({exc})")
        raise  # unreachable: require() raised pytest's skip or fail


# ---- the prerequisites this suite knows about ---------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
DATA_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
              "t10k-labels-idx1-ubyte")


def data_dir_status() -> tuple[Path, list[str]]:
    """The Fashion-MNIST folder the tests use and the files it lacks (gzip or raw either way).

    FMNIST_DATA_DIR when set (and nothing else: a wrong value must not be papered over by a
    guess), else ../shared/data/fashion-mnist next to the checkout.
    """
    value = os.environ.get("FMNIST_DATA_DIR")
    folder = Path(value).expanduser() if value else ROOT.parent / "shared" / "data" / "fashion-mnist"
    missing = [f"{stem}.gz" for stem in DATA_FILES
               if not ((folder / f"{stem}.gz").is_file() or (folder / stem).is_file())]
    return folder, missing


def require_data() -> Path:
    """The real Fashion-MNIST folder, or skip/fail naming the folder and the files it lacks."""
    folder, missing = data_dir_status()
    require(not missing, f"Fashion-MNIST data: {folder} lacks {', '.join(missing)} "
                         "(set FMNIST_DATA_DIR to the folder holding the four official files)")
    return folder


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def require_chromium() -> str:
    """Debian's Chromium executable (`apt-get install chromium`)."""
    path = chromium_path()
    require(path is not None, "Chromium (no `chromium` on PATH; apt-get install chromium)")
    return path


def require_shipped_model() -> Path:
    """assets/default-model, verified, with its OpenVINO export."""
    from fmnist.runs import DEFAULT_MODEL_DIR, verify_run

    ok = DEFAULT_MODEL_DIR.is_dir() and verify_run(DEFAULT_MODEL_DIR).usable
    require(ok, f"the shipped model ({DEFAULT_MODEL_DIR} missing or failing verification)")
    require((DEFAULT_MODEL_DIR / "openvino" / "export.json").is_file(),
            f"the shipped model's OpenVINO export ({DEFAULT_MODEL_DIR / 'openvino'})")
    return DEFAULT_MODEL_DIR


def summary() -> list[str]:
    """One line per prerequisite, for pytest's report header."""
    folder, missing = data_dir_status()
    model = ROOT / "assets" / "default-model"
    try:
        importlib.import_module("playwright.sync_api")
        playwright = "ok"
    except ImportError:
        playwright = "MISSING"
    return [
        f"prerequisites (CI={'true: missing ones fail' if in_ci() else 'unset: missing ones skip'}):",
        f"  Fashion-MNIST data {folder}: {'ok' if not missing else 'MISSING ' + ', '.join(missing)}",
        f"  chromium: {chromium_path() or 'MISSING'};  playwright: {playwright};  "
        f"shipped model: {'ok' if (model / 'manifest.json').is_file() else 'MISSING'}",
    ]
