"""Paths that may be URLs: local files, or any fsspec file system (``s3://``, ``gs://``, ``hdfs://``, ...).

``prepare`` reads sources from and writes shards to either. A local path goes through
:mod:`cxrlab.core.io` (atomic renames); a URL through fsspec, whose object stores write an object
in one request (seen whole or not at all). Credentials and endpoints come the way fsspec takes
them: the file system's own settings or environment (``AWS_*``, ``AWS_ENDPOINT_URL_S3``, ...).
URLs stay strings here: ``pathlib.Path("s3://b/k")`` would fold the double slash.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from urllib.parse import urlsplit

from cxrlab.core.errors import ConfigError
from cxrlab.core.io import atomic_write_bytes, file_problem, relative_to_or_absolute
from cxrlab.core.optional import require

Location = str | Path


def is_url(path: Location) -> bool:
    """Whether ``path`` is a URL of a file system other than the local one (``file://`` is local)."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def local(path: Location) -> Path:
    """A local location as a :class:`Path` (``file://`` stripped)."""
    text = str(path)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def filesystem(url: str):
    """``(fsspec file system, path inside it)`` of a URL.

    Raises:
        MissingDependencyError: fsspec (or the protocol's package, e.g. s3fs) is not installed.
    """
    fsspec = require("fsspec", f"storage at {urlsplit(url).scheme}:// URLs")
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as err:  # the protocol's implementation is a package of its own
        raise ConfigError(f"{url}: cannot open {urlsplit(url).scheme}:// ({err})") from err


def join(base: Location, *parts: str) -> Location:
    """``base`` joined with relative ``parts`` (POSIX joins for URLs)."""
    return posixpath.join(str(base), *parts) if is_url(base) else local(base).joinpath(*parts)


def read_bytes(path: Location) -> bytes:
    """The bytes at ``path``."""
    if not is_url(path):
        return local(path).read_bytes()
    fs, inner = filesystem(str(path))
    return fs.cat_file(inner)


def write_bytes(path: Location, data: bytes) -> None:
    """Write ``data`` at ``path`` whole or not at all (a local file atomically by rename)."""
    if not is_url(path):
        atomic_write_bytes(local(path), data)
        return
    fs, inner = filesystem(str(path))
    fs.pipe_file(inner, data)


def exists(path: Location) -> bool:
    if not is_url(path):
        return local(path).exists()
    fs, inner = filesystem(str(path))
    return fs.exists(inner)


def problem(path: Location) -> str | None:
    """Why ``path`` is not a readable file (a few words), or None (:func:`cxrlab.core.io.file_problem`
    for local files)."""
    if not is_url(path):
        return file_problem(local(path))
    fs, inner = filesystem(str(path))
    try:
        return None if fs.isfile(inner) else ("is a directory, not a file" if fs.isdir(inner) else "file not found")
    except OSError as err:
        return f"cannot read file ({err})"


def glob(base: Location, pattern: str) -> list[Location]:
    """Sorted entries of ``base`` matching ``pattern`` (URLs keep their scheme)."""
    if not is_url(base):
        return sorted(local(base).glob(pattern))
    fs, inner = filesystem(str(base))
    scheme = urlsplit(str(base)).scheme
    return [f"{scheme}://{p}" for p in sorted(fs.glob(posixpath.join(inner, pattern)))]


def relative(path: Location, start: Location) -> str:
    """``path`` relative to folder ``start`` when both are on one file system (one bucket), else
    ``path`` itself: what shard tables store, so data and shards can move together."""
    if not is_url(path) and not is_url(start):
        return relative_to_or_absolute(local(path), local(start))
    a, b = urlsplit(str(path)), urlsplit(str(start))
    if (a.scheme, a.netloc) != (b.scheme, b.netloc) or not is_url(path) or not is_url(start):
        return str(path)
    return posixpath.relpath(a.path, b.path or "/")


def resolve(entry: str, base: Location) -> str:
    """An entry of a table at ``base`` (a folder), as an absolute path or URL."""
    if is_url(entry) or not entry:
        return entry
    if is_url(base):
        parts = urlsplit(posixpath.join(str(base), entry))
        return f"{parts.scheme}://{parts.netloc}{posixpath.normpath(parts.path)}"
    return str(local(base).joinpath(entry)) if not Path(entry).is_absolute() else entry
