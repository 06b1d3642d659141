"""`fusion-model import-medmnist`: a MedMNIST 3D npz as a cohort."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fusion_model.cohort.commands import print_problems, print_summary
from fusion_model.console import console


app = typer.Typer()


@app.command("import-medmnist")
def import_medmnist_command(
    npz: Annotated[Path, typer.Argument(help="MedMNIST-format 3D npz (any of train/val/test splits)")],
    out: Annotated[Path, typer.Option("--out", help="cohort directory to create")],
    fov_mm: Annotated[float, typer.Option("--fov-mm", help="physical edge of each cube")] = 64.0,
    name: Annotated[str | None, typer.Option(help="cohort name")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
) -> None:
    """Turn a MedMNIST 3D npz (e.g. AdrenalMNIST3D) into a cohort directory with shape features."""
    from fusion_model.cohort import validate_cohort
    from fusion_model.datasets.medmnist import import_medmnist

    import_medmnist(npz, out, field_of_view_mm=fov_mm, name=name, overwrite=overwrite)
    report = validate_cohort(out, progress=False)
    print_summary(report.summary)
    print_problems(report.problems)
    console.print(f"wrote {out}")
