"""Atomic file writes and portable relative paths.

Every file cxrlab writes goes through a temporary file and ``os.replace`` so a run killed
half-way never leaves a truncated result behind (issue 2: "nothing already written is lost").
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename).

    Args:
        path: Destination; its folder is created when missing.
        data: Bytes to write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically; see :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def relative_to_or_absolute(path: str | Path, start: str | Path) -> str:
    """Return ``path`` relative to folder ``start`` (POSIX separators), or absolute if impossible.

    Tables cxrlab writes store image paths relative to their own folder, so a data folder and
    its tables can move together.
    """
    path = Path(path).resolve()
    try:
        return Path(os.path.relpath(path, Path(start).resolve())).as_posix()
    except ValueError:  # different drive on Windows
        return path.as_posix()
