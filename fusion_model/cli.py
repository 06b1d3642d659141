"""The `fusion-model` command line: an assembler of the subpackages' commands.

Each subpackage owns its commands and their console output (``<package>/commands.py``); this module mounts
them on one typer app, turns user errors (:class:`fusion_model.errors.FusionModelError`) into one line and exit
code 2, and prints fusion-model's warnings as one line each. Heavy libraries are imported inside the commands
so that `--help` stays fast.
"""

from __future__ import annotations

import sys
import warnings

import typer
from rich.text import Text

from fusion_model import commands as pipeline_commands
from fusion_model.agreement import commands as agreement_commands
from fusion_model.cohort import commands as cohort_commands
from fusion_model.console import err_console
from fusion_model.datasets import commands as dataset_commands
from fusion_model.dicom_import import commands as dicom_import_commands
from fusion_model.encoder import commands as encoder_commands
from fusion_model.errors import FusionModelError, FusionModelWarning
from fusion_model.evaluate import commands as evaluate_commands
from fusion_model.explain import commands as explain_commands
from fusion_model.reader_study import commands as reader_study_commands
from fusion_model.segment import commands as segment_commands
from fusion_model.synthetic import commands as synthetic_commands
from fusion_model.tune import commands as tune_commands

app = typer.Typer(
    name="fusion-model",
    help="CT + clinical fusion models for adrenal lesion malignancy risk (a research tool, not a medical device).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# In the order of the work: the cohort, its images, the model, what it says and why, and the studies around it.
for commands in (cohort_commands, dicom_import_commands, synthetic_commands, dataset_commands, pipeline_commands, evaluate_commands,
                 explain_commands, tune_commands, encoder_commands, agreement_commands):
    app.add_typer(commands.app)
app.add_typer(segment_commands.app, name="segment")
app.add_typer(reader_study_commands.app, name="reader-study")

_PYTHON_SHOWWARNING = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """fusion-model's own warnings as one 'warning:' line on stderr; others as Python prints them."""
    if issubclass(category, FusionModelWarning):
        err_console.print(Text.assemble(("warning:", "yellow"), f" {message}"), highlight=False, soft_wrap=True)
    else:
        _PYTHON_SHOWWARNING(message, category, filename, lineno, file, line)


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2; fusion-model's warnings one
    line each."""
    warnings.showwarning = _show_warning
    try:
        app()
    except FusionModelError as err:
        err_console.print(Text.assemble(("error:", "red"), f" {err}"), highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
