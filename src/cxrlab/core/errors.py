"""Error types. Each derives from :class:`CxrlabError` and a builtin, so callers may catch either."""

from __future__ import annotations

from pathlib import Path


class CxrlabError(Exception):
    """Base class of every error cxrlab raises on purpose."""


class ConfigError(CxrlabError, ValueError):
    """A setting has an invalid value; the message names the field."""


class ManifestError(CxrlabError, ValueError):
    """A manifest, metadata CSV or split file is malformed (missing columns, bad values)."""


class LeakageError(CxrlabError, ValueError):
    """A split puts one patient on two sides (train/val/test or two CV folds)."""


class DeadlineExceeded(CxrlabError, TimeoutError):
    """Work stopped because the time it was given ran out (a service's request time limit)."""


class MissingDependencyError(CxrlabError, RuntimeError):
    """An optional system dependency (e.g. Java for Spark) is missing."""


class _FileError(CxrlabError):
    """An error about one file; ``str()`` is ``'<path>: <reason>'``."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # one line, whatever a codec's message held
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep picklable across process pools and Spark tasks
        return (type(self), (self.path, self.reason))


class InvalidImageError(_FileError, ValueError):
    """An image file cannot be used: missing, empty, corrupt, too small, too large or not an image."""


class UnknownLabelError(_FileError, ValueError):
    """An image's label (folder name, finding text) maps to no class of the chosen scheme."""
