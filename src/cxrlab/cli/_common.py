"""Shared CLI helpers: console, one-line errors, progress bars, option parsing."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cxrlab.core.errors import CxrlabError
from cxrlab.core.io import printable
from cxrlab.core.logging import quiet_lightning  # noqa: F401 -- the commands' import point

# Exit codes (docs/guide/commands.md lists them): 0 everything done; 2 a command-line usage error (Click's);
EXIT_ERROR = 1  # the command failed, with a one-line reason (an unexpected error also names a log file)
EXIT_PARTIAL = 3  # finished, but some inputs or runs failed: each is named, everything else is written

PIPE_WIDTH = 200  # columns when the output is not a terminal (rich's 80 would cut table cells)


def _console(stderr: bool = False) -> Console:
    """A console whose lines are never wrapped mid-path (``soft_wrap``) and, when writing to a file or a
    pipe, whose tables are as wide as their content up to :data:`PIPE_WIDTH`: output stays complete
    and grep-able."""
    out = Console(stderr=stderr, soft_wrap=True)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = PIPE_WIDTH
    return out


console = _console()
err_console = _console(stderr=True)


def shown(value: object) -> str:
    """A name or reason as console text: not-UTF-8 bytes escaped, and brackets not read as markup
    (``bad [final].png`` printed whole)."""
    return escape(printable(str(value)))


@contextlib.contextmanager
def handle_errors() -> Iterator[None]:
    """Turn cxrlab errors and file-system errors into a one-line message and exit code 1."""
    try:
        yield
    except (CxrlabError, OSError) as err:
        err_console.print(f"[bold red]error:[/] {shown(err)}", highlight=False, soft_wrap=True)  # "[x]" is text
        raise typer.Exit(EXIT_ERROR) from None


def exit_if_failed(failed: int, what: str) -> None:
    """After everything that succeeded is written: exit with :data:`EXIT_PARTIAL` when ``failed`` > 0."""
    if failed:
        err_console.print(f"[bold yellow]{failed} {what} failed[/] (named above); exit code {EXIT_PARTIAL}",
                          highlight=False)
        raise typer.Exit(EXIT_PARTIAL)


def progress_bar(description: str) -> Progress:
    """A rich progress bar with count, elapsed time and ETA (goes to stderr)."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=False)


def search_overrides(data: Path | None, **options: object) -> dict:
    """A study's or search's settings given as options: those given, and ``data`` replacing the
    config's data and split file."""
    overrides = {key: value for key, value in options.items() if value is not None}
    if data is not None:
        overrides["data"], overrides["splits"] = str(data), None
    return overrides


def parse_ratios(text: str) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' or '8:1:1' or '80:20' → three shares summing to 1."""
    parts = [float(p) for p in text.replace(":", ",").split(",") if p.strip()]
    if len(parts) == 2:
        parts.append(0.0)
    if len(parts) != 3 or sum(parts) <= 0:
        raise typer.BadParameter("give two or three shares, e.g. 0.8,0.1,0.1 or 8:1:1 or 80:20")
    total = sum(parts)
    return (parts[0] / total, parts[1] / total, parts[2] / total)


def parse_label_map(items: list[str] | None) -> dict[str, str | None]:
    """``['Lung_Opacity=drop', 'Viral Pneumonia=Pneumonia']`` → overrides for LabelMapper."""
    out: dict[str, str | None] = {}
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"--label-map expects RAW=CLASS or RAW=drop, got {item!r}")
        raw, target = item.split("=", 1)
        out[raw.strip()] = None if target.strip().lower() == "drop" else target.strip()
    return out


DeviceOpt = Annotated[str, typer.Option(help="auto (a GPU when there is one), cpu, cuda, cuda:N or mps.")]
PrecisionOpt = Annotated[str, typer.Option(help="32 (the same numbers on every machine), bf16, 16 (fp16, GPUs) or "
                                                "auto (bf16 where it is faster).")]


@contextlib.contextmanager
def device_policy(device: str = "auto", precision: str = "32") -> Iterator[None]:
    """Run a command's models on ``--device`` with ``--precision`` (cxrlab.core.device); inside
    :func:`handle_errors`, so a device the machine lacks is a one-line error. Keeps freed buffers
    in the heap (:func:`cxrlab.core.runtime.tune_allocator`, as training does): with glibc's
    defaults each batch's activations were mapped and unmapped again, and Lite0 at batch 32 ran at
    71-76 img/s instead of 210-235 (AMD EPYC Zen 5)."""
    from cxrlab.core.device import resolve_policy, use_policy
    from cxrlab.core.runtime import tune_allocator

    tune_allocator()
    with use_policy(resolve_policy(device, precision)):  # type: ignore[arg-type]
        yield
