"""Fashion-MNIST data: the official IDX files, validated, plus seeded stratified splits.

The test set is only ever used for the final report. Early stopping and model choice use a
validation split carved out of the training set (the report validated on the test set).
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE = (28, 28)

# split -> (images file, labels file, expected count)
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000),
}
ALL_FILE_NAMES = tuple(f"{name}.gz" for split in FILES.values() for name in split[:2])
ENV_VAR = "FMNIST_DATA_DIR"
KERAS_CACHE = Path.home() / ".keras" / "datasets" / "fashion-mnist"

_MAGIC_IMAGES = 0x00000803  # unsigned byte, 3 dimensions
_MAGIC_LABELS = 0x00000801  # unsigned byte, 1 dimension


class DataError(Exception):
    """A data file is missing or corrupt; the message says which and how to fix it."""


@dataclass(frozen=True)
class Dataset:
    """The four official arrays: uint8 images (N, 28, 28) and uint8 labels (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str = ""


@dataclass(frozen=True)
class Splits:
    """Training data for one run: train and validation parts of the official training set."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    train_index: np.ndarray  # indices into the official training set
    val_index: np.ndarray


def _fix_hint() -> str:
    return (
        f"Put the four official files ({', '.join(ALL_FILE_NAMES)}; gzip or raw) in one folder and "
        f"set {ENV_VAR} to it (e.g. `export {ENV_VAR}=/path/to/fashion-mnist`), or pass "
        "--data-dir."
    )


def _open(path: Path):
    with open(path, "rb") as probe:
        gz = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzip or raw), checking magic number, dimensions and size."""
    path = Path(path)
    try:
        with _open(path) as fh:
            header = fh.read(4)
            if len(header) < 4:
                raise DataError(f"{path} is empty or truncated (no IDX header). {_fix_hint()}")
            magic = struct.unpack(">I", header)[0]
            if magic not in (_MAGIC_IMAGES, _MAGIC_LABELS):
                raise DataError(
                    f"{path} is not a Fashion-MNIST IDX file (magic number 0x{magic:08x}, expected "
                    f"0x{_MAGIC_IMAGES:08x} for images or 0x{_MAGIC_LABELS:08x} for labels). {_fix_hint()}"
                )
            ndim = magic & 0xFF
            dims_raw = fh.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise DataError(f"{path} is truncated inside its header. {_fix_hint()}")
            dims = struct.unpack(f">{ndim}I", dims_raw)
            expected = int(np.prod(dims))
            payload = fh.read(expected + 1)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path} could not be read ({exc}). The file is damaged. {_fix_hint()}") from exc
    if len(payload) != expected:
        what = "truncated" if len(payload) < expected else "longer than its header says"
        raise DataError(
            f"{path} is {what}: header promises {expected:,} bytes of data for shape {dims}, "
            f"found {min(len(payload), expected + 1):,}{'+' if len(payload) > expected else ''}. {_fix_hint()}"
        )
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool = True) -> Path:
    """Write a uint8 array as IDX (used by tests and tools that make small data sets)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x00000800 | array.ndim
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as fh:
        fh.write(header + array.tobytes())
    return Path(path)


def _find_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> tuple[Path | None, bool]:
    """Where to read from: the argument, else $FMNIST_DATA_DIR, else the Keras cache.

    Returns (folder, explicit): explicit folders must hold the files; the Keras cache may be empty,
    in which case the loader downloads.
    """
    if data_dir:
        return Path(data_dir).expanduser(), True
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser(), True
    return KERAS_CACHE, False


def _load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_stem, labels_stem, count = FILES[split]
    found = {stem: _find_file(folder, stem) for stem in (images_stem, labels_stem)}
    missing = [f"{stem}.gz" for stem, path in found.items() if path is None]
    if missing:
        raise DataError(
            f"Fashion-MNIST file(s) missing in {folder}: {', '.join(missing)}. {_fix_hint()}"
        )
    images = read_idx(found[images_stem])
    labels = read_idx(found[labels_stem])
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{found[images_stem]} holds shape {images.shape}, expected (N, 28, 28). {_fix_hint()}")
    if labels.ndim != 1:
        raise DataError(f"{found[labels_stem]} holds shape {labels.shape}, expected (N,). {_fix_hint()}")
    if len(images) != count or len(labels) != count:
        raise DataError(
            f"{split} set has {len(images):,} images and {len(labels):,} labels, expected {count:,} "
            f"of each ({found[images_stem].name}, {found[labels_stem].name}). {_fix_hint()}"
        )
    if labels.max(initial=0) >= NUM_CLASSES:
        raise DataError(f"{found[labels_stem]} has labels outside 0-9. {_fix_hint()}")
    return images, labels


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, *, download: bool = True,
                       expect_full: bool = True) -> Dataset:
    """Load the official train and test sets as uint8 arrays.

    `expect_full=False` accepts smaller files with the same format (tests use tiny IDX files).
    """
    folder, explicit = resolve_data_dir(data_dir)
    if not explicit and not all(_find_file(folder, s) for split in FILES.values() for s in split[:2]):
        if not download:
            raise DataError(f"Fashion-MNIST is not in the Keras cache ({folder}). {_fix_hint()}")
        return _download()
    if not folder.is_dir():
        raise DataError(f"Data folder {folder} does not exist. {_fix_hint()}")
    missing = [f"{s}.gz" for split in FILES.values() for s in split[:2] if _find_file(folder, s) is None]
    if missing:
        raise DataError(f"Fashion-MNIST file(s) missing in {folder}: {', '.join(missing)}. {_fix_hint()}")
    if expect_full:
        x_train, y_train = _load_split(folder, "train")
        x_test, y_test = _load_split(folder, "test")
    else:
        x_train, y_train = _load_any(folder, "train")
        x_test, y_test = _load_any(folder, "test")
    return Dataset(x_train, y_train, x_test, y_test, source=str(folder))


def _load_any(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_stem, labels_stem, _ = FILES[split]
    paths = [_find_file(folder, s) for s in (images_stem, labels_stem)]
    if None in paths:
        raise DataError(f"Fashion-MNIST {split} files missing in {folder}. {_fix_hint()}")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if len(images) != len(labels) or images.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{split} files in {folder} disagree: {images.shape} vs {labels.shape}. {_fix_hint()}")
    return images, labels


def _download() -> Dataset:
    try:
        import keras

        (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    except Exception as exc:  # no network, proxy, disk full...: all end in the same advice
        raise DataError(
            f"Fashion-MNIST is not on this machine and the download failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else 'no detail'}). {_fix_hint()}"
        ) from exc
    return Dataset(x_train, y_train, x_test, y_test, source="keras download")


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): `fraction` of every class held out, chosen with `seed`.

    Deterministic for a given (labels, fraction, seed); both index arrays are sorted.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        n_held = int(round(len(idx) * fraction))
        held.append(rng.permutation(idx)[:n_held])
    held_idx = np.sort(np.concatenate(held)) if held else np.array([], dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx


def stratified_limit(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of at most `limit` items, keeping the class proportions."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    _, keep = stratified_split(labels, limit / len(labels), seed + 1)
    return keep


def make_splits(dataset: Dataset, val_fraction: float = 0.1, seed: int = 0,
                limit: int | None = None) -> Splits:
    """Train/validation split of the official training set (test set untouched)."""
    pool = stratified_limit(dataset.y_train, limit, seed)
    keep, held = stratified_split(dataset.y_train[pool], val_fraction, seed)
    train_index, val_index = pool[keep], pool[held]
    return Splits(
        dataset.x_train[train_index], dataset.y_train[train_index],
        dataset.x_train[val_index], dataset.y_train[val_index],
        train_index, val_index,
    )


def synthetic_dataset(n_train: int = 512, n_test: int = 128, seed: int = 0) -> Dataset:
    """A tiny learnable stand-in for Fashion-MNIST: each class is a distinct bar pattern plus noise.

    Used by fast tests and demos that must run without the real files.
    """
    rng = np.random.default_rng(seed)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % NUM_CLASSES
        rng.shuffle(labels)
        images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.float32)
        for i, cls in enumerate(labels):
            row = 2 + cls * 2
            images[i, row:row + 3, 4:24] += 200
            images[i, 4:24, 26 - cls * 2:28 - cls * 2] += 120 if cls % 2 else 0
        return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.uint8)

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    return Dataset(x_train, y_train, x_test, y_test, source="synthetic")
