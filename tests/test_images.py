"""fmnist.images.open_image against a hostile corpus made here: every file gives a valid image or an
ImageError with a clear message, quickly, never another exception."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from fmnist.images import ImageError, open_image, sniff_format


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries one tiny compressed row: a decompression bomb."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def exif_rotated_jpeg(orientation: int) -> bytes:
    img = Image.new("RGB", (40, 20), "white")
    img.paste((0, 0, 0), (0, 0, 10, 20))  # a black bar on the left edge
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", exif=exif.tobytes(), quality=95)


def animated_gif() -> bytes:
    frames = [Image.new("P", (30, 30), i) for i in (1, 2, 3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def hostile_corpus() -> dict[str, bytes]:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    jpeg = encode(rgb, "JPEG")
    png = encode(rgb, "PNG")
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    palette.paste(1, (8, 8, 24, 24))
    return {
        "zero bytes": b"",
        "one byte": b"\x89",
        "text renamed .png": b"this is not an image, just text\n" * 10,
        "svg": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "svg no prolog": b'  <svg width="100000" height="100000"></svg>',
        "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n",
        "eps binary header": b"\xc5\xd0\xd3\xc6" + b"\0" * 60,
        "pdf": b"%PDF-1.4\n1 0 obj\n",
        "html": b"<!DOCTYPE html><html><body>hi</body></html>",
        "bmp (not accepted)": encode(rgb, "BMP"),
        "tiff (not accepted)": encode(rgb, "TIFF"),
        "truncated jpeg": jpeg[: len(jpeg) // 2],
        "truncated png": png[: len(png) // 2],
        "png header only": png[:40],
        "jpeg magic then junk": b"\xff\xd8\xff" + b"\x00" * 100,
        "png magic then junk": b"\x89PNG\r\n\x1a\n" + b"\xff" * 100,
        "webp magic then junk": b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\0" * 30,
        "gif magic then junk": b"GIF89a" + b"\x01" * 20,
        "bomb png 30000x30000": png_header_only(30000, 30000),
        "bomb png 100000x100000": png_header_only(100000, 100000),
        "strip 1x100000": encode(Image.new("L", (1, 100000), 128), "PNG"),
        "strip 100000x1": encode(Image.new("L", (100000, 1), 128), "PNG"),
        "16-bit grey png": encode(Image.fromarray(np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)),
                                  "PNG"),
        "cmyk jpeg": encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG"),
        "palette with transparency": encode(palette, "PNG", transparency=0),
        "grey with alpha": encode(Image.new("LA", (20, 20), (0, 0)), "PNG"),
        "bilevel": encode(Image.new("1", (20, 20), 1), "PNG"),
        "animated gif": animated_gif(),
        "webp": encode(rgb, "WEBP"),
        "rgba webp": encode(rgb.convert("RGBA"), "WEBP"),
        "1x1 png": encode(Image.new("RGB", (1, 1)), "PNG"),
        **{f"exif orientation {o}": exif_rotated_jpeg(o) for o in range(1, 9)},
    }


NOT_AN_IMAGE = "not a PNG, JPEG, WebP or GIF image (its content does not match any of them)"
DAMAGED = "but cannot be read as one; it may be damaged"
TOO_MANY = "declares too many pixels to decode safely; the limit is 50 megapixels"
TOO_THIN = "too thin to show a clothing item"

# Every file's outcome: ("refused", words of its message) or ("accepted", mode, (width, height)).
OUTCOMES: dict[str, tuple] = {
    "zero bytes": ("refused", "The file is empty (0 bytes)"),
    "one byte": ("refused", NOT_AN_IMAGE),
    "text renamed .png": ("refused", NOT_AN_IMAGE),
    "svg": ("refused", "SVG drawings are not accepted"),
    "svg no prolog": ("refused", "SVG drawings are not accepted"),
    "eps": ("refused", "PostScript/EPS/PDF files are not accepted"),
    "eps binary header": ("refused", "PostScript/EPS/PDF files are not accepted"),
    "pdf": ("refused", "PostScript/EPS/PDF files are not accepted"),
    "html": ("refused", NOT_AN_IMAGE),
    "bmp (not accepted)": ("refused", NOT_AN_IMAGE),
    "tiff (not accepted)": ("refused", NOT_AN_IMAGE),
    "truncated jpeg": ("refused", "The JPEG file is truncated (incomplete download?)"),
    "truncated png": ("refused", "The PNG file is truncated (incomplete download?)"),
    "png header only": ("refused", "starts like a PNG image " + DAMAGED),
    "jpeg magic then junk": ("refused", "starts like a JPEG image " + DAMAGED),
    "png magic then junk": ("refused", "starts like a PNG image " + DAMAGED),
    "webp magic then junk": ("refused", "The WEBP file is damaged and cannot be decoded"),
    "gif magic then junk": ("refused", "starts like a GIF image " + DAMAGED),
    "bomb png 30000x30000": ("refused", TOO_MANY),
    "bomb png 100000x100000": ("refused", TOO_MANY),
    "strip 1x100000": ("refused", "1x100000 pixels: " + TOO_THIN),
    "strip 100000x1": ("refused", "100000x1 pixels: " + TOO_THIN),
    "16-bit grey png": ("accepted", "L", (64, 64)),
    "cmyk jpeg": ("accepted", "RGB", (40, 30)),
    "palette with transparency": ("accepted", "RGBA", (32, 32)),
    "grey with alpha": ("accepted", "RGBA", (20, 20)),
    "bilevel": ("accepted", "L", (20, 20)),
    "animated gif": ("accepted", "RGB", (30, 30)),
    "webp": ("accepted", "RGB", (80, 60)),
    "rgba webp": ("accepted", "RGB", (80, 60)),  # fully opaque: Pillow stores it without alpha
    "1x1 png": ("accepted", "RGB", (1, 1)),
    **{f"exif orientation {o}": ("accepted", "RGB", (40, 20) if o <= 4 else (20, 40)) for o in range(1, 9)},
}


def test_every_corpus_file_has_a_pinned_outcome():
    assert set(OUTCOMES) == set(hostile_corpus())


@pytest.mark.parametrize("name", list(OUTCOMES))
def test_hostile_file_outcome_is_pinned(name):
    """Each file is either accepted (with the decoded mode and size) or refused with its own
    one-line message, quickly, never with another exception."""
    data = hostile_corpus()[name]
    expected = OUTCOMES[name]
    start = time.perf_counter()
    if expected[0] == "refused":
        with pytest.raises(ImageError) as info:
            open_image(data)
        message = str(info.value)
        assert expected[1] in message, message
        assert len(message) < 300 and "\n" not in message and "Traceback" not in message
    else:
        img = open_image(data)
        assert (img.mode, img.size) == expected[1:]
        assert np.asarray(img).shape[:2] == img.size[::-1]  # pixels are really decoded
    assert time.perf_counter() - start < 1.0


def test_pixel_limit_is_checked_before_decoding():
    data = encode(Image.new("RGB", (400, 300)), "PNG")
    with pytest.raises(ImageError, match="megapixels"):
        open_image(data, max_pixels=100_000)
    assert open_image(data, max_pixels=120_000).size == (400, 300)


def test_sniffing_ignores_names_and_reads_content():
    assert sniff_format(encode(Image.new("RGB", (4, 4)), "PNG")) == "PNG"
    assert sniff_format(encode(Image.new("RGB", (4, 4)), "JPEG")) == "JPEG"
    assert sniff_format(encode(Image.new("RGB", (4, 4)), "WEBP")) == "WEBP"
    assert sniff_format(animated_gif()) == "GIF"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    img = open_image(exif_rotated_jpeg(orientation))
    grey = np.asarray(img.convert("L"), np.float32)
    # the stored image is 40x20 with a black bar at the left; orientations 5-8 swap the sides
    assert img.size == ((40, 20) if orientation <= 4 else (20, 40))
    dark = grey < 128
    expected_side = {1: "left", 2: "right", 3: "right", 4: "left", 5: "top", 6: "top", 7: "bottom", 8: "bottom"}
    where = {"left": dark[:, :5].mean(), "right": dark[:, -5:].mean(), "top": dark[:5].mean(),
             "bottom": dark[-5:].mean()}
    assert max(where, key=where.get) == expected_side[orientation]


def test_sixteen_bit_is_scaled_to_eight_bits():
    ramp = np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)
    img = open_image(encode(Image.fromarray(ramp), "PNG"))
    arr = np.asarray(img)
    assert img.mode == "L" and arr.min() <= 2 and arr.max() >= 253
    assert np.all(np.diff(arr.ravel().astype(int)) >= 0)  # still a ramp


def test_cmyk_becomes_rgb_with_the_right_colour():
    img = open_image(encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG"))
    r, g, b = np.asarray(img).reshape(-1, 3).mean(0)
    assert img.mode == "RGB" and r > 200 and g < 60 and b < 60  # cyan-free, full magenta+yellow = red


def test_palette_transparency_becomes_alpha():
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    palette.paste(1, (8, 8, 24, 24))
    img = open_image(encode(palette, "PNG", transparency=0))
    alpha = np.asarray(img.getchannel("A"))
    assert img.mode == "RGBA" and alpha[0, 0] == 0 and alpha[16, 16] == 255


def test_animation_gives_its_first_frame():
    img = open_image(animated_gif())
    frames = [Image.new("P", (30, 30), i) for i in (1, 2, 3)]
    first = np.asarray(frames[0].convert("RGB"))
    assert np.array_equal(np.asarray(img.convert("RGB")), first)
