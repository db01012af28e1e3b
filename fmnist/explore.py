"""Pure data functions behind the Data page: sample grids, class counts, mean images, items.

All take a `fmnist.data.Dataset` (uint8 arrays) and return numpy arrays or plain dicts.
"""

from __future__ import annotations

import numpy as np

from fmnist.data import CLASS_NAMES, NUM_CLASSES, Dataset, make_splits

SPLITS = ("train", "test")


def sample_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """(10, per_class) indices: `per_class` random items of every class, chosen with `seed`."""
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    rng = np.random.default_rng(seed)
    rows = []
    for cls in range(NUM_CLASSES):
        idx = np.flatnonzero(labels == cls)
        if len(idx) == 0:
            rows.append(np.full(per_class, -1))
            continue
        rows.append(rng.choice(idx, size=per_class, replace=len(idx) < per_class))
    return np.stack(rows)


def sample_grid(images: np.ndarray, labels: np.ndarray, per_class: int = 8, seed: int = 0,
                gap: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """One uint8 image tiling `per_class` samples per class (a row per class), and their indices.

    Rows follow CLASS_NAMES order; `gap` pixels of mid-grey separate the tiles.
    """
    index = sample_indices(labels, per_class, seed)
    cell = 28 + gap
    grid = np.full((NUM_CLASSES * cell - gap, per_class * cell - gap), 96, dtype=np.uint8)
    for r in range(NUM_CLASSES):
        for c in range(per_class):
            i = index[r, c]
            tile = images[i] if i >= 0 else np.zeros((28, 28), np.uint8)
            grid[r * cell:r * cell + 28, c * cell:c * cell + 28] = tile
    return grid, index


def class_counts(dataset: Dataset, val_fraction: float = 0.1, seed: int = 0,
                 limit: int | None = None) -> dict[str, list[int]]:
    """Items per class in the train, validation and test sets, for a given validation split."""
    splits = make_splits(dataset, val_fraction, seed, limit)
    count = lambda y: np.bincount(np.asarray(y, dtype=np.int64), minlength=NUM_CLASSES).tolist()  # noqa: E731
    return {"train": count(splits.y_train), "validation": count(splits.y_val), "test": count(dataset.y_test)}


def mean_images(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(10, 28, 28) float32: the average image of every class (zeros for an absent class)."""
    out = np.zeros((NUM_CLASSES, 28, 28), dtype=np.float32)
    for cls in range(NUM_CLASSES):
        mask = labels == cls
        if mask.any():
            out[cls] = images[mask].mean(axis=0, dtype=np.float64)
    return out


def get_item(dataset: Dataset, split: str, index: int) -> tuple[np.ndarray, int, str]:
    """(image, label, class name) of one item; ValueError with the valid range when out of range."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    images = dataset.x_train if split == "train" else dataset.x_test
    labels = dataset.y_train if split == "train" else dataset.y_test
    if not 0 <= int(index) < len(images):
        raise ValueError(f"index must be between 0 and {len(images) - 1} for the {split} set, got {index}")
    label = int(labels[int(index)])
    return images[int(index)], label, CLASS_NAMES[label]


def enlarge(image: np.ndarray, scale: int = 8) -> np.ndarray:
    """Nearest-neighbour upscaling, so 28x28 pixels stay crisp on screen."""
    image = np.asarray(image)
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def fit_square(image: np.ndarray, size: int = 112) -> np.ndarray:
    """An image scaled (nearest, keeping its aspect) and centred on a size x size canvas, so that
    the steps of a pipeline show as equal thumbnails whatever their shapes. Greyscale or RGB."""
    arr = to_uint8(image)
    h, w = arr.shape[:2]
    scale = size / max(h, w, 1)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    rows = np.minimum((np.arange(nh) / scale).astype(int), h - 1)
    cols = np.minimum((np.arange(nw) / scale).astype(int), w - 1)
    small = arr[rows][:, cols]
    canvas = np.full((size, size) + arr.shape[2:], 128, np.uint8)  # mid grey: neither item nor background
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top:top + nh, left:left + nw] = small
    return canvas


def decision_rows(decisions: dict) -> list[dict]:
    """The photo pipeline's decisions as labelled rows ("Background colour": "255, 255, 255")."""
    rows = []
    for key, value in decisions.items():
        if isinstance(value, bool):
            text = "yes" if value else "no"
        elif isinstance(value, (list, tuple)):
            text = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        elif isinstance(value, float):
            text = f"{value:.3g}"
        else:
            text = str(value)
        rows.append({"decision": key.replace("_", " ").capitalize(), "value": text})
    return rows


def page_of(items: list, page: int, per_page: int) -> tuple[list, int, int]:
    """One page of a long list: (items on it, the page actually shown, the number of pages)."""
    pages = max(1, -(-len(items) // max(per_page, 1)))
    page = min(max(int(page), 1), pages)
    return items[(page - 1) * per_page: page * per_page], page, pages


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Any float or int image scaled into 0..255 uint8 (min-max for floats outside that range)."""
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return arr
    arr = arr.astype(np.float32)
    if arr.size and (arr.min() < 0 or arr.max() > 255 or arr.max() <= 1.0):
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
    return np.clip(arr, 0, 255).astype(np.uint8)


def _font(px: int):
    from PIL import ImageFont

    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(path, px)
        except OSError:
            continue
    return ImageFont.load_default(size=px)


def label_rows(image: np.ndarray, names: list[str] | tuple[str, ...], pitch: int, tile: int | None = None,
               font_px: int | None = None) -> np.ndarray:
    """The grid image with each row's name written on a white margin at its left.

    Names are part of the picture, so they line up with their rows at any display size. `pitch`
    is the distance in pixels between rows, `tile` the height of one row's images (default pitch).
    """
    from PIL import Image, ImageDraw

    image = np.asarray(image, dtype=np.uint8)
    tile = tile or pitch
    font = _font(font_px or max(10, int(tile * 0.36)))
    width = int(max(font.getlength(n) for n in names)) + max(8, tile // 4)
    out = Image.new("L", (width + image.shape[1], image.shape[0]), 255)
    out.paste(Image.fromarray(image), (width, 0))
    draw = ImageDraw.Draw(out)
    for r, name in enumerate(names):
        draw.text((0, r * pitch + tile / 2), name, fill=40, font=font, anchor="lm")
    return np.asarray(out)
