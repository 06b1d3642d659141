"""`fusion-model synth`: write a synthetic cohort."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fusion_model.console import console
from fusion_model.errors import UserInputError


app = typer.Typer()


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", help="cohort directory to create")],
    patients: Annotated[int, typer.Option(help="number of patients")] = 100,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    centres: Annotated[int, typer.Option(help="number of centres (1-3)")] = 3,
    phases: Annotated[str, typer.Option(help="comma-separated phases")] = "unenhanced,venous",
    two_lesion_fraction: Annotated[float, typer.Option(help="share of patients with a lesion on each side")] = 0.08,
    without_masks: Annotated[int, typer.Option(
        "--without-masks", help="add this many patients whose lesions have no mask yet (for segment predict)")] = 0,
    second_reader: Annotated[bool, typer.Option(
        "--second-reader", help="also write a second reader's outlines (mask_path_b), for fusion-model agreement")] = False,
    output_format: Annotated[str, typer.Option(
        "--format", help="cohort: a cohort directory; dicom: the same cohort as a hospital's PACS export "
        "(identified DICOM studies with SEG outlines, a clinical table keyed on AccessionNumber, and the truth), "
        "for fusion-model import-dicom")] = "cohort",
    wrong_description_fraction: Annotated[float, typer.Option(
        help="--format dicom: share of phase series whose description names another phase")] = 0.1,
    workers: Annotated[int, typer.Option(help="processes (0 = automatic)")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing cohort directory")] = False,
) -> None:
    """Write a synthetic cohort (CT phantoms, masks, clinical table, truth.csv with oracle risks).

    Phases: any of unenhanced, arterial, venous, delayed (e.g. --phases unenhanced,arterial,venous)."""
    from fusion_model.config import SynthConfig
    from fusion_model.configbase import parse_model
    from fusion_model.synthetic.generate import synthesize_cohort

    config = parse_model(SynthConfig, {
        "patients": patients, "seed": seed, "centres": centres, "two_lesion_fraction": two_lesion_fraction,
        "workers": workers, "phases": [p.strip() for p in phases.split(",") if p.strip()],
        "patients_without_masks": without_masks, "second_reader": second_reader,
    }, "synth options")
    if output_format not in ("cohort", "dicom"):
        raise UserInputError(f"--format {output_format}: choose cohort or dicom")
    if not 0 <= wrong_description_fraction <= 1:
        raise UserInputError("--wrong-description-fraction: give a share between 0 and 1")
    if output_format == "cohort":
        synthesize_cohort(out, config, overwrite=overwrite)
    else:
        import tempfile

        from fusion_model.fileio import check_output_dir
        from fusion_model.synthetic.dicom_export import write_dicom_export

        check_output_dir(out, overwrite)
        with tempfile.TemporaryDirectory(prefix="fusion-model-synth-") as tmp:
            cohort = synthesize_cohort(Path(tmp) / "cohort", config)
            write_dicom_export(cohort, out, seed=seed, wrong_description_fraction=wrong_description_fraction,
                               workers=workers, overwrite=overwrite)
        console.print(f"the export is {out / 'dicom'}; the hospital's table {out / 'hospital_table.csv'}")
    console.print(f"wrote {out}")
