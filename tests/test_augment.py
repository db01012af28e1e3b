"""fmnist.augment: each augmentation does what it says, stays in range and repeats with its seeds."""

import numpy as np
import pytest

from fmnist import augment
from fmnist.training import TrainConfig, make_train_dataset
from tests.prereq import require_module

tf = require_module("tensorflow")


def _square_batch(n: int = 64, value: float = 200.0) -> "tf.Tensor":
    x = np.zeros((n, 28, 28, 1), np.float32)
    x[:, 8:20, 10:18] = value  # a centred 12x8 item on black
    return tf.constant(x)


def _seed(a: int, b: int = 0):
    return tf.constant([a, b], tf.int64)


def test_photo_strength_zero_is_the_identity_and_full_strength_stays_in_range():
    images = _square_batch()
    assert np.array_equal(augment.photo(images, _seed(1), 0.0).numpy(), images.numpy())
    out = augment.photo(images, _seed(1), 1.0).numpy()
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0
    # each image gets its own changes: no two outputs are the same
    flat = out.reshape(len(out), -1)
    assert len({row.tobytes() for row in flat}) == len(out)


def test_photo_repeats_with_its_seed_and_changes_with_another():
    images = _square_batch(16)
    a = augment.photo(images, _seed(5), 0.7).numpy()
    b = augment.photo(images, _seed(5), 0.7).numpy()
    c = augment.photo(images, _seed(6), 0.7).numpy()
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_photo_keeps_the_item_where_it_was_and_about_as_bright():
    """A photo-like change is not a different picture: the item stays put and its brightest pixel
    stays near the original's (the pipeline stretches levels to the same top)."""
    images = _square_batch(64)
    out = augment.photo(images, _seed(2), 1.0).numpy()[..., 0]
    ys, xs = np.mgrid[0:28, 0:28]
    mass = out.sum(axis=(1, 2))
    centre_y = (out * ys).sum(axis=(1, 2)) / mass
    centre_x = (out * xs).sum(axis=(1, 2)) / mass
    assert np.abs(centre_y - 13.5).max() < 1.5 and np.abs(centre_x - 13.5).max() < 1.5
    inside = out[:, 10:18, 12:16]  # the item's core, away from tilted and softened edges
    assert np.median(inside) > 120
    assert np.percentile(out.max(axis=(1, 2)), 10) > 180


def test_photo_tilt_turns_a_bar_by_at_most_ten_degrees():
    x = np.zeros((32, 28, 28, 1), np.float32)
    x[:, 4:24, 13:15] = 255.0  # a vertical bar
    out = augment.photo(tf.constant(x), _seed(3), 1.0).numpy()[..., 0]
    ys, xs = np.mgrid[0:28, 0:28]
    angles = []
    for image in out:
        w = np.where(image > 100, image, 0.0)  # the bar, not specks or noise
        my, mx = (w * ys).sum() / w.sum(), (w * xs).sum() / w.sum()
        cov_xy = (w * (xs - mx) * (ys - my)).sum()
        cov_yy = (w * (ys - my) ** 2).sum()
        angles.append(np.degrees(np.arctan2(cov_xy, cov_yy)))
    angles = np.abs(angles)
    assert angles.max() < 12.0 and angles.max() > 3.0  # tilted, by up to the stated range


def test_erase_blanks_one_rectangle_per_chosen_image():
    images = tf.fill([200, 28, 28, 1], 100.0)
    out = augment.erase(images, _seed(4), 0.5).numpy()[..., 0]
    erased = (out == 0).sum(axis=(1, 2))
    chosen = erased > 0
    assert 0.35 < chosen.mean() < 0.65  # about the probability
    assert (erased[chosen] >= 1).all() and erased.max() <= 0.25 * 784
    assert set(np.unique(out)) <= {0.0, 100.0}
    for image in out[chosen]:  # the zeros form one axis-aligned rectangle
        rows, cols = np.nonzero(image == 0)
        box = image[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert (box == 0).all()
    assert np.array_equal(augment.erase(images, _seed(4), 0.0).numpy(), images.numpy())


@pytest.mark.slow
def test_training_pipeline_applies_photo_and_erase_only_when_asked():
    x = np.zeros((64, 28, 28), np.uint8)
    x[:, 8:20, 10:18] = 200
    y = np.zeros(64, np.int64)
    plain = next(iter(make_train_dataset(x, y, TrainConfig(batch_size=64))))[0].numpy()
    assert np.array_equal(plain[..., 0], x.astype(np.float32))
    config = TrainConfig(batch_size=64, augment_photo=1.0, augment_erase=1.0, seed=3)
    first = next(iter(make_train_dataset(x, y, config)))[0].numpy()
    again = next(iter(make_train_dataset(x, y, config)))[0].numpy()
    assert np.array_equal(first, again)  # seeded
    core = first[:, 10:18, 12:16, 0]  # the item's core: only an erased rectangle makes it black
    assert (core == 0).any(axis=(1, 2)).sum() >= 8 and (plain[:, 10:18, 12:16] > 0).all()
    assert first.min() >= 0 and first.max() <= 255


def test_earlier_augmentations_are_unchanged_by_the_new_seed_stream():
    """Flip, zoom and shift draw from the same seeds as before the photo options existed, so a run of
    an older config trains exactly as it did: the zoom and flip of the first batch match the functions
    called with the first stream's seeds."""
    x = np.zeros((32, 28, 28), np.uint8)
    x[:, 9:19, 5:12] = 255
    y = np.arange(32) % 10
    config = TrainConfig(batch_size=32, augment_flip=True, augment_scale=0.2, seed=11)
    batch = next(iter(make_train_dataset(x, y, config)))[0].numpy()
    seeds = next(iter(tf.data.Dataset.random(seed=11, rerandomize_each_iteration=True).batch(8)))
    seeds = tf.reshape(seeds, [4, 2])
    expected = augment.zoom(augment.flip(tf.constant(x[..., None].astype(np.float32)), seeds[0]), seeds[3], 0.2)
    assert np.allclose(batch, expected.numpy(), atol=1e-4)


@pytest.mark.parametrize("field", ["augment_photo", "augment_erase"])
def test_new_fields_are_bounded_and_default_off(field):
    assert getattr(TrainConfig(), field) == 0.0
    with pytest.raises(ValueError, match=f"{field} must be between"):
        TrainConfig(**{field: 1.5}).validate()
    assert TrainConfig.from_dict({k: v for k, v in TrainConfig().to_dict().items()
                                  if k not in ("augment_photo", "augment_erase")}).augment_photo == 0.0
