"""The Data page's pure helpers (fmnist.explore) and the figure builders (fmnist.charts)."""

from __future__ import annotations

import numpy as np
import pytest

from fmnist import charts, explore
from fmnist.data import CLASS_NAMES, synthetic_dataset


@pytest.fixture(scope="module")
def ds():
    return synthetic_dataset(n_train=300, n_test=50, seed=0)


def test_sample_grid_and_labelled_rows(ds):
    grid, index = explore.sample_grid(ds.x_train, ds.y_train, per_class=6, seed=1)
    assert grid.shape == (10 * 30 - 2, 6 * 30 - 2) and index.shape == (10, 6)
    assert all((ds.y_train[index[r]] == r).all() for r in range(10))
    big = explore.enlarge(grid, 3)
    labelled = explore.label_rows(big, CLASS_NAMES, pitch=90, tile=84)
    margin = labelled.shape[1] - big.shape[1]
    assert labelled.shape[0] == big.shape[0] and 40 < margin < 400
    assert (labelled[:, margin:] == big).all()  # the grid itself is untouched
    for r in range(10):  # every row's name is written level with that row, nowhere else
        band = labelled[r * 90:r * 90 + 84, :margin]
        gap = labelled[r * 90 + 84:r * 90 + 90, :margin]
        assert band.min() < 128 and (r == 9 or gap.min() == 255)


def test_counts_means_items(ds):
    counts = explore.class_counts(ds, val_fraction=0.2)
    assert sum(counts["train"]) + sum(counts["validation"]) == len(ds.x_train)
    assert sum(counts["test"]) == len(ds.x_test)
    means = explore.mean_images(ds.x_train, ds.y_train)
    assert means.shape == (10, 28, 28) and means.dtype == np.float32
    image, label, name = explore.get_item(ds, "test", 3)
    assert image.shape == (28, 28) and name == CLASS_NAMES[label]
    with pytest.raises(ValueError, match="between 0 and 49"):
        explore.get_item(ds, "test", 50)
    assert explore.to_uint8(np.array([[0.0, 0.5, 1.0]])).tolist() == [[0, 127, 255]]


def test_figures():
    batches = [(i, 2.0 / i, min(i / 50, 1.0)) for i in range(1, 101)]
    fig = charts.batch_figure(batches, steps_per_epoch=50)
    assert len(fig.data) == 2 and fig.data[1].yaxis == "y2" and fig.layout.yaxis2.overlaying == "y"
    assert list(fig.data[0].x) == list(range(1, 101))
    assert charts.smooth([1.0, 1.0, 1.0]) == pytest.approx([1.0, 1.0, 1.0])  # no pull towards zero
    assert charts.smooth([0.0, 10.0], 0.5) == pytest.approx([0.0, 10.0 * 0.5 / 0.75])
    epochs = [{"epoch": e, "accuracy": 0.8 + e / 100, "val_accuracy": 0.79, "loss": 0.5, "val_loss": 0.6}
              for e in (1, 2, 3)]
    assert len(charts.epoch_figure(epochs, "accuracy").data) == 2
    cm = np.eye(10, dtype=int) * 90 + 1
    conf = charts.confusion_figure(cm, normalise=True)
    assert len(conf.data[1].customdata) == 100 and list(conf.data[1].customdata[11]) == [1, 1, 91]
    bars = charts.probability_bars(np.full(10, 0.1))
    assert len(bars.data[0].y) == 10
    counts = charts.class_count_figure({"train": [5] * 10, "test": [1] * 10})
    assert [t.name for t in counts.data] == ["train (50)", "test (10)"]
