"""Logging set-up for the command line (library code only calls ``logging.getLogger``)."""

from __future__ import annotations

import logging
import warnings

from rich.logging import RichHandler


def configure_logging(verbose: bool = False) -> None:
    """Send cxrlab's log records to stderr through rich, at INFO (or DEBUG when ``verbose``)."""
    handler = RichHandler(show_time=False, show_path=False, markup=False, rich_tracebacks=False)
    root = logging.getLogger("cxrlab")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def quiet_lightning() -> None:
    """Keep Lightning's warnings but not its per-fit INFO banners (devices, a sales tip)."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    # Lightning's own use of a deprecated torch API, repeated at every fit: nothing a user can act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
