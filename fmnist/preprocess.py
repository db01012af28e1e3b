"""Photos and canvas drawings into Fashion-MNIST model inputs (28x28 uint8, light item on black).

Photos follow the recipe Zalando used to build Fashion-MNIST (Xiao et al. 2017, arXiv:1708.07747, sec. 2):
trim the edges close to the corner colour, resize the longest edge to 28, sharpen (Gaussian, radius 1),
pad the short edge to 28 centred, negate, 8-bit grey. Before it the photo is made regular (EXIF turn,
first frame, transparency on white, 16-bit/CMYK, early reduction, in `fmnist.images`). A photo whose
background is not plain first has its item separated from the background (`segment_item`: colour models
of border and centre refined a few rounds, then the largest central component with its holes filled).
The measurements behind every choice are in docs/photos.md.

Drawings (canvas strokes in any colour on any plain canvas) are cropped to the strokes, scaled like the
dataset (longest edge 28, aspect kept), centred, in the dataset's polarity.

Every step is a small function on numpy arrays; `prepare_*` return a `Prepared` with the model input, the
named intermediate images for a step-by-step view, the decisions taken and warnings for people.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from fmnist.images import ImageError, open_image

SIDE = 28
WORK_SIDE = 160  # photos are analysed at this longest side: ample for a 28-pixel result
TRIM_TOLERANCE = 0.05  # the recipe's "within 5% of the corner colour" (of the RGB cube's diagonal)
PLAIN_BORDER_SHARE = 0.85  # a background is plain when this share of the border matches the corner colour
SHARPEN_RADIUS = 1.0  # unsharp mask: the paper's Gaussian radius; amount measured in docs/photos.md
SHARPEN_PERCENT = 50
HOLE_SHARE = 0.005  # holes in a separated item's mask are filled up to this share of the frame
LOW_CONTRAST = 40  # grey levels between item and background below which a warning is given
EMPTY_CANVAS_MESSAGE = "The canvas is empty: draw an item first."
NOT_SINGLE_ITEM = "This does not look like a single item on a plain background; the result may be unreliable."


class PreprocessError(ImageError):
    """The file is not an image we accept, or it holds nothing to classify; the message says why."""


@dataclass
class Prepared:
    input: np.ndarray  # (28, 28) uint8, light item on black
    steps: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (name, uint8 grey or RGB image)
    decisions: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    empty: bool = False


# ----------------------------------------------------------------------------------------------------
# Small image helpers


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 grey (the weights Pillow's "L" conversion uses), float, same height and width."""
    rgb = np.asarray(rgb, dtype=np.float32)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Round and clip to 0..255 uint8."""
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def resize_array(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 grey or RGB array to (width, height) with Lanczos (antialiased when shrinking; it
    kept predictions closer to the originals than area averaging in the round trip, docs/photos.md)."""
    from PIL import Image

    return np.asarray(Image.fromarray(to_uint8(arr)).resize(size, Image.Resampling.LANCZOS))


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65) of a uint8 sRGB array: distances in it follow perceived colour differences."""
    c = np.asarray(rgb, dtype=np.float32) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]], np.float32)
    xyz = c @ m.T / np.array([0.9505, 1.0, 1.089], np.float32)
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def kmeans(points: np.ndarray, k: int, iterations: int = 12, seed: int = 0) -> np.ndarray:
    """Centres of k clusters of points (N, D) by k-means with k-means++ seeding (deterministic)."""
    rng = np.random.default_rng(seed)
    points = np.asarray(points, dtype=np.float32)
    k = max(1, min(k, len(points)))
    centres = [points[rng.integers(len(points))]]
    for _ in range(1, k):
        d = np.min(((points[:, None] - np.array(centres)[None]) ** 2).sum(-1), 1)
        if d.sum() <= 0:
            break
        centres.append(points[rng.choice(len(points), p=d / d.sum())])
    centres = np.array(centres)
    for _ in range(iterations):
        labels = ((points[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        for j in range(len(centres)):
            members = points[labels == j]
            if len(members):
                centres[j] = members.mean(0)
    return centres


def nearest_distance(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Distance from each point (..., D) to its nearest centre (K, D)."""
    d = ((points[..., None, :] - centres) ** 2).sum(-1)
    return np.sqrt(d.min(-1))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask, each pixel weighted towards the image
    centre (1 at the centre, 0.5 at the border) so that a large item beats a large background patch."""
    labels, count = ndimage.label(mask)  # the default structure connects the 4 neighbours
    if not count:
        return mask
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w]
    weight = 1.0 - 0.5 * np.maximum(np.abs(yy / (h - 1 or 1) - 0.5), np.abs(xx / (w - 1 or 1) - 0.5))
    scores = np.bincount(labels.ravel(), weights=weight.ravel())
    scores[0] = -1  # not the background
    return labels == int(scores.argmax())


def border_band(shape: tuple[int, int], width: int) -> np.ndarray:
    """Boolean mask of the outer `width` pixels of an image of this shape."""
    band = np.zeros(shape, bool)
    band[:width], band[-width:], band[:, :width], band[:, -width:] = True, True, True, True
    return band


# ----------------------------------------------------------------------------------------------------
# Photo steps


def reduce_large(img, max_side: int = WORK_SIDE * 4):
    """A Pillow image no larger than max_side on its longest edge (cheap reduction first)."""
    from PIL import Image

    img = img.copy()
    img.thumbnail((max_side, max_side), Image.Resampling.BOX, reducing_gap=2.0)
    return img


def composite_on_white(img) -> tuple[np.ndarray, bool]:
    """RGB uint8 array of the image, transparent parts composited onto white; and whether it had alpha."""
    from PIL import Image

    from fmnist.images import to_standard_mode

    img = to_standard_mode(img)
    if img.mode == "RGBA":
        alpha = np.asarray(img.getchannel("A"))
        if alpha.min() < 255:
            white = Image.new("RGBA", img.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(white, img).convert("RGB")), True
    return np.asarray(img.convert("RGB")), False


def working_copy(rgb: np.ndarray, side: int = WORK_SIDE) -> np.ndarray:
    """The photo at `side` pixels on its longest edge (never enlarged), for analysis."""
    h, w = rgb.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale >= 1.0:
        return rgb
    return resize_array(rgb, (max(1, round(w * scale)), max(1, round(h * scale))))


def corner_colour(rgb: np.ndarray) -> np.ndarray:
    """The background colour as the recipe sees it: median of the four corner pixels' 3x3 patches."""
    k = max(1, min(3, rgb.shape[0] // 4, rgb.shape[1] // 4))
    patches = [rgb[:k, :k], rgb[:k, -k:], rgb[-k:, :k], rgb[-k:, -k:]]
    return np.median(np.concatenate([p.reshape(-1, 3) for p in patches]), 0).astype(np.float32)


def colour_distance(rgb: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Euclidean RGB distance to a colour, as a fraction of the RGB cube's diagonal (0..1)."""
    return np.sqrt(((rgb.astype(np.float32) - colour) ** 2).sum(-1)) / (255.0 * np.sqrt(3.0))


def border_plainness(rgb: np.ndarray, colour: np.ndarray, tolerance: float = TRIM_TOLERANCE) -> float:
    """Share of the outer 2% border whose colour is within tolerance of the corner colour."""
    band = border_band(rgb.shape[:2], max(1, round(0.02 * max(rgb.shape[:2]))))
    return float((colour_distance(rgb, colour)[band] <= tolerance).mean())


def content_box(rgb: np.ndarray, colour: np.ndarray, tolerance: float = TRIM_TOLERANCE
                ) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the pixels farther than tolerance from the background colour."""
    far = colour_distance(rgb, colour) > tolerance
    rows, cols = np.flatnonzero(far.any(1)), np.flatnonzero(far.any(0))
    if not len(rows):
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def trim_edges(rgb: np.ndarray, colour: np.ndarray, tolerance: float = TRIM_TOLERANCE) -> np.ndarray:
    """Recipe step 2: cut the edges whose colour is within 5% of the corner (background) colour."""
    box = content_box(rgb, colour, tolerance)
    if box is None:
        return rgb
    top, bottom, left, right = box
    return rgb[top:bottom, left:right]


def resize_longest(rgb: np.ndarray, side: int = SIDE) -> np.ndarray:
    """Recipe step 3: the longest edge to `side` pixels, aspect ratio kept."""
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    return resize_array(rgb, (max(1, round(w * scale)), max(1, round(h * scale))))


def sharpen(rgb: np.ndarray, radius: float = SHARPEN_RADIUS, percent: int = SHARPEN_PERCENT) -> np.ndarray:
    """Recipe step 4: unsharp mask with a Gaussian of radius 1 (strongest along outlines); 50 % kept
    predictions closest to the originals over two models in the round trip on training items."""
    from PIL import Image, ImageFilter

    img = Image.fromarray(to_uint8(rgb))
    return np.asarray(img.filter(ImageFilter.UnsharpMask(radius=radius, percent=percent, threshold=0)))


def resize_flat_lay(rgb: np.ndarray, side: int = SIDE, width: int = 24, widest: float = 1.6) -> np.ndarray:
    """For separated home photos: a garment laid flat a little wider than tall (sleeves spread) is set
    to side x `width`, the upright proportions of dataset tops (28 tall, about 21 wide); narrower or much
    wider items (shoes, bags) are resized normally. Measured on the photo folder, docs/photos.md."""
    h, w = rgb.shape[:2]
    if 1.0 < w / h <= widest:
        return resize_array(rgb, (width, side))
    return resize_longest(rgb, side)


def centre_offsets(length: int, side: int = SIDE) -> int:
    """Where an item `length` pixels long starts when centred in `side`: Fashion-MNIST puts an odd spare
    pixel before the item (all 60000 training items: start = ceil((28 - size) / 2) for 99.8 % horizontally
    and 98.7 % vertically), so round up; rounding down moved a third of the items by one pixel away from
    where the model saw them in training (round-trip figures in docs/photos.md)."""
    return (side - length + 1) // 2


def pad_centred(rgb: np.ndarray, side: int = SIDE, fill: float | np.ndarray = 255) -> np.ndarray:
    """Recipe step 5: extend the short edge to `side` with the background colour, item centred; an odd
    spare pixel goes above / left of the item, as in the dataset (`centre_offsets`)."""
    h, w = rgb.shape[:2]
    out = np.empty((side, side) + rgb.shape[2:], np.uint8)
    out[...] = np.asarray(fill, dtype=np.float32).round().astype(np.uint8)
    top, left = centre_offsets(h, side), centre_offsets(w, side)
    out[top:top + h, left:left + w] = rgb
    return out


def negate(arr: np.ndarray) -> np.ndarray:
    """Recipe step 6: 255 minus every value (dark items become light on black)."""
    return 255 - np.asarray(arr, np.uint8)


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """Recipe step 7: 8-bit grey."""
    return to_uint8(luminance(rgb)) if rgb.ndim == 3 else np.asarray(rgb, np.uint8)


def stretch_levels(grey: np.ndarray, black: float = 0.0) -> np.ndarray:
    """Levels: `black` and below to 0, the brightest pixel to 255 (nearly every dataset image spans
    0..255: the 1st percentile of per-image maxima in the test set is 254)."""
    g = grey.astype(np.float32)
    top = float(np.percentile(g, 99.5))
    if top - black < 1:
        return np.zeros_like(grey, np.uint8)
    return to_uint8((g - black) / (top - black) * 255.0)


# ----------------------------------------------------------------------------------------------------
# Background separation (for photos whose background is not plain)


def fill_small_holes(mask: np.ndarray, share: float = HOLE_SHARE) -> np.ndarray:
    """The mask with its enclosed holes filled when each is under `share` of the frame (a print or a
    shadow inside the item that the colour models called background); larger enclosed regions stay
    background: the floor between trouser legs touching at the hems, the inside of a bag's handle."""
    filled = ndimage.binary_fill_holes(mask)
    holes, count = ndimage.label(filled & ~mask)
    if not count:
        return filled
    sizes = np.bincount(holes.ravel())
    large = np.flatnonzero(sizes > share * mask.size)
    return filled & ~np.isin(holes, large[large > 0])


def segment_item(rgb: np.ndarray, rounds: int = 2, k: int = 5) -> np.ndarray:
    """Boolean mask of the item: colour models (k-means in Lab) of the border band (background) and
    of the centre (item) classify each pixel; the decision is smoothed, reduced to the largest central
    component with its small holes filled, and the models are re-estimated from it for a few rounds."""
    h, w = rgb.shape[:2]
    lab = rgb_to_lab(rgb)
    band = border_band((h, w), max(2, round(0.06 * max(h, w))))
    yy, xx = np.mgrid[0:h, 0:w]
    centre = ((yy / h - 0.5) / 0.3) ** 2 + ((xx / w - 0.5) / 0.3) ** 2 <= 1.0
    bg_seed, fg_seed = band, centre
    mask = centre
    rng = np.random.default_rng(0)
    for _ in range(rounds):
        bg_pts, fg_pts = lab[bg_seed], lab[fg_seed]
        bg_pts = bg_pts[rng.permutation(len(bg_pts))[:3000]]
        fg_pts = fg_pts[rng.permutation(len(fg_pts))[:3000]]
        if len(bg_pts) < k or len(fg_pts) < k:
            break
        d_bg = nearest_distance(lab, kmeans(bg_pts, k))
        d_fg = nearest_distance(lab, kmeans(fg_pts, k))
        size = 2 * max(1, round(0.015 * max(h, w))) + 1
        score = ndimage.uniform_filter((d_bg - d_fg).astype(np.float64), size, mode="nearest").astype(np.float32)
        new = fill_small_holes(largest_component(score > 0))
        if new.sum() < 0.01 * h * w:
            break
        mask = new
        bg_seed = ~mask
        fg_seed = mask & (score > np.percentile(score[mask], 25))
    return mask


def mask_looks_like_one_item(mask: np.ndarray) -> bool:
    """Plausible single item: covers 5-92% of the frame and does not hug the whole border."""
    share = mask.mean()
    edge = border_band(mask.shape, 1)
    return 0.05 <= share <= 0.92 and mask[edge].mean() < 0.6


def item_contrast(rgb: np.ndarray, mask: np.ndarray) -> float:
    """Difference in mean grey between item and background (0..255)."""
    grey = luminance(rgb)
    if mask.all() or not mask.any():
        return 0.0
    return float(abs(grey[mask].mean() - grey[~mask].mean()))


# ----------------------------------------------------------------------------------------------------
# Entries


def recipe(rgb: np.ndarray, background: np.ndarray, steps: list | None = None, flat_lay: bool = False
           ) -> np.ndarray:
    """The Fashion-MNIST recipe from trimming on, for a dark item on a light background colour.

    flat_lay: the item was separated from a home photo's background (`prepare_photo`): it gets the
    flat-lay proportions and is not sharpened (its cut-out outline is already hard, and the unsharp
    mask's overshoot along it made home photos less recognisable: docs/photos.md)."""
    steps = steps if steps is not None else []
    trimmed = trim_edges(rgb, background)
    steps.append(("trimmed", trimmed))
    resized = resize_flat_lay(trimmed) if flat_lay else resize_longest(trimmed)
    steps.append(("resized", resized))
    sharp = resized
    if not flat_lay:
        sharp = sharpen(resized)
        steps.append(("sharpened", sharp))
    padded = pad_centred(sharp, fill=background)
    steps.append(("padded", padded))
    grey = to_grey(negate(padded))
    steps.append(("negated", grey))
    black = float(255 - luminance(background)) + 255 * TRIM_TOLERANCE / 2
    out = stretch_levels(grey, black=black if black > 255 * TRIM_TOLERANCE else 0.0)
    steps.append(("levels", out))
    return out


def prepare_photo(image, *, separate: bool = True) -> Prepared:
    """A photo (Pillow image, any mode) as a model input, with steps, decisions and warnings.

    Plain backgrounds go straight through the dataset's recipe (inverted first when the background is
    dark). Other backgrounds are separated (`segment_item`; separate=False turns that off) and the
    item is put on white before the recipe."""
    reduced = reduce_large(image)
    rgb, had_alpha = composite_on_white(reduced)
    steps: list[tuple[str, np.ndarray]] = [("original", rgb)]
    work = working_copy(rgb)
    corner = corner_colour(work)
    plainness = border_plainness(work, corner)
    decisions: dict = {"transparency_on_white": had_alpha, "background_colour": [round(float(v)) for v in corner],
                       "plain_background_share": round(plainness, 3)}
    warnings: list[str] = []
    plain = plainness >= PLAIN_BORDER_SHARE or not separate
    decisions["plain_background"] = plainness >= PLAIN_BORDER_SHARE
    inverted = False
    if plain:
        if luminance(corner) < 128:  # a light item on a dark background: flip so the recipe's negation
            work, corner, inverted = 255 - work, 255 - corner, True  # makes the background black again
            steps.append(("inverted (dark background)", work))
        decisions["background_removed"] = False
        item = work
        mask = colour_distance(work, corner) > TRIM_TOLERANCE
        contrast = item_contrast(work, mask)
    else:
        mask = segment_item(work)
        steps.append(("item mask", to_uint8(mask * 255.0)))
        contrast = item_contrast(work, mask)
        if not mask_looks_like_one_item(mask):
            warnings.append(NOT_SINGLE_ITEM)
        item = np.where(mask[..., None], work, np.uint8(255))
        corner = np.array([255.0, 255.0, 255.0], np.float32)
        decisions["background_removed"] = True
        decisions["item_share"] = round(float(mask.mean()), 3)
        steps.append(("background removed", item))
    decisions["inverted"] = inverted
    decisions["negated"] = True
    decisions["contrast"] = round(contrast, 1)
    decisions["low_contrast"] = contrast < LOW_CONTRAST
    if contrast < LOW_CONTRAST:
        warnings.append("The item has little contrast with its background; the result may be unreliable.")
    if content_box(item, corner) is None:
        warnings.append("No item found: the photo is a single flat colour.")
        return Prepared(np.zeros((SIDE, SIDE), np.uint8), steps, decisions, warnings, empty=True)
    out = recipe(item, corner, steps, flat_lay=decisions["background_removed"])
    return Prepared(out, steps, decisions, warnings)


def prepare_photo_bytes(data: bytes) -> Prepared:
    """`open_image` then `prepare_photo`; ImageError (with a clear message) for anything unreadable."""
    return prepare_photo(open_image(data))


def prepare_drawing(rgba: np.ndarray) -> Prepared:
    """Canvas image data (H, W, 4 uint8; strokes of any colour, light on dark or dark on light) as a model
    input: strokes cropped, longest edge scaled to 28 with aspect kept, centred, light on black."""
    arr = np.asarray(rgba)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise PreprocessError(f"expected canvas data of shape (H, W, 4), got {arr.shape}")
    arr = arr.astype(np.float32)
    if arr.shape[2] == 4:
        alpha = arr[..., 3:] / 255.0  # transparent canvas counts as the background colour below
        opaque = alpha[..., 0] > 0.5
    else:
        alpha, opaque = np.ones(arr.shape[:2] + (1,), np.float32), np.ones(arr.shape[:2], bool)
    rgb = arr[..., :3]
    steps: list[tuple[str, np.ndarray]] = [("canvas", to_uint8(rgb * alpha + 255 * (1 - alpha)))]
    decisions: dict = {}
    transparent_bg = arr.shape[2] == 4 and (~opaque).mean() > 0.5
    if transparent_bg:  # typical canvas: strokes opaque, the rest transparent
        ink = alpha[..., 0] * 255.0
        decisions["background"] = "transparent"
        decisions["inverted"] = False
    else:
        grey = luminance(rgb)
        background = float(np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])))
        ink = np.abs(grey - background)
        decisions["background"] = "light" if background >= 128 else "dark"
        decisions["inverted"] = background >= 128  # dark strokes on light become light on black
    strokes = ink > 255 * 0.1
    if strokes.sum() < 3:
        empty = Prepared(np.zeros((SIDE, SIDE), np.uint8), steps, decisions, [EMPTY_CANVAS_MESSAGE], empty=True)
        return empty
    ink_img = to_uint8(np.where(strokes, np.maximum(ink, 255 * 0.1), ink))
    steps.append(("strokes, light on black", ink_img))
    rows, cols = np.flatnonzero(strokes.any(1)), np.flatnonzero(strokes.any(0))
    cropped = ink_img[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    steps.append(("cropped", cropped))
    resized = resize_longest(cropped)
    steps.append(("resized", resized))
    padded = pad_centred(resized, fill=0)
    out = stretch_levels(padded)
    steps.append(("centred", out))
    decisions["stroke_share"] = round(float(strokes.mean()), 4)
    return Prepared(out, steps, decisions, [])


def load_for_model(path: Path) -> Prepared:
    """An image file as a model input: 28x28 grey files unchanged, anything else through the photo
    pipeline. PreprocessError (with a clear message) for files that are not accepted images."""
    from fmnist.images import to_standard_mode

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PreprocessError(f"cannot read {path.name}: {exc.strerror or exc}")
    try:
        img = open_image(data)
    except ImageError as exc:
        raise PreprocessError(f"{path.name}: {exc}")
    if img.size == (SIDE, SIDE) and img.mode == "L":
        grey = np.asarray(to_standard_mode(img).convert("L"), np.uint8)
        return Prepared(grey.copy(), [("original", grey)], {"passed_through": True}, [])
    return prepare_photo(img)
