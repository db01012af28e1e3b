"""Training-time augmentation of image batches with stateless, seeded TensorFlow ops.

Every function takes a float32 batch (N, 28, 28, 1) of raw pixels (0..255) and seed pairs for
`tf.random.stateless_*` (int tensors of shape (2,)), so the same seeds give the same batch whatever
ran before in the process. fmnist.training.make_train_dataset calls `augment_batch` per batch.

Two families:
- geometry the dataset already varies in: mirror (`flip`), zoom about the centre (`zoom`), shift.
- `photo`: what a real photo's trip through fmnist.preprocess does to an item (docs/photos.md):
  uneven lighting and a different tone curve (levels are stretched, gamma differs), softer or
  sharper edges (resampling and the recipe's unsharp mask), a small tilt, leftover background
  specks from the separation, sensor noise. `erase`: random erasing (Zhong et al. 2017), a
  rectangle of an item hidden, as a fold, a hand or a bad mask does.
TensorFlow is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import math

CENTRE = 13.5  # the image centre in pixel coordinates (28 x 28)


def _uniform(seed, shape, low, high, dtype=None):
    import tensorflow as tf

    return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high,
                                       dtype=dtype or tf.float32)


def _fold_seed(seed, salt: int):
    """A new seed pair derived from `seed`: one seed pair feeds several independent draws."""
    import tensorflow as tf

    return tf.random.experimental.stateless_fold_in(seed, salt)


def flip(images, seed):
    """Mirror each image left-right with probability 1/2."""
    import tensorflow as tf

    b = tf.shape(images)[0]
    coin = _uniform(seed, [b, 1, 1, 1], 0.0, 1.0) < 0.5
    return tf.where(coin, tf.reverse(images, axis=[2]), images)


def _affine(images, inv_scale, angle):
    """Resample each image by zoom 1/inv_scale and rotation `angle` (radians) about the centre,
    bilinear, black outside."""
    import tensorflow as tf

    # output pixel (x, y) reads input pixel A @ (x - c, y - c) + c, A = inv_scale * rotation(-angle)
    cos, sin = tf.cos(angle) * inv_scale, tf.sin(angle) * inv_scale
    zeros = tf.zeros_like(cos)
    a0, a1, a2 = cos, -sin, CENTRE - cos * CENTRE + sin * CENTRE
    b0, b1, b2 = sin, cos, CENTRE - sin * CENTRE - cos * CENTRE
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=[28, 28], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")


def zoom(images, seed, scale: float):
    """Zoom each image about the centre by its own factor in [1 - scale, 1 + scale] (bilinear):
    photos reach the model a fraction of a pixel larger or smaller and softer than dataset items."""
    import tensorflow as tf

    b = tf.shape(images)[0]
    factor = _uniform(seed, [b], 1.0 - scale, 1.0 + scale)
    return _affine(images, 1.0 / factor, tf.zeros_like(factor))


def shift(images, seed_y, seed_x, pixels: int):
    """Translate each image by its own whole-pixel offset in [-pixels, pixels] each way (zeros in)."""
    import tensorflow as tf

    b = tf.shape(images)[0]
    size = 28 + 2 * pixels
    padded = tf.pad(images, [[0, 0], [pixels, pixels], [pixels, pixels], [0, 0]])
    # one random crop offset per image, gathered in a single vectorised op
    dy = _uniform(seed_y, [b], 0, 2 * pixels + 1, tf.int32)
    dx = _uniform(seed_x, [b], 0, 2 * pixels + 1, tf.int32)
    rows = dy[:, None] + tf.range(28)[None, :]
    cols = dx[:, None] + tf.range(28)[None, :]
    flat = tf.reshape(padded, [b, size * size])
    index = rows[:, :, None] * size + cols[:, None, :]
    return tf.reshape(tf.gather(flat, tf.reshape(index, [b, -1]), batch_dims=1), [b, 28, 28, 1])


def _blur(images):
    """3x3 Gaussian blur (sigma ~0.85), edges replicated so a border item does not darken."""
    import tensorflow as tf

    k1 = tf.constant([0.25, 0.5, 0.25])
    kernel = tf.reshape(k1[:, None] * k1[None, :], [3, 3, 1, 1])
    padded = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    return tf.nn.conv2d(padded, kernel, strides=1, padding="VALID")


def photo(images, seed, strength: float):
    """A photo's trip through the pipeline, at `strength` (0 = unchanged, 1 = the full ranges):

    - tilt: rotation up to ±10° x strength about the centre;
    - tone: gamma exp(±0.5 x strength), then lighting across the item (a linear ramp, up to
      ±30 % x strength at the edges), then levels re-stretched so the brightest pixel is where it
      was (the pipeline maps the brightest pixel to 255);
    - edges: unsharp mask with amount in [-0.8, 1.2] x strength (negative: softer);
    - specks: with probability 0.5 x strength, up to 3 % of background pixels set to 30-120;
    - noise: Gaussian, sigma up to 6 x strength grey levels.
    Output clipped to 0..255.
    """
    import tensorflow as tf

    if strength <= 0:
        return images
    s = float(strength)
    b = tf.shape(images)[0]
    seeds = [_fold_seed(seed, i) for i in range(10)]
    peak = tf.reduce_max(images, axis=[1, 2, 3], keepdims=True)

    angle = _uniform(seeds[0], [b], -1.0, 1.0) * (math.radians(10.0) * s)
    images = _affine(images, tf.ones_like(angle), angle)

    gamma = tf.exp(_uniform(seeds[1], [b, 1, 1, 1], -0.5 * s, 0.5 * s))
    images = 255.0 * tf.pow(tf.clip_by_value(images / 255.0, 0.0, 1.0), gamma)
    coords = (tf.range(28, dtype=tf.float32) - CENTRE) / CENTRE
    ramp_y = _uniform(seeds[2], [b, 1, 1, 1], -0.3 * s, 0.3 * s) * coords[None, :, None, None]
    ramp_x = _uniform(seeds[3], [b, 1, 1, 1], -0.3 * s, 0.3 * s) * coords[None, None, :, None]
    images = images * (1.0 + ramp_y + ramp_x)
    images = images * peak / tf.maximum(tf.reduce_max(images, axis=[1, 2, 3], keepdims=True), 1e-3)

    amount = _uniform(seeds[4], [b, 1, 1, 1], -0.8 * s, 1.2 * s)
    images = images + amount * (images - _blur(images))

    background = images < 8.0
    has_specks = _uniform(seeds[5], [b, 1, 1, 1], 0.0, 1.0) < 0.5 * s
    density = _uniform(seeds[6], [b, 1, 1, 1], 0.0, 0.03)
    speck = (_uniform(seeds[7], tf.shape(images), 0.0, 1.0) < density) & background & has_specks
    images = tf.where(speck, _uniform(seeds[8], tf.shape(images), 30.0, 120.0), images)

    sigma = _uniform(seeds[9], [b, 1, 1, 1], 0.0, 6.0 * s)
    images = images + sigma * tf.random.stateless_normal(tf.shape(images), seed=_fold_seed(seed, 10))
    return tf.clip_by_value(images, 0.0, 255.0)


def erase(images, seed, probability: float):
    """Random erasing: with `probability`, one rectangle per image (2-20 % of the area, aspect
    0.3-3.3) set to black (the background)."""
    import tensorflow as tf

    if probability <= 0:
        return images
    b = tf.shape(images)[0]
    seeds = [_fold_seed(seed, i) for i in range(5)]
    area = _uniform(seeds[0], [b], 0.02, 0.20) * 784.0
    aspect = tf.exp(_uniform(seeds[1], [b], math.log(0.3), math.log(1 / 0.3)))
    h = tf.clip_by_value(tf.sqrt(area * aspect), 1.0, 28.0)
    w = tf.clip_by_value(tf.sqrt(area / aspect), 1.0, 28.0)
    top = _uniform(seeds[2], [b], 0.0, 1.0) * (28.0 - h)
    left = _uniform(seeds[3], [b], 0.0, 1.0) * (28.0 - w)
    on = _uniform(seeds[4], [b], 0.0, 1.0) < probability
    grid = tf.range(28, dtype=tf.float32)
    inside_y = (grid[None, :] >= top[:, None]) & (grid[None, :] < (top + h)[:, None])
    inside_x = (grid[None, :] >= left[:, None]) & (grid[None, :] < (left + w)[:, None])
    box = inside_y[:, :, None] & inside_x[:, None, :] & on[:, None, None]
    return tf.where(box[..., None], tf.zeros_like(images), images)


def augment_batch(images, seeds, extra_seeds, *, flip_images: bool = False, scale: float = 0.0,
                  shift_pixels: int = 0, photo_strength: float = 0.0, erase_probability: float = 0.0):
    """The training augmentations in their fixed order: flip, zoom, shift, photo, erase.

    seeds: (4, 2) seed pairs for flip, shift y, shift x and zoom (the order earlier runs used, so
    their augmentation, and so their training, is unchanged); extra_seeds: (2, 2) for photo and erase.
    """
    if flip_images:
        images = flip(images, seeds[0])
    if scale:
        images = zoom(images, seeds[3], scale)
    if shift_pixels:
        images = shift(images, seeds[1], seeds[2], shift_pixels)
    if photo_strength:
        images = photo(images, extra_seeds[0], photo_strength)
    if erase_probability:
        images = erase(images, extra_seeds[1], erase_probability)
    return images
