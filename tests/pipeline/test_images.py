import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from pipeline import images
from tests.corpus import (
    DISPLAY_P3,
    MAX_PIXELS,
    cmyk_profile,
    cmyk_to_linear_srgb,
    matrix_profile,
    p3_to_srgb_levels,
    srgb_levels,
)

# (mode given to the model: channels, dtype, has alpha) for every decodable corpus file
EXPECTED = {
    "jpeg/rgb.jpg": (3, np.uint8, False),
    "jpeg/gray.jpg": (1, np.uint8, False),
    "jpeg/cmyk.jpg": (3, np.uint8, False),
    "png/rgba.png": (3, np.uint8, True),
    "png/la.png": (1, np.uint8, True),
    "png/palette.png": (3, np.uint8, False),
    "png/palette-transparent.png": (3, np.uint8, True),
    "png/bilevel.png": (1, np.uint8, False),
    "png/gray16.png": (1, np.uint16, False),
    "webp/rgba.webp": (3, np.uint8, True),
    "tiff/gray16.tiff": (1, np.uint16, False),
    "bmp/rgb.bmp": (3, np.uint8, False),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_mode_policy(corpus, name):
    channels, dtype, has_alpha = EXPECTED[name]
    d = images.decode(corpus[name][0], MAX_PIXELS)
    assert d.pixels.shape == (24, 32, channels)
    assert d.pixels.dtype == dtype
    assert (d.alpha is not None) == has_alpha
    if has_alpha:
        assert d.alpha.shape == (24, 32) and d.alpha.dtype == dtype


def test_sixteen_bit_keeps_values_8_bit_cannot_hold(corpus):
    d = images.decode(corpus["png/gray16.png"][0], MAX_PIXELS)
    assert d.pixels[0, 0, 0] == 1
    png = images.encode(d.pixels, None, "png", 95)
    back = np.asarray(Image.open(io.BytesIO(png)))
    assert back.dtype == np.uint16 and back[0, 0] == 1
    jpeg = Image.open(io.BytesIO(images.encode(d.pixels, None, "jpeg", 95)))
    assert jpeg.mode == "L"


def test_exif_orientation_applied(corpus):
    d = images.decode(corpus["jpeg/exif-rotated.jpg"][0], MAX_PIXELS)
    assert (d.height, d.width) == (32, 24)


@pytest.mark.parametrize(
    "name",
    [
        "broken/truncated.jpg",
        "broken/truncated.png",
        "broken/zero-byte.png",
        "broken/not-an-image.jpg",
        "broken/bomb.png",
        "tiff/float.tif",
    ],
)
def test_bad_files_raise_image_error_with_type(corpus, name):
    data, expected = corpus[name]
    with pytest.raises(images.ImageError) as err:
        images.decode(data, MAX_PIXELS)
    assert err.value.error_type == expected
    assert str(err.value)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height but which carries almost no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("limit", [50_000_000, 10**12])
def test_pixel_limit_checked_from_the_header(limit):
    # 60000×60000 RGB would need 10 GB: refused by our limit, or by Pillow's bomb guard
    # when the job's limit is higher, either way before any allocation.
    with pytest.raises(images.ImageError) as err:
        images.decode(_png_header_only(60000, 60000), limit)
    assert err.value.error_type == "too_many_pixels"


def test_alpha_forces_png_instead_of_jpeg():
    assert images.choose_format("jpeg", "PNG", has_alpha=True) == "png"
    assert images.choose_format("jpeg", "PNG", has_alpha=False) == "jpeg"
    assert images.choose_format("same", "WEBP", has_alpha=False) == "webp"
    assert images.choose_format("same", "BMP", has_alpha=False) == "png"


@pytest.mark.parametrize("fmt", ["png", "webp", "tiff"])
def test_encode_keeps_gray_and_alpha(fmt):
    gray = np.full((5, 6, 1), 100, np.uint8)
    alpha = np.full((5, 6), 50, np.uint8)
    im = Image.open(io.BytesIO(images.encode(gray, alpha, fmt, 100)))
    assert im.size == (6, 5)
    assert "A" in im.mode


@pytest.mark.parametrize(
    "shape, dtype, alpha, mode",
    [
        ((7, 9, 1), np.uint8, False, "L"),
        ((7, 9, 1), np.uint16, False, "I;16"),
        ((7, 9, 1), np.uint8, True, "LA"),
        ((7, 9, 3), np.uint8, False, "RGB"),
        ((7, 9, 3), np.uint8, True, "RGBA"),
    ],
)
def test_png_is_lossless_for_every_written_mode(shape, dtype, alpha, mode):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    a = rng.integers(0, 255, shape[:2], dtype=np.uint8, endpoint=True) if alpha else None
    im = Image.open(io.BytesIO(images.encode(pixels, a, "png", 95)))
    assert im.format == "PNG" and im.mode == mode
    expected = pixels if a is None else np.concatenate([pixels, a[..., None]], axis=2)
    np.testing.assert_array_equal(np.asarray(im).reshape(expected.shape), expected)


def test_png_encodes_a_strided_view():
    # Chain outputs and alpha crops can be views; the encoder is given a contiguous copy.
    rgb = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)[::2, 1:]
    back = np.asarray(Image.open(io.BytesIO(images.encode(rgb, None, "png", 95))))
    np.testing.assert_array_equal(back, rgb)


@pytest.mark.parametrize("shape, mode", [((24, 40, 1), "L"), ((24, 40, 3), "RGB")])
def test_jpeg_decodes_to_what_pillows_own_encoder_gives(shape, mode):
    rng = np.random.default_rng(1)
    pixels = np.repeat(np.repeat(rng.integers(0, 256, (6, 10, shape[2]), dtype=np.uint8), 4, 0), 4, 1)
    ours = Image.open(io.BytesIO(images.encode(pixels, None, "jpeg", 85)))
    theirs = io.BytesIO()
    Image.fromarray(pixels[..., 0] if shape[2] == 1 else pixels).save(theirs, format="JPEG", quality=85)
    assert ours.format == "JPEG" and ours.mode == mode
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(Image.open(theirs)))


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "output", "limit"),
    [
        # A real 1×300,000 PNG, ×4: 1,200,000 rows, over libpng's 1,000,000 ("Invalid IHDR data").
        (_png(1, 300_000), images.OutputCheck("png", 4), 1_000_000),
        # A header that claims 1×400,000 with no pixel data behind it: refused from the header alone.
        (_png_header_only(1, 400_000), images.OutputCheck("same", 4), 1_000_000),
        (_png(20, 9000), images.OutputCheck("webp", 2), 16_383),
        (_png(40, 20_000), images.OutputCheck("jpeg", 4), 65_535),
    ],
)
def test_output_size_checked_against_the_encoder_from_the_header(data, output, limit):
    with pytest.raises(images.ImageError) as err:
        images.decode(data, MAX_PIXELS, output=output)
    assert err.value.error_type == "output_too_large"
    assert f"at most {limit} pixels a side" in str(err.value)


def test_output_check_follows_the_format_actually_written():
    # `same` for a PNG input and an alpha image bound for JPEG both write PNG: 20,000 × 2 fits.
    images.decode(_png(20, 20_000), MAX_PIXELS, output=images.OutputCheck("same", 2))
    rgba = io.BytesIO()
    Image.new("RGBA", (20, 20_000)).save(rgba, format="PNG")
    images.decode(rgba.getvalue(), MAX_PIXELS, output=images.OutputCheck("jpeg", 4))  # 80,000 rows: PNG holds it
    with pytest.raises(images.ImageError, match="jpeg holds at most 65535"):
        images.decode(_png(20, 20_000), MAX_PIXELS, output=images.OutputCheck("jpeg", 4))
    # A scale known only once the models load (a checkpoint): nothing to check yet.
    images.decode(_png(1, 300_000), MAX_PIXELS, output=images.OutputCheck("png", None))


def test_aspect_ratio_checked_from_the_header():
    with pytest.raises(images.ImageError) as err:
        images.decode(_png_header_only(400_000, 1), MAX_PIXELS, max_aspect_ratio=1000)
    assert err.value.error_type == "extreme_aspect_ratio" and "400000:1" in str(err.value)
    d = images.decode(_png(2, 2000), MAX_PIXELS, max_aspect_ratio=1000)  # exactly 1000:1 passes
    assert (d.width, d.height) == (2, 2000)


# ---------------------------------------------------------------------------------------
# Colour profiles, capture metadata, GIF

P3_PROFILE = matrix_profile(DISPLAY_P3, 2.2, "Display P3 (gamma 2.2)")
COLOURS = [(180, 120, 90), (40, 160, 60), (200, 200, 200), (30, 60, 220)]


def _swatches(mode: str = "RGB") -> Image.Image:
    """One 4×4 patch per colour of COLOURS, side by side (+ a half-transparent alpha for RGBA)."""
    pixels = np.repeat(np.array(COLOURS, np.uint8)[None], 4, axis=0).repeat(4, axis=1)
    im = Image.fromarray(pixels)
    if mode == "RGBA":
        im.putalpha(128)
    return im


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "RGB"), ("JPEG", "RGB"), ("PNG", "RGBA"), ("TIFF", "RGB")])
def test_embedded_profile_converted_to_srgb(fmt, mode):
    buf = io.BytesIO()
    _swatches(mode).save(buf, format=fmt, icc_profile=P3_PROFILE, **({"quality": 100} if fmt == "JPEG" else {}))
    d = images.decode(buf.getvalue(), MAX_PIXELS)
    assert d.profile == "Display P3 (gamma 2.2)"
    got = d.pixels[2, 2::4].astype(float)  # the middle of each patch
    want = np.stack([p3_to_srgb_levels(c) for c in COLOURS])
    tolerance = 3 if fmt == "JPEG" else 1  # JPEG's own loss on top of the conversion
    assert np.abs(got - want).max() <= tolerance
    # The test can fail: the file's own values are far from sRGB's.
    assert np.abs(np.array(COLOURS) - want).max() > 10
    if mode == "RGBA":
        assert d.alpha is not None and (d.alpha == 128).all()


# Ink amounts (0–255) of C, M, Y, K: paper, each ink alone, mixes, full black, grey.
INKS = [(0, 0, 0, 0), (255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 255, 0), (60, 120, 200, 30), (200, 40, 90, 10)]
INKS += [(0, 0, 0, 255), (128, 128, 128, 0)]


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_with_a_profile_is_converted_through_it(fmt):
    inks = np.array(INKS, np.uint8)
    cmyk = Image.fromarray(np.repeat(inks[None], 4, axis=0).repeat(4, axis=1), mode="CMYK")
    tagged, untagged = io.BytesIO(), io.BytesIO()
    options = {"quality": 100} if fmt == "JPEG" else {}
    cmyk.save(tagged, format=fmt, icc_profile=cmyk_profile("test press"), **options)
    cmyk.save(untagged, format=fmt, **options)
    d = images.decode(tagged.getvalue(), MAX_PIXELS)
    assert (d.mode, d.profile) == ("CMYK", "test press")
    got = d.pixels[2, 2::4].astype(float)  # the middle of each patch
    want = srgb_levels(cmyk_to_linear_srgb(inks / 255))  # the profile's ink model, computed directly
    assert np.abs(got - want).max() <= 2
    # The test can fail: without the profile, the naive conversion is far off.
    naive = images.decode(untagged.getvalue(), MAX_PIXELS).pixels[2, 2::4].astype(float)
    assert np.abs(naive - want).max() > 30


def test_unusable_profile_is_treated_as_untagged():
    plain, tagged, wrong = io.BytesIO(), io.BytesIO(), io.BytesIO()
    _swatches().save(plain, format="PNG")
    _swatches().save(tagged, format="PNG", icc_profile=b"not a profile at all")
    _swatches().save(wrong, format="PNG", icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes())
    want = images.decode(plain.getvalue(), MAX_PIXELS).pixels
    for data in (tagged.getvalue(), wrong.getvalue()):
        d = images.decode(data, MAX_PIXELS)
        assert d.profile is None and np.array_equal(d.pixels, want)


def _capture_exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "Darkroom Camera Co."  # Make
    exif[0x0112] = orientation
    exif.get_ifd(0x8769)[0x9003] = "2024:05:06 07:08:09"  # DateTimeOriginal
    exif.get_ifd(0x8769)[0xA002] = 32  # PixelXDimension: the input's, wrong for any other size
    return exif


XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description dc:creator="someone" tiff:Orientation="6"/></x:xmpmeta>'


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "tiff"])
def test_exif_and_xmp_carried_to_every_written_format(fmt):
    buf = io.BytesIO()
    _swatches().save(buf, format="JPEG", exif=_capture_exif(6), xmp=XMP)
    d = images.decode(buf.getvalue(), MAX_PIXELS)
    assert (d.height, d.width) == (16, 4)  # orientation 6 applied
    out = Image.open(io.BytesIO(images.encode(d.pixels, None, fmt, 90, d.metadata)))
    out.load()
    exif = out.getexif()
    assert exif[0x010F] == "Darkroom Camera Co." and 0x0112 not in exif
    assert exif.get_ifd(0x8769).get(0x9003) == "2024:05:06 07:08:09" and 0xA002 not in exif.get_ifd(0x8769)
    xmp = out.info.get("xmp") or out.info.get("XML:com.adobe.xmp") or out.tag_v2.get(700)
    xmp = xmp.encode() if isinstance(xmp, str) else xmp
    assert b'dc:creator="someone"' in xmp and b"Orientation" not in xmp
    assert images.encode(d.pixels, None, fmt, 90) != images.encode(d.pixels, None, fmt, 90, d.metadata)


def test_gif_first_frame_read():
    frames = [Image.new("P", (12, 10), i) for i in (3, 7)]
    for f in frames:
        f.putpalette([v for i in range(256) for v in (i, 255 - i, 2 * i % 256)])
        f.putpixel((0, 0), 0)  # index 0 is transparent
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], transparency=0, optimize=False)
    d = images.decode(buf.getvalue(), MAX_PIXELS)
    assert d.format == "GIF" and d.pixels.shape == (10, 12, 3)
    assert tuple(d.pixels[5, 5]) == (3, 252, 6)  # palette entry 3: the first frame's
    assert d.alpha is not None and d.alpha[0, 0] == 0 and d.alpha[5, 5] == 255
    assert ".gif" in images.IMAGE_EXTENSIONS and images.choose_format("same", "GIF", True) == "png"
