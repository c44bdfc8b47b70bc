"""DICOM reading with pydicom: header fields and display-ready pixels.

Pixel conversion follows the DICOM display pipeline: modality LUT (rescale slope/intercept),
then VOI LUT or window centre/width, then inversion of MONOCHROME1 so that bone is bright,
then a robust window to 8 bits (without the 0.01% most extreme pixels at each end:
:func:`cxrlab.data._pixels.scale_to_uint8`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from cxrlab.core.errors import InvalidImageError
from cxrlab.data._pixels import scale_to_uint8

log = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".dicom")
_HEADER_TAGS = ["PatientID", "ViewPosition", "Modality", "Rows", "Columns", "BodyPartExamined"]


_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD", b"OF",
        b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI", b"UL", b"UN",
        b"UR", b"US", b"UT", b"UV"}  # DICOM PS3.5 table 6.2-1


def _starts_like_a_dataset(buf: bytes) -> bool:
    """A DICOM written without its preamble (older modalities, some PACS exports): its first element is a
    little-endian tag of group 0002 (file meta) or 0008 (identification) with a valid explicit VR, or,
    implicit VR, a plausible 4-byte length. Only recognises; reading the file proves it."""
    if len(buf) < 8:
        return False
    group, element = int.from_bytes(buf[0:2], "little"), int.from_bytes(buf[2:4], "little")
    if group not in (0x0002, 0x0008) or element > 0x1FFF:
        return False
    if buf[4:6] in _VRS:
        return True
    return group == 0x0008 and int.from_bytes(buf[4:8], "little") < 1024  # implicit VR little endian


def is_dicom_bytes(buf: bytes) -> bool:
    """True when ``buf`` is a DICOM file's start: the preamble magic ``DICM`` at byte 128, or a dataset
    written without the preamble (:func:`_starts_like_a_dataset`)."""
    return (len(buf) >= 132 and buf[128:132] == b"DICM") or _starts_like_a_dataset(buf)


def _read(source: Any, **kwargs) -> pydicom.Dataset:
    """``pydicom.dcmread``; a dataset without the preamble (recognised by :func:`is_dicom_bytes`) is read
    with ``force=True``, its transfer syntax taken from its file meta or, without one, from how its first
    element is encoded."""
    try:
        return pydicom.dcmread(source, **kwargs)
    except InvalidDicomError:
        head = _peek(source)
        if not _starts_like_a_dataset(head):  # pydicom's own text suggests force=True, which is not the user's
            raise InvalidDicomError("no DICM marker at byte 128 and no DICOM element at its start") from None
    ds = pydicom.dcmread(source, force=True, **kwargs)
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        ds.file_meta = meta if meta is not None else pydicom.dataset.FileMetaDataset()
        explicit = head[4:6] in _VRS
        ds.file_meta.TransferSyntaxUID = (pydicom.uid.ExplicitVRLittleEndian if explicit
                                          else pydicom.uid.ImplicitVRLittleEndian)
    return ds


def _peek(source: Any) -> bytes:
    """The first bytes of a path or a seekable file object (its position kept at 0 for the next read)."""
    if isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            return f.read(8)
    source.seek(0)
    head = source.read(8)
    source.seek(0)
    return head


def read_dicom_header(path: str | Path) -> dict[str, Any]:
    """Read patient id, view, modality and size from a DICOM header without its pixels.

    Returns:
        ``{"patient_id", "view", "modality", "rows", "columns", "body_part"}``; missing
        fields are empty strings or 0.

    Raises:
        InvalidImageError: the file is not a readable DICOM.
    """
    try:
        ds = _read(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        # pydicom decodes values lazily, on access: a damaged element fails here, not in dcmread
        return {
            "patient_id": str(ds.get("PatientID", "") or ""),
            "view": str(ds.get("ViewPosition", "") or ""),
            "modality": str(ds.get("Modality", "") or ""),
            "rows": int(ds.get("Rows", 0) or 0),
            "columns": int(ds.get("Columns", 0) or 0),
            "body_part": str(ds.get("BodyPartExamined", "") or ""),
        }
    except InvalidDicomError as err:
        raise InvalidImageError(path, f"not a readable DICOM file ({err})") from err
    except Exception as err:  # pydicom raises many types (struct.error, KeyError, TypeError, ...) for damaged headers
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise InvalidImageError(path, f"not a readable DICOM file (damaged header: {reason})") from err


def _check_number(ds: pydicom.Dataset, tag: str, name: str | Path) -> None:
    """A numeric header field the pixel pipeline uses is a finite number (pydicom keeps a bad DS as text)."""
    if tag not in ds:
        return
    raw = ds[tag].value
    try:
        ok = raw is None or raw == "" or bool(np.isfinite(float(raw)))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InvalidImageError(name, f"DICOM {tag} {str(raw)!r} is not a number")


def dicom_to_uint8(source: str | Path | Any, *, path: str | Path | None = None,
                   max_pixels: int | None = None) -> np.ndarray:
    """Decode a DICOM's first frame to a display-ready grayscale image.

    Args:
        source: A path, a file-like object or an already-read ``pydicom.Dataset``.
        path: Name used in error messages when ``source`` is not a path.
        max_pixels: Refuse images with more pixels than this before decoding them.

    Returns:
        ``(H, W) uint8`` in [0, 255], bright = dense (MONOCHROME1 inverted).

    Raises:
        InvalidImageError: not a DICOM, no pixel data, an undecodable transfer syntax, too many
            pixels, or a display header (rescale, window) that makes no sense.
    """
    name = path if path is not None else (source if isinstance(source, (str, Path)) else "<dicom>")
    try:
        ds = source if isinstance(source, pydicom.Dataset) else _read(source)
        has_pixels = "PixelData" in ds
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)  # decoded lazily: may fail here
    except InvalidDicomError as err:
        raise InvalidImageError(name, f"not a readable DICOM file ({err})") from err
    except Exception as err:  # pydicom raises many types (struct.error, KeyError, TypeError, ...) for damaged headers
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise InvalidImageError(name, f"not a readable DICOM file (damaged header: {reason})") from err
    if not has_pixels:
        raise InvalidImageError(name, "DICOM has no pixel data")
    if max_pixels is not None and rows * cols > max_pixels:
        raise InvalidImageError(
            name, f"image too large ({cols}x{rows} = {rows * cols / 1e6:.1f} MP > limit "
            f"{max_pixels / 1e6:.1f} MP); raise --max-pixels to accept it")
    try:
        arr = ds.pixel_array
    except Exception as err:  # pydicom raises many types for missing codecs / bad data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise InvalidImageError(
            name, f"cannot decode DICOM pixels (transfer syntax {syntax}): {err}") from err
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        log.warning("%s: multi-frame DICOM; using the first frame", name)
        arr = arr[0]
    if arr.ndim == 3:  # colour (RGB / YBR) secondary capture
        arr = arr.astype(np.float32).mean(axis=2)
    for tag in ("RescaleSlope", "RescaleIntercept"):
        _check_number(ds, tag, name)
    try:
        arr = apply_modality_lut(arr, ds)
        arr = apply_voi_lut(arr, ds)
    except (ValueError, TypeError, IndexError, KeyError) as err:  # e.g. WindowWidth 0 or a malformed LUT
        raise InvalidImageError(name, f"bad DICOM display header ({err})") from err
    out = scale_to_uint8(np.asarray(arr), name)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 255 - out
    return out
