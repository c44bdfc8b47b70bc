"""``cxrlab config show``: a run's or a command line's effective training settings, and where each came from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from cxrlab.cli._common import console, handle_errors

app = typer.Typer(no_args_is_help=True, help="Training settings: what a run used, or what train would use.")


@app.command("show")
def show(
    run: Annotated[Optional[Path], typer.Argument(help="A run folder (its config.yaml); default: the settings "
                                                       "--config and --set give.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML config, as train takes it.")] = None,
    assignments: Annotated[Optional[list[str]], typer.Option("--set", help="KEY=VALUE over any setting (repeatable), "
                                                                  "as train takes them.")] = None,
    output: Annotated[str, typer.Option("--format", help="yaml (each value with its source as a comment) or json.")] = "yaml",
    changed: Annotated[bool, typer.Option("--changed", help="Only the settings that are not at their default.")] = False,
) -> None:
    """Print the effective settings, section by section, each with where its value came from: default,
    recipe, file, command line (a run folder: as its training recorded them)."""
    from cxrlab.train.config_sources import describe_sources

    with handle_errors():
        if output not in ("yaml", "json"):
            raise typer.BadParameter(f"--format must be yaml or json, got {output!r}")
        rows, recipe = describe_sources(run, config, assignments or ())
        if changed:
            rows = [r for r in rows if r["source"] != "default"]
        if output == "json":
            typer.echo(json.dumps({"recipe": recipe, "settings": rows}, indent=2))
            return
        console.print(f"recipe: {recipe}", highlight=False)
        section = None
        for row in rows:
            head, _, name = row["setting"].partition(".")
            if head != section:
                section = head
                console.print(f"{head}:", highlight=False)
            value = json.dumps(row["value"])
            console.print(f"  {name}: {escape(value)}  [dim]# {escape(row['source'])}[/]", highlight=False)
