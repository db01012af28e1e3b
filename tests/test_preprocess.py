"""fmnist.preprocess: photo recipe round trip, background separation, polarity, odd modes, drawings.

Fast tests need no model and no data: they build items by hand, turn them into product-style photos and
check geometry and polarity against the original. The round trip with a model (500 real test items,
prediction on the photo vs on the original) needs the shipped model and the real data (integration).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fmnist import preprocess as pp
from fmnist.images import ImageError
from tests.prereq import require

# ----------------------------------------------------------------------------------------------------
# Product-style photos from 28x28 items (dataset polarity: light item on black)


def product_photo(item: np.ndarray, rng: np.random.Generator, *, exif_turn: bool = False,
                  transparent: bool = False) -> bytes:
    """The issue's synthetic photo: negated to dark-on-white, upscaled 8-16x with smoothing, random margins
    and canvas aspect, white or light grey background with a slight colour tint, JPEG quality 85 (or an
    RGBA PNG with a transparent background), optionally stored sideways with an EXIF orientation tag."""
    scale = int(rng.integers(8, 17))
    darkness = np.asarray(Image.fromarray(item).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC),
                          np.float32) / 255.0
    base = 255.0 if rng.random() < 0.5 else float(rng.integers(225, 250))
    tint = 1.0 - rng.uniform(0, 0.04, 3)  # a slight colour cast
    background = base * tint
    photo = background * (1.0 - darkness[..., None])
    top, bottom, left, right = (int(rng.integers(0, 28 * scale * 0.4)) for _ in range(4))
    canvas = np.empty((photo.shape[0] + top + bottom, photo.shape[1] + left + right, 3), np.float32)
    canvas[...] = background
    canvas[top:top + photo.shape[0], left:left + photo.shape[1]] = photo
    img = Image.fromarray(pp.to_uint8(canvas))
    buf = io.BytesIO()
    if transparent:
        alpha = np.zeros(canvas.shape[:2], np.float32)
        alpha[top:top + photo.shape[0], left:left + photo.shape[1]] = np.clip(darkness * 8, 0, 1)
        junk = np.where(alpha[..., None] > 0, canvas, 40.0)  # fully transparent pixels hold a dark junk colour
        rgba = np.dstack([pp.to_uint8(junk), pp.to_uint8(alpha * 255)])
        Image.fromarray(rgba, "RGBA").save(buf, "PNG")
        return buf.getvalue()
    exif = None
    if exif_turn:
        img = img.transpose(Image.Transpose.ROTATE_90)  # stored turned; the tag says how to turn it back
        e = Image.Exif()
        e[0x0112] = 6  # rotate 90 CW to display: undoes a 90 CCW turn
        exif = e.tobytes()
    img.save(buf, "JPEG", quality=85, **({"exif": exif} if exif else {}))
    return buf.getvalue()


def hand_items() -> list[np.ndarray]:
    """A few dataset-style items made without data: trousers, a top, a shoe, a bag (light on black,
    touching the longest edge and centred like Fashion-MNIST items, with some texture)."""
    rng = np.random.default_rng(3)
    items = []
    shapes = [
        [(8, 0), (18, 0), (18, 27), (14, 27), (13, 8), (12, 27), (8, 27)],  # trousers
        [(2, 2), (9, 0), (19, 0), (26, 2), (27, 9), (21, 10), (21, 27), (7, 27), (7, 10), (0, 9)],  # top
        [(0, 10), (14, 8), (27, 14), (27, 19), (0, 19)],  # shoe
        [(0, 4), (27, 4), (27, 23), (0, 23)],  # bag
    ]
    for poly in shapes:
        img = Image.new("L", (28, 28), 0)
        ImageDraw.Draw(img).polygon(poly, fill=int(rng.integers(120, 230)))
        arr = np.asarray(img).astype(np.float32)
        arr = np.where(arr > 0, np.clip(arr + rng.normal(0, 15, arr.shape), 30, 255), 0)
        items.append(pp.to_uint8(arr))
    return items


def bbox(arr: np.ndarray, level: int = 30) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero((arr > level).any(1)), np.flatnonzero((arr > level).any(0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])


# ----------------------------------------------------------------------------------------------------
# Photos: recipe round trip without a model


@pytest.mark.parametrize("variant", ["jpeg", "exif", "rgba"])
def test_product_photo_round_trip_recovers_the_item(variant):
    rng = np.random.default_rng({"jpeg": 0, "exif": 1, "rgba": 2}[variant])
    for item in hand_items():
        data = product_photo(item, rng, exif_turn=variant == "exif", transparent=variant == "rgba")
        prepared = pp.prepare_photo_bytes(data)
        out = prepared.input
        assert out.shape == (28, 28) and out.dtype == np.uint8
        assert not prepared.empty and prepared.decisions["negated"] and not prepared.decisions["inverted"]
        assert prepared.decisions["plain_background"] and not prepared.decisions["background_removed"]
        assert out[0].max() < 40 or bbox(item)[0] == 0  # background black, as in the dataset
        (t1, b1, l1, r1), (t2, b2, l2, r2) = bbox(out), bbox(item)
        assert abs((b1 - t1) - (b2 - t2)) <= 1 and abs((r1 - l1) - (r2 - l2)) <= 1  # same size
        assert abs((t1 + b1) / 2 - 13.5) <= 1 and abs((l1 + r1) / 2 - 13.5) <= 1  # centred
        assert correlation(out, item) > 0.8


def test_steps_are_named_displayable_images():
    prepared = pp.prepare_photo_bytes(product_photo(hand_items()[1], np.random.default_rng(5)))
    names = [name for name, _ in prepared.steps]
    for expected in ("original", "trimmed", "resized", "sharpened", "padded", "negated"):
        assert expected in names
    for name, image in prepared.steps:
        assert image.dtype == np.uint8 and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)), name
    assert dict(prepared.steps)["padded"].shape[:2] == (28, 28)


def test_recipe_steps_follow_the_paper():
    rng = np.random.default_rng(0)
    photo = np.full((300, 200, 3), 250, np.uint8)
    photo[40:240, 60:120] = rng.integers(0, 90, (200, 60, 3))  # a dark item, 200 tall and 60 wide
    trimmed = pp.trim_edges(photo, pp.corner_colour(photo))
    assert trimmed.shape[:2] == (200, 60)
    resized = pp.resize_longest(trimmed)
    assert resized.shape[:2] == (28, 8)
    padded = pp.pad_centred(pp.sharpen(resized), fill=np.array([250, 250, 250]))
    assert padded.shape[:2] == (28, 28) and (padded[:, :10] == 250).all() and (padded[:, 18:] == 250).all()
    assert (pp.negate(padded)[:, :10] == 5).all()


def test_light_item_on_dark_background_is_detected():
    item = hand_items()[0]
    dark_bg = np.pad(np.dstack([item] * 3), ((4, 4), (6, 6), (0, 0)))  # light item on black, with margins
    big = np.asarray(Image.fromarray(dark_bg).resize((340, 360), Image.Resampling.BICUBIC))
    light_bg = 255 - big
    a = pp.prepare_photo(Image.fromarray(big))
    b = pp.prepare_photo(Image.fromarray(light_bg))
    assert a.decisions["inverted"] and not b.decisions["inverted"]
    assert correlation(a.input, b.input) > 0.98
    assert correlation(a.input, item) > 0.85


def test_cluttered_background_is_separated():
    rng = np.random.default_rng(1)
    h, w = 400, 300
    yy, xx = np.mgrid[0:h, 0:w]
    floor = np.dstack([140 + 40 * np.sin(xx / 6.0), 90 + 30 * np.sin(yy / 9.0), 60 + 0 * xx])  # wood-ish
    floor += rng.normal(0, 8, floor.shape)
    truth = np.zeros((h, w), bool)
    truth[60:340, 90:210] = True  # a trouser-like rectangle...
    truth[200:340, 140:160] = False  # ...with a gap between the legs
    photo = np.where(truth[..., None], np.array([40, 60, 150]) + rng.normal(0, 6, (h, w, 3)), floor)
    prepared = pp.prepare_photo(Image.fromarray(pp.to_uint8(photo)))
    assert prepared.decisions["background_removed"] and not prepared.decisions["plain_background"]
    mask = dict(prepared.steps)["item mask"] > 127
    small_truth = np.asarray(Image.fromarray(truth).resize(mask.shape[::-1], Image.Resampling.NEAREST))
    iou = (mask & small_truth).sum() / (mask | small_truth).sum()
    assert iou > 0.85
    assert "sharpened" not in dict(prepared.steps)  # a separated item's cut-out outline is not sharpened
    out = prepared.input
    assert bbox(out)[0] == 0 and bbox(out)[1] == 27  # the tall item spans the full height
    assert out[:, :3].max() < 30 and out[:, -3:].max() < 30  # background removed to black


def test_only_small_holes_of_the_item_mask_are_filled():
    mask = np.zeros((100, 100), bool)
    mask[10:90, 10:90] = True
    mask[20:23, 20:23] = False  # 9 pixels: a print the colour models called background (0.09 % of the frame)
    mask[40:80, 40:70] = False  # 1200 pixels: floor enclosed between legs touching at the hems (12 %)
    filled = pp.fill_small_holes(mask)
    assert filled[20:23, 20:23].all() and not filled[40:80, 40:70].any()
    assert filled.sum() == mask.sum() + 9


def test_segmenter_finds_the_item_in_a_simple_scene():
    photo = np.zeros((120, 90, 3), np.uint8)
    photo[...] = (200, 40, 40)  # red bed cover, slightly noisy
    photo = pp.to_uint8(photo + np.random.default_rng(0).normal(0, 10, photo.shape))
    photo[20:100, 25:65] = (230, 230, 230)
    mask = pp.segment_item(photo)
    assert abs(int(mask.sum()) - 80 * 40) < 0.1 * 80 * 40
    assert mask[20:100, 25:65].mean() > 0.95 and not mask[:15].any()


def test_flat_photo_is_reported_not_classified():
    prepared = pp.prepare_photo(Image.new("RGB", (300, 200), (128, 200, 90)))
    assert prepared.empty and prepared.warnings and not prepared.input.any()


@pytest.mark.parametrize("mode", ["I;16", "CMYK", "P", "LA", "RGBA", "1", "F"])
def test_odd_modes_give_a_sensible_input(mode):
    item = np.zeros((200, 200), np.uint8)
    item[20:180, 70:130] = 255  # a light bar on black
    base = Image.fromarray(255 - item)  # dark bar on white
    if mode == "I;16":
        img = Image.fromarray((255 - item).astype(np.uint16) * 257)
    elif mode == "F":
        img = Image.fromarray((255 - item).astype(np.float32) / 255.0)
    elif mode == "LA":
        img = Image.merge("LA", (base, Image.fromarray(np.where(item > 0, 255, 0).astype(np.uint8))))
    elif mode == "RGBA":
        img = Image.merge("RGBA", (base, base, base, Image.fromarray(np.where(item > 0, 255, 0).astype(np.uint8))))
    else:
        img = base.convert(mode)
    out = pp.prepare_photo(img).input
    top, bottom, left, right = bbox(out)
    assert (top, bottom) == (0, 27) and 9 <= left <= 10 and 17 <= right <= 18, (mode, bbox(out))


def test_bytes_entry_refuses_non_images_clearly():
    with pytest.raises(ImageError, match="not a PNG"):
        pp.prepare_photo_bytes(b"hello")
    assert issubclass(pp.PreprocessError, ImageError)


def test_load_for_model_passes_28x28_grey_through(tmp_path):
    item = hand_items()[2]
    path = tmp_path / "item.png"
    Image.fromarray(item).save(path)
    assert np.array_equal(pp.load_for_model(path).input, item)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(product_photo(item, np.random.default_rng(0)))
    assert correlation(pp.load_for_model(photo).input, item) > 0.85
    bad = tmp_path / "text.png"
    bad.write_text("not an image")
    with pytest.raises(pp.PreprocessError, match="text.png"):
        pp.load_for_model(bad)


# ----------------------------------------------------------------------------------------------------
# Drawings


def canvas(h: int = 280, w: int = 280, background=(0, 0, 0, 0)) -> np.ndarray:
    arr = np.zeros((h, w, 4), np.uint8)
    arr[...] = background
    return arr


@pytest.mark.parametrize("background,stroke", [
    ((0, 0, 0, 0), (0, 0, 0, 255)),  # transparent canvas, black strokes
    ((0, 0, 0, 0), (255, 0, 0, 255)),  # transparent canvas, red strokes
    ((255, 255, 255, 255), (0, 0, 0, 255)),  # dark on light
    ((0, 0, 0, 255), (255, 255, 255, 255)),  # light on dark
    ((250, 240, 220, 255), (20, 40, 200, 255)),  # blue on cream
])
def test_drawing_geometry_and_polarity(background, stroke):
    arr = canvas(background=background)
    arr[40:240, 120:160] = stroke  # a bar 200 tall, 40 wide, off-centre to the right
    prepared = pp.prepare_drawing(arr)
    out = prepared.input
    assert not prepared.empty and out.shape == (28, 28) and out.dtype == np.uint8
    top, bottom, left, right = bbox(out)
    assert (top, bottom) == (0, 27)  # longest edge scaled to 28
    assert right - left + 1 in (5, 6, 7)  # aspect kept: 40/200 * 28 = 5.6
    assert abs((left + right) / 2 - 13.5) <= 1  # centred
    assert out.max() == 255 and out[:, :8].max() == 0  # light strokes on black


def test_wide_drawing_is_scaled_by_its_longest_edge():
    arr = canvas(background=(255, 255, 255, 255))
    arr[100:150, 10:270] = (0, 0, 0, 255)
    top, bottom, left, right = bbox(pp.prepare_drawing(arr).input)
    assert (left, right) == (0, 27) and 4 <= bottom - top + 1 <= 7 and abs((top + bottom) / 2 - 13.5) <= 1


@pytest.mark.parametrize("background", [(0, 0, 0, 0), (255, 255, 255, 255), (0, 0, 0, 255)])
def test_empty_canvas_is_reported_not_classified(background):
    prepared = pp.prepare_drawing(canvas(background=background))
    assert prepared.empty and prepared.warnings == [pp.EMPTY_CANVAS_MESSAGE]
    assert prepared.input.shape == (28, 28) and not prepared.input.any()


def test_drawing_rejects_wrong_shapes():
    with pytest.raises(pp.PreprocessError):
        pp.prepare_drawing(np.zeros((10, 10), np.uint8))


# ----------------------------------------------------------------------------------------------------
# Round trip with the shipped model (the acceptance figure)


def _round_trip_run() -> Path | None:
    from fmnist.runs import DEFAULT_MODEL_DIR

    override = os.environ.get("FMNIST_TEST_RUN")  # lets a developer point the test at another run
    if override:
        return Path(override)
    return DEFAULT_MODEL_DIR if DEFAULT_MODEL_DIR.is_dir() else None


def round_trip_agreement(backend, originals: np.ndarray, rng: np.random.Generator) -> float:
    """Share of items whose predicted class on their product photo (through `prepare_photo_bytes`) is the
    class predicted on the 28x28 original; every 5th photo stored sideways with EXIF, every 5th an RGBA PNG."""
    inputs = []
    for n, item in enumerate(originals):
        data = product_photo(item, rng, exif_turn=n % 5 == 1, transparent=n % 5 == 3)
        inputs.append(pp.prepare_photo_bytes(data).input)
    before = backend.predict_proba(originals).argmax(1)
    after = backend.predict_proba(np.stack(inputs)).argmax(1)
    return float((before == after).mean())


@pytest.mark.slow
@pytest.mark.integration
def test_round_trip_prediction_matches_original(real_dataset):
    run = _round_trip_run()
    require(run is not None and (run / "manifest.json").is_file(),
            f"the shipped model ({run or 'assets/default-model'}; FMNIST_TEST_RUN=<run> to use another)")
    from fmnist.backends import get_backend

    backend = get_backend(run, "keras")
    rng = np.random.default_rng(2017)
    idx = rng.choice(len(real_dataset.x_test), 500, replace=False)
    agreement = round_trip_agreement(backend, real_dataset.x_test[idx], rng)
    print(f"round trip agreement on 500 test items: {agreement * 100:.1f}%")
    # The target. Measured 97.0% with the shipped model answering as it was evaluated (flip
    # averaging, chosen on held-out validation items: docs/photos.md); 96.8% without it. Deterministic
    # on one machine; one item is 0.2 points.
    assert agreement >= 0.97


def tune_on_training_items(n: int = 500, renderings: int = 3) -> list[float]:
    """The tuning harness: the same round trip on a fixed random subset of TRAINING items (the test items
    are kept for the acceptance test), rendered `renderings` times with different photo draws (margins,
    scale, tint, JPEG) so that choices are not made on one draw's luck. Settings in fmnist/preprocess.py
    were chosen with this; docs/photos.md has the table."""
    from fmnist.backends import get_backend
    from fmnist.data import load_fashion_mnist

    run = _round_trip_run()
    if run is None:
        raise SystemExit("no model: assets/default-model is missing (FMNIST_TEST_RUN=<run> to use another)")
    backend = get_backend(run, "keras")
    x_train = load_fashion_mnist(os.environ.get("FMNIST_DATA_DIR")).x_train
    rng = np.random.default_rng(1708)
    originals = x_train[rng.choice(len(x_train), n, replace=False)]
    return [round_trip_agreement(backend, originals, rng if r == 0 else np.random.default_rng(1000 + r))
            for r in range(renderings)]


def held_out_agreement(tta: bool | None = None, n: int = 600, draws: int = 2) -> list[float]:
    """The round trip on items of the run's own validation split (held out from its training, unlike
    the training-item harness above), `draws` photo renderings each: how flip averaging was chosen
    (docs/photos.md). tta: None = as the run says, False = the model alone."""
    import json

    from fmnist.backends import get_backend
    from fmnist.data import load_fashion_mnist, make_splits

    run = _round_trip_run()
    if run is None:
        raise SystemExit("no model: assets/default-model is missing (FMNIST_TEST_RUN=<run> to use another)")
    config = json.loads((Path(run) / "config.json").read_text())
    splits = make_splits(load_fashion_mnist(os.environ.get("FMNIST_DATA_DIR")), config["val_fraction"],
                         config["seed"], config["limit"])
    originals = splits.x_val[np.random.default_rng(77).choice(len(splits.x_val), n, replace=False)]
    backend = get_backend(run, "keras", tta=tta)
    return [round_trip_agreement(backend, originals, np.random.default_rng(500 + r)) for r in range(draws)]


if __name__ == "__main__":  # PYTHONPATH=. python tests/test_preprocess.py [validation]
    import sys

    def show(label: str, scores: list[float]) -> None:
        print(f"{label}, per rendering:", " ".join(f"{s * 100:.2f}%" for s in scores),
              f"mean {np.mean(scores) * 100:.2f}%")

    if sys.argv[1:] == ["validation"]:
        show("round trip on 600 validation items, the model alone", held_out_agreement(tta=False))
        show("round trip on 600 validation items, as the run answers", held_out_agreement())
    else:
        show("round trip agreement on 500 training items", tune_on_training_items())
