"""Inputs for developing and fitting the unfamiliar-input detector (fmnist.trust, bench explain):
digits drawn the way a user draws on the canvas, noise and plain colours, generated here; and the
development photo folders beside the checkout (`../shared/data`: hats, home photos, catalogue photos),
read where they exist and never copied into the project. Every image goes through the app's own
pipeline (`fmnist.preprocess`), so the detector sees what the model sees.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# development photo folders under the photos directory, by side: things that are no Fashion-MNIST class,
# and real photos of the ten classes
UNFAMILIAR_FOLDERS = {"hats": "unfamiliar-photos"}
FAMILIAR_FOLDERS = {"clothing_photos": "clothing-photos", "product_photos": "product-photos"}
FONTS_DIR = Path("/usr/share/fonts/truetype")  # Debian's fonts (fonts-dejavu-core): digits drawn and printed


def _through_pipeline(sources, prepare) -> np.ndarray:
    """(N, 28, 28) uint8 model inputs of what `prepare` makes of each source; sources the pipeline
    refuses or finds empty are left out."""
    from fmnist.preprocess import PreprocessError

    out = []
    for source in sources:
        try:
            prepared = prepare(source)
        except PreprocessError:
            continue
        if not prepared.empty:
            out.append(prepared.input)
    return np.stack(out) if out else np.zeros((0, 28, 28), np.uint8)


def photos_dir(path: str | Path | None = None) -> Path:
    """The folder holding the development photo folders: the argument, then FMNIST_PHOTOS_DIR, then
    ../shared/data beside the checkout."""
    return Path(path or os.environ.get("FMNIST_PHOTOS_DIR") or SHARED_DATA)


def image_files(folder: Path) -> list[Path]:
    """Every image file below `folder`, sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)


def photo_inputs(folder: Path) -> np.ndarray:
    """Model inputs (N, 28, 28) uint8 of every photo below `folder`, through the app's photo pipeline;
    files the pipeline refuses are left out."""
    from fmnist.preprocess import load_for_model

    return _through_pipeline(image_files(folder), load_for_model)


def drawn_digits(seed: int = 0) -> np.ndarray:
    """Digits as a user would draw them on the canvas, through the app's drawing pipeline: scikit-learn's
    1,797 handwritten digits (8x8, scaled up) and 0-9 rendered in every DejaVu font found."""
    from PIL import Image, ImageDraw, ImageFont
    from sklearn.datasets import load_digits

    from fmnist.preprocess import prepare_drawing

    canvases = []
    for digit in load_digits().images:  # 0..16 ink on white
        ink = np.asarray(Image.fromarray((digit * 255 / 16).astype(np.uint8)).resize((96, 96), Image.BILINEAR))
        canvases.append(255 - ink)
    for font_path in sorted(FONTS_DIR.rglob("*.ttf")):
        font = ImageFont.truetype(str(font_path), 120)
        for d in "0123456789":
            canvas = Image.new("L", (200, 200), 255)
            ImageDraw.Draw(canvas).text((40, 10), d, fill=0, font=font)
            canvases.append(np.asarray(canvas))
    return np.stack([prepare_drawing(np.repeat(c[..., None], 3, axis=2)).input for c in canvases])


def noise_and_plain(n: int = 200, seed: int = 0) -> np.ndarray:
    """Uniform noise, blurred noise and plain grey levels: inputs that are no garment at all."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, size=(n, 28, 28))
    blurred = np.stack([gaussian_filter(rng.uniform(0, 255, (28, 28)), 2.0) for _ in range(n)])
    blurred = (blurred - blurred.min(axis=(1, 2), keepdims=True)) * 255 / np.ptp(blurred, axis=(1, 2), keepdims=True)
    plain = np.repeat(np.linspace(20, 255, 32)[:, None, None], 28, axis=1).repeat(28, axis=2)
    return np.concatenate([noise, blurred, plain]).astype(np.uint8)


def noise_photos(n: int = 90, seed: int = 0) -> np.ndarray:
    """Noise uploaded as a photo, through the app's photo pipeline (`prepare_photo`): grey, colour and
    blurred colour noise at 96-224 pixels. The 28x28 noise above never meets the background separation
    that turns an upload of noise into a textured blob."""
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    from fmnist.preprocess import prepare_photo

    rng = np.random.default_rng(seed)

    def photo(i: int):
        side = int(rng.integers(96, 225))
        if i % 3 == 0:
            pixels = np.repeat(rng.integers(0, 256, (side, side, 1)), 3, axis=2)
        elif i % 3 == 1:
            pixels = rng.integers(0, 256, (side, side, 3))
        else:
            pixels = gaussian_filter(rng.uniform(0, 255, (side, side, 3)), (3.0, 3.0, 0))
            pixels = (pixels - pixels.min()) * 255 / max(np.ptp(pixels), 1e-6)
        return Image.fromarray(pixels.astype(np.uint8))

    return _through_pipeline((photo(i) for i in range(n)), prepare_photo)


def digit_photos(n: int = 120, seed: int = 0, held_out: tuple[str, ...] = ("DejaVuSans.ttf",)) -> np.ndarray:
    """Printed digits photographed on a sheet, through the app's photo pipeline: 0-9 in the DejaVu fonts
    found (except `held_out`: the font the app's browser test prints its digit in stays unseen), at
    random sizes and places, dark ink on a light, slightly tinted sheet."""
    from PIL import Image, ImageDraw, ImageFont

    from fmnist.preprocess import prepare_photo

    fonts = [f for f in sorted(FONTS_DIR.rglob("*.ttf")) if f.name not in held_out]
    rng = np.random.default_rng(seed)

    def photo(i: int):
        font = ImageFont.truetype(str(fonts[i % len(fonts)]), int(rng.integers(120, 240)))
        paper = tuple(int(v) for v in rng.integers(215, 256, 3))
        ink = tuple(int(v) for v in rng.integers(0, 70, 3))
        sheet = Image.new("RGB", (int(rng.integers(300, 480)), int(rng.integers(260, 400))), paper)
        ImageDraw.Draw(sheet).text((int(rng.integers(20, 140)), int(rng.integers(0, 60))), str(i % 10),
                                   fill=ink, font=font)
        return sheet

    return _through_pipeline((photo(i) for i in range(n if fonts else 0)), prepare_photo)


def development_sets(folder: str | Path | None = None, photos: bool = True,
                     progress=lambda text: None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(familiar, unfamiliar) model inputs by set name: drawn and printed digits and noise always
    (generated); with `photos`, each development photo folder found under `photos_dir(folder)`
    (UNFAMILIAR_FOLDERS, FAMILIAR_FOLDERS; about 75 s for all 587 photos)."""
    progress("drawn and printed digits, noise and plain colours")
    unfamiliar = {"digits": drawn_digits(), "digit_photos": digit_photos(), "noise": noise_and_plain(),
                  "noise_photos": noise_photos()}
    familiar: dict[str, np.ndarray] = {}
    if photos:
        root = photos_dir(folder)
        for side, folders in ((unfamiliar, UNFAMILIAR_FOLDERS), (familiar, FAMILIAR_FOLDERS)):
            for name, sub in folders.items():
                if (root / sub).is_dir():
                    progress(f"photos in {root / sub}")
                    found = photo_inputs(root / sub)
                    if len(found):
                        side[name] = found
    return familiar, unfamiliar
