import gzip

import numpy as np
import pytest

from fmnist import data as fdata


def _write_set(folder, n_train=50, n_test=20, seed=0):
    ds = fdata.synthetic_dataset(n_train, n_test, seed)
    fdata.write_idx(folder / "train-images-idx3-ubyte.gz", ds.x_train)
    fdata.write_idx(folder / "train-labels-idx1-ubyte.gz", ds.y_train)
    fdata.write_idx(folder / "t10k-images-idx3-ubyte", ds.x_test, compress=False)  # raw works too
    fdata.write_idx(folder / "t10k-labels-idx1-ubyte", ds.y_test, compress=False)
    return ds


def test_idx_round_trip_gz_and_raw(tmp_path):
    arr = np.random.default_rng(1).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    for compress in (True, False):
        path = fdata.write_idx(tmp_path / f"x{compress}", arr, compress=compress)
        assert np.array_equal(fdata.read_idx(path), arr)


def test_loader_reads_small_files_in_explicit_dir(tmp_path):
    ds = _write_set(tmp_path)
    loaded = fdata.load_fashion_mnist(tmp_path, expect_full=False)
    assert np.array_equal(loaded.x_train, ds.x_train) and np.array_equal(loaded.y_test, ds.y_test)


def test_wrong_counts_are_rejected_for_the_official_set(tmp_path):
    _write_set(tmp_path)
    with pytest.raises(fdata.DataError, match="expected 60,000"):
        fdata.load_fashion_mnist(tmp_path)


def test_truncated_file_names_the_file_and_the_fix(tmp_path):
    arr = np.zeros((10, 28, 28), np.uint8)
    path = fdata.write_idx(tmp_path / "train-images-idx3-ubyte.gz", arr)
    raw = gzip.decompress(path.read_bytes())[:-100]
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(fdata.DataError) as err:
        fdata.read_idx(path)
    assert "truncated" in str(err.value) and "train-images-idx3-ubyte.gz" in str(err.value)
    assert "FMNIST_DATA_DIR" in str(err.value)


def test_corrupt_gzip_and_bad_magic(tmp_path):
    bad_gz = tmp_path / "a.gz"
    bad_gz.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(fdata.DataError, match="damaged"):
        fdata.read_idx(bad_gz)
    bad_magic = tmp_path / "b"
    bad_magic.write_bytes(b"\x00\x00\x09\x99" + b"\x00" * 40)
    with pytest.raises(fdata.DataError, match="magic number"):
        fdata.read_idx(bad_magic)
    empty = tmp_path / "c"
    empty.write_bytes(b"")
    with pytest.raises(fdata.DataError, match="empty"):
        fdata.read_idx(empty)


def test_empty_dir_lists_every_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FMNIST_DATA_DIR", str(tmp_path))
    with pytest.raises(fdata.DataError) as err:
        fdata.load_fashion_mnist()
    for name in fdata.ALL_FILE_NAMES:
        assert name in str(err.value)
    assert "FMNIST_DATA_DIR" in str(err.value)


def test_argument_beats_environment(tmp_path, monkeypatch):
    _write_set(tmp_path)
    monkeypatch.setenv("FMNIST_DATA_DIR", str(tmp_path / "nowhere"))
    assert fdata.resolve_data_dir(tmp_path) == (tmp_path, True)
    assert fdata.load_fashion_mnist(tmp_path, expect_full=False).x_train.shape == (50, 28, 28)


def test_split_is_stratified_deterministic_and_disjoint():
    labels = np.repeat(np.arange(10), 100)
    np.random.default_rng(0).shuffle(labels)
    keep, held = fdata.stratified_split(labels, 0.1, seed=3)
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == 1000
    assert np.all(np.bincount(labels[held], minlength=10) == 10)
    keep2, held2 = fdata.stratified_split(labels, 0.1, seed=3)
    assert np.array_equal(held, held2)
    _, held3 = fdata.stratified_split(labels, 0.1, seed=4)
    assert not np.array_equal(held, held3)


def test_make_splits_never_touches_the_test_set_and_limit_is_stratified():
    ds = fdata.synthetic_dataset(1000, 200, seed=2)
    splits = fdata.make_splits(ds, val_fraction=0.2, seed=0, limit=500)
    assert len(splits.x_train) + len(splits.x_val) == 500
    assert len(np.intersect1d(splits.train_index, splits.val_index)) == 0
    assert splits.train_index.max() < len(ds.x_train)  # indices into the training set only
    counts = np.bincount(splits.y_val, minlength=10)
    assert counts.min() == counts.max() == 10
    assert np.array_equal(ds.x_train[splits.val_index], splits.x_val)


@pytest.mark.slow
@pytest.mark.integration
def test_real_data_shapes_and_balance(real_dataset):
    assert real_dataset.x_train.shape == (60000, 28, 28) and real_dataset.x_test.shape == (10000, 28, 28)
    assert np.all(np.bincount(real_dataset.y_test) == 1000)
    splits = fdata.make_splits(real_dataset, 0.1, 0)
    assert len(splits.x_val) == 6000 and np.all(np.bincount(splits.y_val) == 600)
