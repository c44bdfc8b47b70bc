"""Command line: ``cxrlab COMMAND --help``. Commands are thin: parse, call a layer, print."""

from __future__ import annotations

import sys

import typer

from cxrlab.cli._common import EXIT_ERROR, err_console
from cxrlab.cli.config_command import app as config_app
from cxrlab.cli.data_commands import audit, manifest, split, synth
from cxrlab.cli.demo import demo
from cxrlab.cli.doctor import doctor
from cxrlab.cli.evaluate_command import compare_command, evaluate_command
from cxrlab.cli.explain_command import explain_command
from cxrlab.cli.prepare_command import prepare_command
from cxrlab.cli.screen_commands import export_command, predict_command, serve_command
from cxrlab.cli.segment_command import app as segment_app
from cxrlab.cli.study_command import study_command
from cxrlab.cli.train_commands import backbones, train_command
from cxrlab.cli.tune_command import tune_command
from cxrlab.core.logging import configure_logging, write_crash_log

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="cxrlab: transfer-learning studies and explainable screening on chest X-rays "
                       "(research use only, not for clinical diagnosis).")


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    configure_logging(verbose)


app.command("synth")(synth)
app.command("manifest")(manifest)
app.command("split")(split)
app.command("audit")(audit)
app.command("prepare")(prepare_command)
app.command("train")(train_command)
app.command("backbones")(backbones)
app.command("evaluate")(evaluate_command)
app.command("explain")(explain_command)
app.command("compare")(compare_command)
app.command("predict")(predict_command)
app.command("serve")(serve_command)
app.command("export")(export_command)
app.command("study")(study_command)
app.command("tune")(tune_command)
app.add_typer(segment_app, name="segment")
app.add_typer(config_app, name="config")
app.command("demo")(demo)
app.command("doctor")(doctor)


def main() -> None:
    """Console-script entry point: an unexpected exception prints one line and the log file that holds
    its traceback (exit code 1), never a bare traceback."""
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted", highlight=False)
        sys.exit(130)
    except Exception as err:  # the last line of defence: one line for the user, the trace in a file
        log = write_crash_log()
        reason = " ".join(str(err).split()) or "(no message)"
        where = f"traceback in {log}" if log else "traceback above"
        err_console.print(f"[bold red]error:[/] unexpected {type(err).__name__}: {reason} ({where}; please report it)",
                          highlight=False, soft_wrap=True)
        sys.exit(EXIT_ERROR)
