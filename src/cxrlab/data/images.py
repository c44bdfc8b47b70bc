"""Decode any supported image file to an 8-bit grayscale array, refusing bad input clearly.

One decoder for every later step (ETL, audit, training, serving). JPEGs go through simplejpeg
(libjpeg-turbo, with optional reduced-scale DCT decoding, which roughly halves preprocessing
time when the target is much smaller than the source, and a strict mode: a truncated scan is an
error, not grey fill); PNG, BMP, TIFF and the rest go through Pillow, which handles 16-bit,
palette and alpha modes; DICOM through pydicom.

Whatever a file holds, decoding ends in pixels or in :class:`InvalidImageError` with a one-line
reason: a codec's own exception never escapes (a long run skips the file and goes on).
"""

from __future__ import annotations

import io
import logging
import os
import stat
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

from cxrlab.core.defaults import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, MAX_FILE_BYTES
from cxrlab.core.errors import InvalidImageError
from cxrlab.core import storage
from cxrlab.core.io import file_problem
from cxrlab.data._pixels import scale_to_uint8
from cxrlab.data.dicom import DICOM_SUFFIXES, dicom_to_uint8, is_dicom_bytes

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".tif", ".tiff", ".webp", ".gif",
                  *DICOM_SUFFIXES)
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# What the content's first bytes say (never the name); DICOM is recognised apart (preamble + DICM).
_MAGIC = {_PNG_MAGIC: "png", _JPEG_MAGIC: "jpeg", b"II*\x00": "tiff", b"MM\x00*": "tiff", b"BM": "bmp",
          b"GIF87a": "gif", b"GIF89a": "gif"}
FORMATS = "PNG, JPEG, TIFF, BMP, GIF, WebP or DICOM"
# libjpeg warnings that mean the pixels are incomplete or wrong (jerror.h: JWRN_JPEG_EOF, JWRN_HIT_MARKER,
# JWRN_HUFF_BAD_CODE, JWRN_ARITH_BAD_CODE, JWRN_MUST_RESYNC, JWRN_BOGUS_PROGRESSION); other warnings
# concern the file around them and are decoded through
_DAMAGED_SCAN = ("premature end", "bad huffman code", "bad arithmetic code", "instead of rst", "inconsistent progression")
_REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                  8: cv2.IMREAD_REDUCED_GRAYSCALE_8}
# EXIF orientation (tag 0x0112) -> the array operation that shows the image upright (as Pillow's
# ImageOps.exif_transpose, which works on PIL images, not on the arrays simplejpeg returns)
_ORIENTATION = {2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud, 5: np.transpose,
                6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).T, 8: lambda a: np.rot90(a, 1)}


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image.

    Attributes:
        pixels: ``(H, W) uint8`` in [0, 255], bright = dense.
        orig_height: Stored height of the file in pixels (before any reduced decoding).
        orig_width: Stored width of the file in pixels.
    """

    pixels: np.ndarray
    orig_height: int
    orig_width: int


def _check_size(path: Path, width: int, height: int, max_pixels: int, min_side: int) -> None:
    if width * height > max_pixels:
        raise InvalidImageError(
            path, f"image too large ({width}x{height} = {width * height / 1e6:.1f} MP > limit "
            f"{max_pixels / 1e6:.1f} MP, possible decompression bomb); raise --max-pixels to accept it")
    if min(width, height) < min_side:
        raise InvalidImageError(
            path, f"image too small ({width}x{height} px; the shorter side must be >= {min_side} px)")


def not_an_image(buf: bytes) -> str:
    """The one reason every door gives for content no decoder recognises (``predict``, ``serve``, ...)."""
    looks = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in buf[:16]) else "binary data"
    return f"not an image: not a {FORMATS} file (the content looks like {looks})"


def sniff_format(buf: bytes, name: str | Path = "") -> str | None:
    """The image format ``buf``'s content shows (``png``, ``jpeg``, ``tiff``, ``bmp``, ``gif``,
    ``webp``, ``dicom``), or None; DICOM written without its preamble is recognised by its first
    element (:func:`cxrlab.data.dicom.is_dicom_bytes`) or a ``.dcm`` name (the decoder then proves it)."""
    if is_dicom_bytes(buf):  # before the others: a DICOM's preamble may hold a TIFF header
        return "dicom"
    for magic, kind in _MAGIC.items():
        if buf.startswith(magic):
            return kind
    if buf[:4] == b"RIFF" and buf[8:12] == b"WEBP":
        return "webp"
    return "dicom" if Path(name).suffix.lower() in DICOM_SUFFIXES else None


def _read_bytes(path: Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The file's bytes; only a regular file of at most ``max_bytes`` is read (a FIFO would block,
    a device never end)."""
    problem = file_problem(path)
    if problem:
        raise InvalidImageError(path, problem)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise InvalidImageError(path, f"file too large ({size / 2**20:.0f} MB > {max_bytes / 2**20:.0f} MB)")
        with open(path, "rb", buffering=0) as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # swapped since the check above
                raise InvalidImageError(path, "not a regular file")
            buf = f.read(max_bytes + 1)
    except OSError as err:
        raise InvalidImageError(path, f"cannot read file ({err.strerror or err})") from err
    if len(buf) > max_bytes:  # grew since the stat above
        raise InvalidImageError(path, f"file too large (> {max_bytes / 2**20:.0f} MB)")
    return buf


def _pil_to_gray(path: Path, im: Image.Image) -> np.ndarray:
    """Pillow image of any mode → (H, W) uint8; transparency is flattened onto black."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return scale_to_uint8(np.asarray(im), path)  # >8-bit: a robust window to 8 bits
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        im = Image.alpha_composite(black, rgba)
    return np.asarray(im.convert("L"))


def _decode_with_pillow(path: Path, buf: bytes, max_pixels: int, min_side: int) -> DecodedImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(buf)) as im:
                width, height = im.size
                _check_size(path, width, height, max_pixels, min_side)
                im.load()
                im = ImageOps.exif_transpose(im)
                pixels = _pil_to_gray(path, im)
    except InvalidImageError:
        raise
    except UnidentifiedImageError as err:
        raise InvalidImageError(path, not_an_image(buf)) from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InvalidImageError(path, f"image too large (possible decompression bomb): {err}") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise InvalidImageError(path, f"corrupt or truncated image ({err})") from err
    return DecodedImage(np.ascontiguousarray(pixels), height, width)


def _jpeg_reduction(width: int, height: int, reduce_to: int | None) -> int:
    if not reduce_to:
        return 1
    factor = 1
    for f in (2, 4, 8):
        if min(width, height) // f >= reduce_to:
            factor = f
    return factor


def _exif_orientation(buf: bytes) -> int:
    """The EXIF orientation tag of a JPEG (1 when absent or unreadable: shown as stored)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the size was checked before; only the header is read
            with Image.open(io.BytesIO(buf)) as im:
                return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # a damaged EXIF block does not make the pixels unusable
        return 1


def _decode_jpeg(path: Path, buf: bytes, max_pixels: int, min_side: int,
                 reduce_to: int | None) -> DecodedImage:
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(buf, strict=False)  # size without decoding
    except ValueError as err:
        raise InvalidImageError(path, f"corrupt JPEG header ({err})") from err
    _check_size(path, width, height, max_pixels, min_side)
    factor = _jpeg_reduction(width, height, reduce_to)
    minimum = {"min_height": -(-height // factor), "min_width": -(-width // factor)} if factor > 1 else {}
    try:  # strict: libjpeg fills a truncated or damaged scan with grey and only warns
        pixels = simplejpeg.decode_jpeg(buf, colorspace="GRAY", strict=True, **minimum)[..., 0]
    except ValueError as err:
        message = " ".join(str(err).split())
        lowered = message.lower()
        if "color conversion" in lowered or "colorspace" in lowered:  # CMYK/YCCK: Pillow converts
            return _decode_with_pillow(path, buf, max_pixels, min_side)
        if any(sign in lowered for sign in _DAMAGED_SCAN):
            reason = "truncated" if "premature end" in lowered else "corrupt"
            raise InvalidImageError(path, f"{reason} JPEG ({message})") from err
        # a warning about the file, not its pixels (stray bytes between segments, an unknown JFIF
        # version, an Adobe transform code...): decode as libjpeg does, refusing a file that stops
        # short of its end-of-image marker (a later truncation strict mode did not get to see)
        if buf.rstrip(b"\x00\r\n ")[-2:] != b"\xff\xd9":
            raise InvalidImageError(path, f"truncated JPEG (no end-of-image marker; {message})") from err
        pixels = cv2.imdecode(np.frombuffer(buf, np.uint8), _REDUCED_FLAGS.get(factor, cv2.IMREAD_GRAYSCALE))
        if pixels is None:
            raise InvalidImageError(path, f"corrupt JPEG ({message})") from err
        return DecodedImage(pixels, height, width)  # OpenCV applied the EXIF orientation
    orientation = _exif_orientation(buf)
    if orientation in _ORIENTATION:
        pixels = _ORIENTATION[orientation](pixels)
    return DecodedImage(np.ascontiguousarray(pixels), height, width)


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               min_side: int = DEFAULT_MIN_SIDE, reduce_to: int | None = None) -> DecodedImage:
    """Decode an image file (PNG 8/16-bit, JPEG, DICOM, BMP, TIFF, ...) to 8-bit grayscale.

    Args:
        path: The file. Its content decides the format (a DICOM without the 128-byte preamble by
            its first element); a ``.dcm`` suffix also lets the DICOM reader try it.
        max_pixels: Refuse images with more pixels (checked from the header, before decoding).
        min_side: Refuse images whose shorter side is smaller (e.g. 1x1 placeholders).
        reduce_to: When set, JPEGs may be decoded at 1/2, 1/4 or 1/8 scale as long as the
            shorter side stays >= ``reduce_to`` (faster; the result then differs slightly).

    Returns:
        :class:`DecodedImage` with ``(H, W) uint8`` pixels; EXIF orientation applied, alpha
        flattened onto black, 16-bit and float data windowed without their 0.01%
        darkest and brightest pixels (one extreme pixel cannot squeeze the image), MONOCHROME1 DICOMs inverted.

    Raises:
        InvalidImageError: with the path and a one-line reason (missing, empty, not an image,
            corrupt or truncated, too small, too large, DICOM without pixels).

    Example:
        >>> img = read_image("images/cohen-1.jpg", reduce_to=224)  # doctest: +SKIP
        >>> img.pixels.dtype, img.pixels.ndim
        (dtype('uint8'), 2)
    """
    if storage.is_url(path):  # an object store's file: fetched whole, then decoded like a local one
        return decode_image(_read_url(str(path)), str(path), max_pixels=max_pixels, min_side=min_side,
                            reduce_to=reduce_to)
    path = Path(path)
    return decode_image(_read_bytes(path), path, max_pixels=max_pixels, min_side=min_side, reduce_to=reduce_to)


def _read_url(url: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a file at an fsspec URL (at most ``max_bytes``), or a one-line reason."""
    problem = storage.problem(url)
    if problem:
        raise InvalidImageError(url, problem)
    try:
        fs, inner = storage.filesystem(url)
        if fs.size(inner) > max_bytes:
            raise InvalidImageError(url, f"file too large (> {max_bytes / 2**20:.0f} MB)")
        return fs.cat_file(inner)
    except OSError as err:
        raise InvalidImageError(url, f"cannot read file ({err})") from err


def decode_image(buf: bytes, name: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 min_side: int = DEFAULT_MIN_SIDE, reduce_to: int | None = None) -> DecodedImage:
    """:func:`read_image` for bytes already in memory (an upload); ``name`` labels errors and, by a
    ``.dcm`` suffix, lets the DICOM reader try data no other format claims.

    Raises:
        InvalidImageError: as :func:`read_image`, naming ``name``; also for empty data.
    """
    path = Path(name)
    if not buf:
        raise InvalidImageError(path, "empty file (0 bytes)")
    try:
        kind = sniff_format(buf, path)
        if kind == "jpeg":
            return _decode_jpeg(path, buf, max_pixels, min_side, reduce_to)
        if kind == "dicom":
            pixels = dicom_to_uint8(io.BytesIO(buf), path=path, max_pixels=max_pixels)
            _check_size(path, pixels.shape[1], pixels.shape[0], max_pixels, min_side)
            return DecodedImage(pixels, pixels.shape[0], pixels.shape[1])
        return _decode_with_pillow(path, buf, max_pixels, min_side)
    except InvalidImageError:
        raise
    except MemoryError as err:
        raise InvalidImageError(path, "not enough memory to decode the image") from err
    except Exception as err:  # a codec's own error type: still one file's one-line reason, never a crash
        raise InvalidImageError(path, f"cannot decode ({type(err).__name__}: {err})") from err


def is_image_file(path: Path) -> bool:
    """Whether a file found in a folder is an image: by its suffix, or (any other suffix, or none:
    ``.jfif``, ``IMG0001``, a DICOM saved as ``.dat``) by its first bytes (:func:`sniff_format`)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    if file_problem(path):  # not a regular file: decided by its suffix alone (reading it would say why)
        return False
    try:
        with open(path, "rb") as f:
            return sniff_format(f.read(132)) is not None
    except OSError:
        return False


def find_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders searched recursively for images (by suffix, or by content for any other
    name: :func:`is_image_file`), sorted.

    Entries that are not regular files (a FIFO, a device, a broken or looping link) but carry an image
    suffix are listed too, so that reading them says why they were skipped instead of leaving them out
    unnoticed; folders are searched, not listed; the other files a folder holds are named in a warning
    (hidden files aside). Missing inputs are kept (reading them reports "file not found").
    """
    out: list[Path] = []
    for item in map(Path, inputs):
        try:
            is_dir = item.is_dir()
        except OSError:  # a name or path over the system's length limit: reading it says so, for that input only
            is_dir = False
        if not is_dir:
            out.append(item)
            continue
        found, others = [], []
        for path in sorted(item.rglob("*")):
            if path.is_dir() or any(part.startswith(".") for part in path.relative_to(item).parts):
                continue
            (found if is_image_file(path) else others).append(path)
        if others:
            log.warning("%s: %d file(s) left out, not images by their content (e.g. %s)", item, len(others),
                        ", ".join(os.fsdecode(os.fsencode(p.relative_to(item))).encode("utf-8", "backslashreplace")
                                  .decode() for p in others[:3]))
        if not found:
            log.warning("%s: no image files in this folder", item)
        out += found
    return out


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a lung mask as ``(H, W) bool`` (foreground > 127), resized (nearest) to ``shape``.

    Raises:
        InvalidImageError: the mask file is missing or unreadable.
    """
    decoded = read_image(path, min_side=1)
    mask = decoded.pixels
    if shape is not None and mask.shape != tuple(shape):
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return mask > 127
