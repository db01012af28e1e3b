"""Missing prerequisites: skip on a developer's machine, fail under CI.

A test that needs something the machine may lack (the real Fashion-MNIST files, Chromium,
Playwright, the shipped model) calls `require`. Outside CI it skips, and `-ra` lists the skip in
the summary; with CI=true (what `.ci/run` sets) it fails, so a suite can never go green by
skipping its most end-to-end tests.
"""

from __future__ import annotations

import importlib
import os
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
