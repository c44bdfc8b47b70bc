"""Atomic file writes and portable relative paths.

Every file cxrlab writes goes through a temporary file and ``os.replace`` so a run killed
half-way never leaves a truncated result behind (issue 2: "nothing already written is lost").
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path


def printable(name: str | os.PathLike) -> str:
    """A file name as text that any output can hold: bytes that are not UTF-8 (a Linux name may hold
    any byte; Python keeps them as surrogates, which a CSV, JSON or terminal refuses) shown as
    ``\\xNN`` escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


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


def absolute_path(path: str | Path) -> Path:
    """``path`` made absolute and normalised without touching the file system: a symbolic link stays
    the entry its table named (``Path.resolve`` would name its target, and raises on a link loop,
    which one bad entry in a table of thousands must not do; reading the file later says why it is
    skipped)."""
    return Path(os.path.abspath(path))


def file_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a regular file that can be read (a few words), or None when it is one.

    A FIFO would block a reader and a device never end, so only regular files pass.
    """
    path = Path(path)
    try:
        info = path.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symbolic link loop"
        if isinstance(err, FileNotFoundError):
            return "broken symbolic link" if path.is_symlink() else "file not found"
        return f"cannot read file ({err.strerror or err})"
    if stat.S_ISDIR(info.st_mode):
        return "is a directory, not a file"
    if not stat.S_ISREG(info.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode)
                else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "special")
        return f"not a regular file ({kind})"
    return None


def relative_to_or_absolute(path: str | Path, start: str | Path) -> str:
    """Return ``path`` relative to folder ``start`` (POSIX separators), or absolute if impossible.

    Tables cxrlab writes store image paths relative to their own folder, so a data folder and
    its tables can move together.
    """
    path = absolute_path(path)
    try:
        return Path(os.path.relpath(path, absolute_path(start))).as_posix()
    except ValueError:  # different drive on Windows
        return path.as_posix()
