"""Shared fixtures. Fast tests use tiny synthetic data; `integration` tests use FMNIST_DATA_DIR."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent


def _real_data_dir() -> Path | None:
    value = os.environ.get("FMNIST_DATA_DIR")
    if value and (Path(value) / "t10k-labels-idx1-ubyte.gz").exists():
        return Path(value)
    guess = ROOT.parent / "shared" / "data" / "fashion-mnist"
    return guess if (guess / "t10k-labels-idx1-ubyte.gz").exists() else None


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    path = _real_data_dir()
    if path is None:
        pytest.skip("real Fashion-MNIST files not found (set FMNIST_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def real_dataset(real_data_dir):
    from fmnist.data import load_fashion_mnist

    return load_fashion_mnist(real_data_dir)


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
