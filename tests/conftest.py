"""Shared fixtures. Fast tests use tiny synthetic data; `integration` tests use FMNIST_DATA_DIR.

A missing prerequisite (data, Chromium, Playwright, the shipped model) goes through
tests/prereq.py: a skip on a developer's machine, a failure under CI=true.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import prereq

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent


def pytest_report_header(config) -> list[str]:
    return prereq.summary()


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    return prereq.require_data()


@pytest.fixture(scope="session")
def real_dataset(real_data_dir):
    from fmnist.data import load_fashion_mnist

    return load_fashion_mnist(real_data_dir)


@pytest.fixture(scope="session")
def shipped_model() -> Path:
    return prereq.require_shipped_model()


@pytest.fixture(scope="session")
def tiny_dataset():
    from fmnist.data import synthetic_dataset

    return synthetic_dataset(n_train=512, n_test=128, seed=0)


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset, tmp_path_factory) -> Path:
    """One completed run trained on synthetic data (paper architecture, 1 epoch, no export)."""
    from fmnist.training import TrainConfig, train

    root = tmp_path_factory.mktemp("runs")
    result = train(TrainConfig(arch="paper", epochs=1, batch_size=64), tiny_dataset, runs_root=root,
                   export=False)
    assert result.status == "completed", result.message
    return result.run_dir
