"""Checks on an upload before any decoding: size, and what its bytes say it is (never its name)."""

from __future__ import annotations

from pathlib import PurePath

from cxrlab.data.dicom import DICOM_SUFFIXES, is_dicom_bytes

_MAGIC = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg", b"II*\x00": "tiff", b"MM\x00*": "tiff"}
ACCEPTED = "PNG, JPEG, TIFF or DICOM"


class UploadRejected(Exception):
    """An upload refused before decoding, with the HTTP status and the reason for the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def safe_name(filename: str | None) -> str:
    """The upload's base name only (a client-supplied path never reaches the file system)."""
    name = PurePath((filename or "upload").replace("\\", "/")).name
    return name[:200] or "upload"


def sniff(buf: bytes, name: str) -> str:
    """The image format the content shows: ``png``, ``jpeg``, ``tiff`` or ``dicom``.

    DICOM is recognised by its ``DICM`` magic, or (files written without the preamble) by a ``.dcm``
    name; the decoder then proves it.

    Raises:
        UploadRejected: empty (400), or not one of the accepted formats (415).
    """
    if not buf:
        raise UploadRejected(400, "empty upload (0 bytes)")
    for magic, kind in _MAGIC.items():
        if buf.startswith(magic):
            return kind
    if is_dicom_bytes(buf) or PurePath(name).suffix.lower() in DICOM_SUFFIXES:
        return "dicom"
    head = buf[:16]
    looks = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "binary data"
    raise UploadRejected(415, f"{name}: not a {ACCEPTED} image (the content looks like {looks})")
