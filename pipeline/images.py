"""Decoding and encoding image files, with the mode policy in one place.

Mode policy (what a model sees and what gets written):

=============================  ===========================  ==================================
file mode (Pillow)             pixels given to the model    written as
=============================  ===========================  ==================================
RGB, CMYK, YCbCr, LAB, HSV     RGB, 8-bit                   RGB, 8-bit
L, 1                           gray, 8-bit                  gray (L)
LA                             gray + alpha (apart)         gray + alpha (LA; PNG/WebP/TIFF)
RGBA, RGBa                     RGB + alpha (apart)          RGBA
P (palette)                    RGBA if it has transparency,
                               else RGB                     RGBA / RGB (palette is not kept)
I;16*, I (16/32-bit gray)      gray, 16-bit (I clipped to   16-bit gray in PNG and TIFF;
                               0…65535)                     reduced to 8-bit (÷257) in JPEG/WebP
F (float)                      refused: error row           —
=============================  ===========================  ==================================

EXIF orientation is applied before anything else, so outputs are upright and carry no
orientation tag. Multi-frame files (GIF, animated WebP, multi-page TIFF) use their first frame.
Colour images with an embedded ICC profile (RGB, RGBA, CMYK, palette) are converted to sRGB
with it (:func:`to_srgb`); without one, RGB is taken as sRGB and CMYK is converted naively.
EXIF and XMP are read (:func:`read_metadata`) and written back into every output format
(:func:`encode`).
48-bit RGB PNGs are read by Pillow as 8-bit RGB. JPEG cannot hold alpha, so an image
with alpha bound for JPEG is written as PNG instead (the manifest's output_uri says so).
"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from dataclasses import dataclass

import imagecodecs
import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"}
FORMAT_EXTENSIONS = {"png": (".png",), "jpeg": (".jpg", ".jpeg", ".jpe"), "webp": (".webp",), "tiff": (".tif", ".tiff")}
SAME_FORMAT = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp", "TIFF": "tiff", "MPO": "jpeg"}
PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "tiff": "TIFF"}
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}
# Largest width or height each encoder writes, in pixels: libpng's default user limit (kept by
# imagecodecs; beyond it "Invalid IHDR data"), JPEG's 16-bit and WebP's 14-bit header fields,
# classic TIFF's 32-bit tags.
MAX_SIDE = {"png": 1_000_000, "jpeg": 65_535, "webp": 16_383, "tiff": 2**32 - 1}


class ImageError(Exception):
    """A file that cannot be turned into pixels; ``error_type`` is a short stable code."""

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


@dataclass
class Decoded:
    """pixels: H×W×C (C = 1 gray or 3 RGB, sRGB where the file had a usable ICC profile), uint8 or
    uint16. alpha: H×W, same dtype, or None."""

    pixels: np.ndarray
    alpha: np.ndarray | None
    mode: str
    format: str
    metadata: Metadata | None = None  # EXIF/XMP to carry to the output
    profile: str | None = None  # description of the ICC profile the pixels were converted from to sRGB

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]


@dataclass
class Encoded:
    """An output file: ``data`` in ``format`` (png, jpeg, webp, tiff), width×height pixels,
    encoded in ``seconds``."""

    data: bytes
    format: str
    width: int
    height: int
    seconds: float


@dataclass(frozen=True)
class OutputCheck:
    """What an input's output will be, for checking it from the input's header: ``format`` is
    output.format (``same`` is resolved per input, as :func:`choose_format` will), ``scale`` the
    chain's output size / input size (None: not known before the models load, e.g. a checkpoint;
    the encoder limits are then not checked)."""

    format: str
    scale: float | None


def decode(
    data: bytes, max_pixels: int, *, max_aspect_ratio: float | None = None, output: OutputCheck | None = None
) -> Decoded:
    """Decode one file. The header is checked before any pixel is allocated: at most
    ``max_pixels``, at most ``max_aspect_ratio`` (longer side / shorter side; None: any), and,
    with ``output``, an output size the encoder can write (:func:`check_output_size`), so an
    image that could never be written fails here, before any model spends time on it."""
    if not data:
        raise ImageError("empty_file", "zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError("too_many_pixels", str(exc)) from None
    except UnidentifiedImageError:
        raise ImageError("not_an_image", "not a recognised image format") from None
    except Exception as exc:  # Pillow raises many types for malformed headers
        raise ImageError("corrupt", f"unreadable header: {exc}") from None
    width, height = im.size
    if width * height > max_pixels:
        raise ImageError(
            "too_many_pixels", f"{width}×{height} = {width * height} pixels exceeds limits.max_pixels={max_pixels}"
        )
    if width == 0 or height == 0:
        raise ImageError("corrupt", f"image has no pixels ({width}×{height})")
    fmt = im.format or "unknown"
    mode = im.mode
    if max_aspect_ratio is not None and max(width, height) > max_aspect_ratio * min(width, height):
        raise ImageError(
            "extreme_aspect_ratio",
            f"{width}×{height} is {max(width, height) / min(width, height):.0f}:1, "
            f"beyond limits.max_aspect_ratio={max_aspect_ratio:g}",
        )
    if output is not None and output.scale is not None:
        has_alpha = mode in ALPHA_MODES or (mode == "P" and "transparency" in im.info)
        check_output_size(width, height, output.scale, choose_format(output.format, fmt, has_alpha))
    try:
        im.load()
        upright = ImageOps.exif_transpose(im)
        metadata = read_metadata(im)  # after the transpose: this drops the orientation tag it reads
        icc = im.info.get("icc_profile")
        im = upright
    except Exception as exc:
        raise ImageError("corrupt", f"cannot decode {fmt}: {exc}") from None
    im, profile = to_srgb(im, icc)
    pixels, alpha = _to_arrays(im)
    return Decoded(pixels=pixels, alpha=alpha, mode=mode, format=fmt, metadata=metadata, profile=profile)


SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def to_srgb(im: Image.Image, icc: bytes | None) -> tuple[Image.Image, str | None]:
    """``im`` converted from its embedded ICC profile ``icc`` to sRGB (relative colorimetric with
    black-point compensation, as a photo editor's "convert to profile"), and the source
    profile's description; ``im`` itself and None where there is nothing to convert: no
    profile, a gray or 16-bit image (kept as they are), or a profile that cannot be used (wrong
    colour space for the image, malformed: treated as untagged, as browsers do).

    The models were trained on sRGB pixels, so they see sRGB; outputs are sRGB, untagged (what
    untagged files are taken to be)."""
    if not icc or im.mode not in ("RGB", "RGBA", "RGBa", "CMYK", "P"):
        return im, None
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if im.mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif im.mode == "RGBa":
            im = im.convert("RGBA")
        converted = ImageCms.profileToProfile(
            im,
            source,
            SRGB,
            renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
            outputMode="RGBA" if im.mode == "RGBA" else "RGB",
            flags=ImageCms.Flags.BLACKPOINTCOMPENSATION,
        )
        return converted, ImageCms.getProfileDescription(source).strip() or "unnamed"
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return im, None


@dataclass
class Metadata:
    """Capture metadata carried from an input file to its output. ``exif``: an EXIF block as
    Pillow writes it (``Exif\0\0`` + TIFF structure) without the orientation tag (applied to
    the pixels), the input's pixel dimensions, or TIFF structure tags; ``xmp``: the XMP packet
    (UTF-8 XML) without its orientation. Either may be None."""

    exif: bytes | None = None
    xmp: bytes | None = None


# IFD0 tags that describe the input file's layout, not the capture: never carried to an output.
_LAYOUT_TAGS = {256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 317, 320, 338, 339, 322, 323, 324, 325, 530, 531, 532}
_DROPPED_TAGS = _LAYOUT_TAGS | {0x0112, 700, 34675}  # orientation (applied), XMP and ICC (carried apart or converted)
_EXIF_IFD, _PIXEL_X, _PIXEL_Y = 0x8769, 0xA002, 0xA003
_XMP_ORIENTATION = re.compile(rb"\s*tiff:Orientation=\"\d*\"|<tiff:Orientation>\s*\d*\s*</tiff:Orientation>")


def read_metadata(im: Image.Image) -> Metadata | None:
    """The EXIF and XMP of an opened (not yet transposed) image, or None if it has neither."""
    exif = im.getexif()
    exif_ifd = exif.get_ifd(_EXIF_IFD)  # read before tags are dropped: it is loaded through IFD0's pointer
    for tag in _DROPPED_TAGS & set(exif):
        del exif[tag]
    for tag in (_PIXEL_X, _PIXEL_Y):
        exif_ifd.pop(tag, None)
    raw_exif = exif.tobytes() if len(exif) or exif_ifd else None
    xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
    if xmp is None and hasattr(im, "tag_v2"):  # TIFF keeps it as tag 700
        xmp = im.tag_v2.get(700)
    if isinstance(xmp, str):
        xmp = xmp.encode()
    xmp = _XMP_ORIENTATION.sub(b"", xmp) if xmp else None
    return Metadata(raw_exif, xmp) if raw_exif or xmp else None


def check_output_size(width: int, height: int, scale: float, fmt: str) -> None:
    """Raise ImageError ``output_too_large`` if a width×height input, scaled by ``scale``, has a
    side longer than the ``fmt`` encoder can write (:data:`MAX_SIDE`)."""
    out_w, out_h = round(width * scale), round(height * scale)
    limit = MAX_SIDE.get(fmt)
    if limit is not None and max(out_w, out_h) > limit:
        raise ImageError(
            "output_too_large",
            f"the output would be {out_w}×{out_h} ({width}×{height} × {scale:g}); "
            f"{fmt} holds at most {limit} pixels a side (choose another output.format, or a smaller scale)",
        )


def _to_arrays(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    mode = im.mode
    if mode in SIXTEEN_BIT_MODES:
        arr = np.asarray(im)
        if mode == "I":
            arr = np.clip(arr, 0, 65535)
        return arr.astype(np.uint16)[..., None], None
    if mode == "F":
        raise ImageError("unsupported_mode", "32-bit float images (mode F) are not supported")
    if mode in ("1", "L"):
        return np.asarray(im.convert("L"))[..., None], None
    if mode in ("LA", "La", "PA") or (mode == "P" and "transparency" in im.info):
        target = "LA" if mode in ("LA", "La") else "RGBA"
        arr = np.asarray(im.convert(target))
        return np.ascontiguousarray(arr[..., :-1]), np.ascontiguousarray(arr[..., -1])
    if mode in ("RGBA", "RGBa"):
        arr = np.asarray(im.convert("RGBA"))
        return np.ascontiguousarray(arr[..., :3]), np.ascontiguousarray(arr[..., 3])
    return np.asarray(im.convert("RGB")), None


def choose_format(requested: str, input_format: str, has_alpha: bool) -> str:
    """The format to write: ``same`` follows the input (BMP and others become PNG)."""
    fmt = SAME_FORMAT.get(input_format, "png") if requested == "same" else requested
    if fmt == "jpeg" and has_alpha:
        fmt = "png"  # keep the alpha channel rather than flatten it silently
    return fmt


def encode(
    pixels: np.ndarray, alpha: np.ndarray | None, fmt: str, quality: int, metadata: Metadata | None = None
) -> bytes:
    """Encode H×W×C uint8/uint16 pixels (+ optional H×W alpha) as ``fmt``, with ``metadata``'s
    EXIF and XMP if given (every written format holds both)."""
    keep16 = pixels.dtype == np.uint16 and fmt in ("png", "tiff") and pixels.shape[2] == 1 and alpha is None
    if pixels.dtype == np.uint16 and not keep16:
        pixels = _to_8bit(pixels)
        alpha = _to_8bit(alpha) if alpha is not None else None
    planes = pixels if alpha is None else np.concatenate([pixels, alpha[..., None]], axis=2)
    # H×W for one plane, else H×W×C; Pillow and libpng infer L / LA / RGB / RGBA (I;16 for uint16 gray).
    planes = np.ascontiguousarray(planes[..., 0] if planes.shape[2] == 1 else planes)
    if fmt == "png":
        return png_with_metadata(encode_png(planes), metadata)
    if fmt == "jpeg":
        return jpeg_with_metadata(encode_jpeg(planes, quality), metadata)
    options: dict = {"quality": quality} if fmt == "webp" else {}
    if metadata is not None and fmt == "webp":
        options.update({k: v for k, v in (("exif", metadata.exif), ("xmp", metadata.xmp)) if v})
    elif metadata is not None:  # TIFF: the XMP is IFD0's tag 700, next to the EXIF's tags
        exif = Image.Exif()
        if metadata.exif:
            exif.load(metadata.exif)
        if metadata.xmp:
            exif[700] = metadata.xmp
        options["exif"] = exif
    out = io.BytesIO()
    Image.fromarray(planes).save(out, format=PIL_FORMAT[fmt], **options)
    return out.getvalue()


def encode_png(planes: np.ndarray) -> bytes:
    """PNG of H×W (gray) or H×W×2/3/4 (gray+alpha, RGB, RGBA) uint8, or H×W uint16 (a view is copied).

    libpng (through imagecodecs) reads the array in place, where Pillow first copies it into a
    buffer of 4 bytes a pixel: for a 24000×16000 ×4 output that copy alone was 1.43 GiB. zlib level 1
    with the Paeth filter and run-length matching measured ~2× faster than Pillow's level 1 and
    11–20 % smaller on photos (docs/benchmarks.md); PNG is lossless at every setting.
    """
    planes = np.ascontiguousarray(planes)  # libpng reads rows in place, so they must be contiguous
    return imagecodecs.png_encode(
        planes, level=1, filter=imagecodecs.PNG.FILTER.PAETH, strategy=imagecodecs.PNG.STRATEGY.RLE
    )


def encode_jpeg(planes: np.ndarray, quality: int) -> bytes:
    """JPEG of H×W (gray) or H×W×3 (RGB) uint8 at ``quality`` (1–100), through libjpeg-turbo
    (imagecodecs), which reads the array in place like :func:`encode_png`. Same settings as
    Pillow's default (4:2:0 chroma for RGB): the decoded pixels are identical (tested)."""
    return imagecodecs.jpeg8_encode(np.ascontiguousarray(planes), level=quality)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_with_metadata(png: bytes, metadata: Metadata | None) -> bytes:
    """``png`` with an ``eXIf`` chunk (the EXIF's TIFF structure) and an ``iTXt`` chunk
    ``XML:com.adobe.xmp`` (the XMP, as Adobe and exiftool write it) right after its header."""
    if metadata is None:
        return png
    chunks = b""
    if metadata.exif:
        chunks += _png_chunk(b"eXIf", metadata.exif.removeprefix(b"Exif\x00\x00"))
    if metadata.xmp:
        chunks += _png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + metadata.xmp)
    end_of_ihdr = 8 + 8 + 13 + 4  # signature, then IHDR: length + type, 13 bytes of body, CRC
    return png[:end_of_ihdr] + chunks + png[end_of_ihdr:]


def jpeg_with_metadata(jpeg: bytes, metadata: Metadata | None) -> bytes:
    """``jpeg`` with APP1 segments for the EXIF and the XMP after its SOI (and JFIF APP0, if
    any); a block over a segment's 65,533 bytes is left out (extended XMP is not written)."""
    if metadata is None:
        return jpeg
    segments = b""
    for prefix, body in ((b"", metadata.exif), (b"http://ns.adobe.com/xap/1.0/\x00", metadata.xmp)):
        if body and len(prefix + body) <= 65_533:
            segments += b"\xff\xe1" + struct.pack(">H", len(prefix + body) + 2) + prefix + body
    at = 2
    if jpeg[2:4] == b"\xff\xe0":  # JFIF APP0 stays first, as its spec asks
        at = 4 + struct.unpack(">H", jpeg[4:6])[0]
    return jpeg[:at] + segments + jpeg[at:]


def _to_8bit(arr: np.ndarray) -> np.ndarray:
    return ((arr.astype(np.float32) + 128.5) / 257.0).astype(np.uint8) if arr.dtype == np.uint16 else arr
