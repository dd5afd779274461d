"""A corpus of real image files of every kind an archive holds, plus broken ones.

``make_corpus()`` returns {relative path: (bytes, expected status)}; expected status is
``ok``, an error_type (for files that must become error rows), or ``skip`` (not listed as
an image at all). Limits the corpus assumes: max_pixels 1_000_000, max_bytes 150_000.
"""

from __future__ import annotations

import io
import struct

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
    files["jpeg/cmyk-profile.jpg"] = (_save(rgb.convert("CMYK"), "JPEG", icc_profile=cmyk_profile()), "ok")
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


# ---------------------------------------------------------------------------------------
# ICC profiles, built here (Pillow's ImageCms only creates sRGB, LAB and XYZ profiles)

D65 = (0.3127, 0.3290)
DISPLAY_P3 = ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060))  # red, green, blue primaries (x, y)
SRGB = ((0.640, 0.330), (0.300, 0.600), (0.150, 0.060))
_BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])
_D50_XYZ = np.array([0.9642, 1.0, 0.8249])


def rgb_to_xyz(primaries, white=D65) -> np.ndarray:
    """3×3 matrix from linear RGB to XYZ (Y of white = 1) for these primaries and white point."""
    xyz = lambda x, y: np.array([x / y, 1.0, (1 - x - y) / y])  # noqa: E731
    m = np.stack([xyz(*p) for p in primaries], axis=1)
    return m * np.linalg.solve(m, xyz(*white))


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _xyz_tag(v) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(c) for c in v)


def _adapt_to_d50(white) -> np.ndarray:
    """Bradford chromatic adaptation from ``white`` (XYZ) to the profile connection space's D50."""
    cone = _BRADFORD @ _D50_XYZ / (_BRADFORD @ white)
    return np.linalg.inv(_BRADFORD) @ np.diag(cone) @ _BRADFORD


def _icc(device_class: bytes, space: bytes, pcs: bytes, description: str, tags: dict[bytes, bytes]) -> bytes:
    """An ICC v2 profile: header, tag table and tags (plus desc, cprt and a D50 wtpt)."""
    text = description.encode() + b"\0"
    tags = {
        b"desc": b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * (4 + 4 + 2 + 1 + 67),
        b"cprt": b"text\0\0\0\0no copyright\0",
        b"wtpt": _xyz_tag(_D50_XYZ),
        **tags,
    }
    table, body = b"", b""
    offset = 128 + 4 + 12 * len(tags)
    for sig, data in tags.items():
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data + b"\0" * (-len(data) % 4)
    size = offset + len(body)
    header = (
        struct.pack(">I", size)
        + b"\0\0\0\0"
        + struct.pack(">I", 0x02100000)
        + device_class
        + space
        + pcs
        + b"\0" * 12
        + b"acsp"
        + b"\0" * 28  # platform, flags, manufacturer, model, attributes, intent
        + b"".join(_s15(c) for c in _D50_XYZ)
        + b"\0" * 48
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def matrix_profile(primaries, gamma: float, description: str) -> bytes:
    """An ICC v2 display profile (matrix + gamma curve), e.g. Display P3 with gamma 2.2: the
    colorants Bradford-adapted from D65 to the profile connection space's D50, as ICC asks."""
    white = rgb_to_xyz(primaries) @ np.ones(3)
    colorants = _adapt_to_d50(white) @ rgb_to_xyz(primaries)
    trc = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    tags = {
        b"rXYZ": _xyz_tag(colorants[:, 0]),
        b"gXYZ": _xyz_tag(colorants[:, 1]),
        b"bXYZ": _xyz_tag(colorants[:, 2]),
        b"rTRC": trc,
        b"gTRC": trc,
        b"bTRC": trc,
    }
    return _icc(b"mntr", b"RGB ", b"XYZ ", description, tags)


# Ink model of the CMYK profile below: how much of each linear sRGB channel (rows R, G, B) one
# full layer of cyan, magenta and yellow (columns) absorbs. Real inks absorb off their own
# channel too, which is why a naive 255 - C conversion gets CMYK photos' colours wrong.
INK_ABSORPTION = np.array([[0.95, 0.15, 0.05], [0.25, 0.90, 0.10], [0.10, 0.30, 0.90]])


def cmyk_to_linear_srgb(cmyk) -> np.ndarray:
    """The ink model: (..., 4) ink amounts in [0, 1] → (..., 3) linear sRGB in [0, 1].
    Each ink layer transmits 1 - absorption·amount of each channel; black ink all of nothing."""
    cmyk = np.asarray(cmyk, float)
    layers = 1 - cmyk[..., None, :3] * INK_ABSORPTION  # (..., 3 channels, 3 inks)
    return layers.prod(axis=-1) * (1 - cmyk[..., 3:4])


def cmyk_profile(description: str = "darkroom test press (CMYK)", grid: int = 9) -> bytes:
    """An ICC v2 output profile for CMYK whose A2B0 (a 16-bit lut, PCS XYZ) is the ink model
    above, sampled on ``grid`` points per ink; D65 sRGB white adapted to D50."""
    axis = np.linspace(0, 1, grid)
    cmyk = np.stack(np.meshgrid(axis, axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 4)
    xyz = cmyk_to_linear_srgb(cmyk) @ (_adapt_to_d50(rgb_to_xyz(SRGB) @ np.ones(3)) @ rgb_to_xyz(SRGB)).T
    clut = np.clip(np.round(xyz * 32768), 0, 65535).astype(">u2")  # u1Fixed15, as lut16 encodes XYZ
    ramp = np.round(np.linspace(0, 65535, 256)).astype(">u2")  # identity input and output curves
    lut = (
        b"mft2\0\0\0\0"
        + struct.pack(">BBBB", 4, 3, grid, 0)
        + b"".join(_s15(v) for v in np.eye(3).ravel())
        + struct.pack(">HH", 256, 256)
        + ramp.tobytes() * 4
        + clut.tobytes()
        + ramp.tobytes() * 3
    )
    return _icc(b"prtr", b"CMYK", b"XYZ ", description, {b"A2B0": lut, b"A2B1": lut})


def srgb_levels(linear) -> np.ndarray:
    """Linear sRGB in [0, 1] → sRGB-encoded 8-bit levels (floats, 0–255)."""
    linear = np.clip(np.asarray(linear, float), 0, 1)
    return 255 * np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)


def p3_to_srgb_levels(rgb, gamma: float = 2.2) -> np.ndarray:
    """What 8-bit values ``rgb`` in a Display-P3-primaries, gamma-``gamma`` space are in sRGB."""
    linear = (np.asarray(rgb, float) / 255) ** gamma
    srgb_linear = np.linalg.solve(rgb_to_xyz(SRGB), rgb_to_xyz(DISPLAY_P3) @ linear)
    return srgb_levels(srgb_linear)
