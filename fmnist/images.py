"""Opening untrusted image bytes safely: one entry, `open_image(data)`.

Formats are sniffed from the bytes (PNG, JPEG, WebP, GIF first frame); the file name is never trusted
and never used in a path. The pixel count is checked from the header before any pixel is decoded, and a
`DecompressionBombWarning` is an error. Whatever comes in (16-bit, CMYK, palette with transparency,
an EXIF rotation, an animation) goes out as a decoded RGB, RGBA or L image, or as an `ImageError`
with a message a person can act on.
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np

DEFAULT_MAX_PIXELS = 50_000_000  # a 48-megapixel phone photo fits; anything bigger is refused unread
MAX_BYTES = 50 * 1024 * 1024
MAX_ASPECT = 25.0  # longest side / shortest side; thinner strips are not photos of an item
WORKING_SIDE = 2048  # JPEGs larger than this are decoded at a reduced scale (draft mode)

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
)
ACCEPTED = "PNG, JPEG, WebP or GIF"


class ImageError(Exception):
    """The bytes are not an image we accept; the message says why, in words for the person uploading."""


def sniff_format(data: bytes) -> str:
    """The format named by the file's first bytes (PNG, JPEG, WEBP, GIF); ImageError for anything else."""
    if not data:
        raise ImageError("The file is empty (0 bytes).")
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    head = data[:512].lstrip().lower()
    if head.startswith(b"<?xml") or b"<svg" in head:
        raise ImageError(f"SVG drawings are not accepted; upload a {ACCEPTED} image.")
    if head.startswith(b"%!ps") or data[:4] == b"\xc5\xd0\xd3\xc6" or head.startswith(b"%pdf"):
        raise ImageError(f"PostScript/EPS/PDF files are not accepted; upload a {ACCEPTED} image.")
    raise ImageError(f"This file is not a {ACCEPTED} image (its content does not match any of them).")


def check_size(width: int, height: int, max_pixels: int) -> None:
    """Refuse images with no pixels, too many pixels, or an extreme aspect ratio (before decoding)."""
    if width < 1 or height < 1:
        raise ImageError("The image has no pixels.")
    if width * height > max_pixels:
        raise ImageError(f"The image is {width}x{height} pixels ({width * height / 1e6:.1f} megapixels); "
                         f"the limit is {max_pixels / 1e6:.0f} megapixels. Resize it and try again.")
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise ImageError(f"The image is {width}x{height} pixels: too thin to show a clothing item "
                         f"(the longest side may be at most {MAX_ASPECT:.0f} times the shortest).")


def to_standard_mode(img):
    """RGB, RGBA or L from any Pillow mode: 16-bit and float scaled to 8 bits, CMYK to RGB,
    palette and LA with transparency to RGBA, bilevel to L."""
    from PIL import Image

    mode = img.mode
    if mode in ("RGB", "RGBA", "L"):
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if mode.startswith("I;16") or arr.max(initial=0) > 255:
            top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) <= 65535 else arr.max()
            arr = arr / top * 255.0
        elif mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    if mode in ("LA", "La", "PA", "RGBa") or (mode == "P" and "transparency" in img.info):
        return img.convert("RGBA")
    if mode == "1":
        return img.convert("L")
    return img.convert("RGB")  # P, CMYK, YCbCr, LAB, HSV


def apply_exif_orientation(img):
    """The image turned upright according to its EXIF orientation tag (unchanged if the tag is bad)."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # a damaged EXIF block must not make the photo unusable
        return img


def open_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Decode untrusted bytes into an upright RGB, RGBA or L Pillow image, or raise ImageError.

    Checks, in order: size in bytes, format sniffed from content, pixel count and aspect from the header,
    then decodes (first frame only; large JPEGs at a reduced scale) with bomb warnings as errors."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise ImageError("Expected the bytes of an image file.")
    if len(data) > MAX_BYTES:
        raise ImageError(f"The file is {len(data) / 1e6:.0f} MB; the limit is {MAX_BYTES / 1e6:.0f} MB.")
    fmt = sniff_format(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=[fmt])
            check_size(*img.size, max_pixels)
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            if fmt == "JPEG" and max(img.size) > WORKING_SIDE:
                img.draft(img.mode if img.mode in ("RGB", "L") else None, (WORKING_SIDE, WORKING_SIDE))
            img.load()
            img = apply_exif_orientation(img)
            img = to_standard_mode(img)
            img.load()
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(f"The image declares too many pixels to decode safely; the limit is "
                             f"{max_pixels / 1e6:.0f} megapixels.")
        except UnidentifiedImageError:
            raise ImageError(f"The file starts like a {fmt} image but cannot be read as one; it may be damaged.")
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error) as exc:
            detail = str(exc).split("\n")[0][:120]
            if "truncated" in detail.lower():
                raise ImageError(f"The {fmt} file is truncated (incomplete download?); upload it again.")
            raise ImageError(f"The {fmt} file is damaged and cannot be decoded ({detail}).")
        except MemoryError:
            raise ImageError("The image is too large to decode.")
    return img
