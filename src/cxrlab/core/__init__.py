"""Core: errors, logging and seeding. Imports no other cxrlab layer."""

from __future__ import annotations

from cxrlab.core.errors import (
    ConfigError,
    CxrlabError,
    DeadlineExceeded,
    InvalidImageError,
    LeakageError,
    ManifestError,
    MissingDependencyError,
    UnknownLabelError,
)
from cxrlab.core.io import (
    atomic_write_bytes,
    atomic_write_text,
    relative_to_or_absolute,
)

__all__ = [
    "ConfigError",
    "CxrlabError",
    "DeadlineExceeded",
    "InvalidImageError",
    "LeakageError",
    "ManifestError",
    "MissingDependencyError",
    "UnknownLabelError",
    "atomic_write_bytes",
    "atomic_write_text",
    "relative_to_or_absolute",
]
