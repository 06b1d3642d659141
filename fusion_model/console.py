"""The console every command prints to, and the few formatting helpers their presenters share.

No console markup: user and experiment text (file names, messages, "targets: [malignancy, lesion_type]") is
printed as written; colour comes from Text styles (:func:`labelled`), never from square brackets in a string.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

console = Console(soft_wrap=True, markup=False)
if not console.is_terminal:
    console.width = 160  # logs and pipes: keep tables readable
err_console = Console(stderr=True, markup=False)

CacheOption = Annotated[Path | None, typer.Option(help="image cache directory (default ~/.cache/fusion-model)")]
WorkersOption = Annotated[int | None, typer.Option(
    "--workers", help="read the images on a local Dask cluster of N worker processes (default: in this process)")]
SchedulerOption = Annotated[str | None, typer.Option(
    "--scheduler", help="read the images on the Dask cluster at this address (e.g. tcp://HOST:8786); the workers "
    "must see the cohort and the cache at the same paths")]


def labelled(label: str, style: str, text: str = "", out: Console | None = None) -> None:
    """One line: ``label`` in ``style``, then ``text`` exactly as written."""
    (out or console).print(Text.assemble((label, style), text))


def fmt_auc(value) -> str:
    """An AUC (or any figure in [0, 1]) to three decimals; '-' where it does not exist."""
    return "-" if value is None or value != value else f"{value:.3f}"


def ci_text(pair) -> str:
    """An interval as 'low-high' to three decimals; '-' where there is none."""
    return "{:.3f}-{:.3f}".format(*pair) if pair else "-"


def macro_text(value, ci) -> str:
    """A macro AUC with its bootstrap interval, e.g. '0.853 (0.781-0.912)'."""
    return fmt_auc(value) + (f" ({ci_text(ci)})" if ci else "")
