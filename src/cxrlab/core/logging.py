"""Logging set-up for the command line (library code only calls ``logging.getLogger``)."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

from rich.logging import RichHandler


def configure_logging(verbose: bool = False) -> None:
    """Send cxrlab's log records to stderr (through rich on a terminal, plain lines otherwise), at INFO
    (or DEBUG when ``verbose``)."""
    handler: logging.Handler
    if sys.stderr.isatty():
        handler = RichHandler(show_time=False, show_path=False, markup=False, rich_tracebacks=False)
    else:  # a file or a pipe: one plain line per record, never wrapped, so it can be grepped
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger("cxrlab")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def quiet_lightning() -> None:
    """Keep Lightning's warnings but not its per-fit INFO banners (devices, a sales tip)."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    # Lightning's own use of a deprecated torch API, repeated at every fit: nothing a user can act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def write_crash_log() -> Path | None:
    """Write the exception being handled, with its traceback and the command line, to a new file under
    ``$CXRLAB_LOG_DIR`` (default: ``<temp dir>/cxrlab-logs``); returns its path, or None (and prints the
    traceback to stderr instead) when no file can be written there."""
    text = f"command: {' '.join(sys.argv)}\n\n{traceback.format_exc()}"
    folder = Path(os.environ.get("CXRLAB_LOG_DIR") or Path(tempfile.gettempdir()) / "cxrlab-logs")
    path = folder / f"cxrlab-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError:
        sys.stderr.write(text)
        return None
    return path
