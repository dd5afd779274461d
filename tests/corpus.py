"""A corpus of real image files of every kind an archive holds, plus broken ones.

``make_corpus()`` returns {relative path: (bytes, expected status)}; expected status is
``ok``, an error_type (for files that must become error rows), or ``skip`` (not listed as
an image at all). Limits the corpus assumes: max_pixels 1_000_000, max_bytes 150_000.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

MAX_PIXELS = 1_000_000
MAX_BYTES = 150_000


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _gradient(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], axis=-1)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def make_corpus() -> dict[str, tuple[bytes, str]]:
    rgb = Image.fromarray(_gradient(24, 32, 0))
    files: dict[str, tuple[bytes, str]] = {}
    files["jpeg/rgb.jpg"] = (_save(rgb, "JPEG", quality=90), "ok")
    files["jpeg/progressive.jpeg"] = (_save(rgb, "JPEG", progressive=True), "ok")
    files["jpeg/gray.jpg"] = (_save(rgb.convert("L"), "JPEG"), "ok")
    files["jpeg/cmyk.jpg"] = (_save(rgb.convert("CMYK"), "JPEG"), "ok")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    files["jpeg/exif-rotated.jpg"] = (_save(rgb, "JPEG", exif=exif), "ok")
    files["png/rgb.png"] = (_save(rgb, "PNG"), "ok")
    files["png/la.png"] = (_save(rgb.convert("LA"), "PNG"), "ok")
    files["png/palette.png"] = (_save(rgb.quantize(16), "PNG"), "ok")
    pal = rgb.quantize(16)
    pal.info["transparency"] = 0
    files["png/palette-transparent.png"] = (_save(pal, "PNG", transparency=0), "ok")
    files["png/bilevel.png"] = (_save(rgb.convert("1"), "PNG"), "ok")
    gray16 = np.asarray(rgb.convert("L")).astype(np.uint16) * 257
    gray16[0, 0] = 1  # a value 8-bit cannot hold
    files["png/gray16.png"] = (_save(Image.fromarray(gray16), "PNG"), "ok")
    files["webp/rgb.webp"] = (_save(rgb, "WEBP", quality=90), "ok")
    rgba = np.dstack([np.asarray(rgb), np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (24, 1))])
    files["png/rgba.png"] = (_save(Image.fromarray(rgba), "PNG"), "ok")
    files["webp/rgba.webp"] = (_save(Image.fromarray(rgba), "WEBP", lossless=True), "ok")
    files["tiff/rgb.tif"] = (_save(rgb, "TIFF"), "ok")
    files["tiff/gray16.tiff"] = (_save(Image.fromarray(gray16), "TIFF"), "ok")
    files["tiff/float.tif"] = (_save(Image.fromarray(np.zeros((8, 8), np.float32)), "TIFF"), "unsupported_mode")
    files["bmp/rgb.bmp"] = (_save(rgb, "BMP"), "ok")
    files["Upper Case/Space Name.JPG"] = (_save(rgb, "JPEG"), "ok")
    files["unicode/café-ü.png"] = (_save(rgb, "PNG"), "ok")

    full_jpeg = _save(Image.fromarray(_gradient(64, 64, 1)), "JPEG")
    full_png = _save(Image.fromarray(_gradient(64, 64, 2)), "PNG")
    files["broken/truncated.jpg"] = (full_jpeg[: len(full_jpeg) // 2], "corrupt")
    files["broken/truncated.png"] = (full_png[: len(full_png) // 2], "corrupt")
    files["broken/zero-byte.png"] = (b"", "empty_file")
    files["broken/not-an-image.jpg"] = (b"this is a text file with a .jpg name\n" * 10, "not_an_image")
    files["broken/bomb.png"] = (_save(Image.new("L", (2000, 2000)), "PNG"), "too_many_pixels")
    noise = np.random.default_rng(3).integers(0, 256, (240, 240, 3), dtype=np.uint8)
    files["broken/too-big.png"] = (_save(Image.fromarray(noise), "PNG", compress_level=0), "too_large")
    files["notes/readme.txt"] = (b"not an image extension: skipped by the planner\n", "skip")
    assert len(files["broken/too-big.png"][0]) > MAX_BYTES
    return files
