"""Checks on an upload before any decoding: size, and what its bytes say it is (never its name)."""

from __future__ import annotations

from pathlib import PurePath

from cxrlab.data.images import FORMATS, not_an_image, sniff_format

ACCEPTED = FORMATS  # the service takes what `cxrlab predict` reads


class UploadRejected(Exception):
    """An upload refused before decoding, with the HTTP status and the reason for the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def safe_name(filename: str | None) -> str:
    """The upload's base name only (a client-supplied path never reaches the file system), without
    control characters (a NUL byte cannot be in a file name) and at most 150 bytes of UTF-8, so that
    a stored upload's name (a random prefix, then this) stays within the file system's 255."""
    name = PurePath((filename or "upload").replace("\\", "/")).name
    name = "".join(c for c in name if c.isprintable()).strip()
    return name.encode("utf-8", "ignore")[:150].decode("utf-8", "ignore") or "upload"


def sniff(buf: bytes, name: str) -> str:
    """The image format the content shows (see :func:`cxrlab.data.images.sniff_format`): the formats
    ``cxrlab predict`` reads, DICOM without its preamble by its first element or a ``.dcm`` name.

    Raises:
        UploadRejected: empty (400), or not one of the accepted formats (415).
    """
    if not buf:
        raise UploadRejected(400, "empty upload (0 bytes)")
    kind = sniff_format(buf, name)
    if kind is None:
        raise UploadRejected(415, f"{name}: {not_an_image(buf)}")
    return kind
