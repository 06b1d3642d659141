"""`fusion-model import-dicom`: a PACS export to a cohort directory, and its console output."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from fusion_model.console import SchedulerOption, console

app = typer.Typer()


@app.command("import-dicom")
def import_dicom_command(
    export: Annotated[Path, typer.Argument(help="folder of the DICOM export (any nesting, any file names)")],
    out: Annotated[Path, typer.Option("--out", help="cohort directory to create")],
    clinical: Annotated[Path | None, typer.Option(
        "--clinical", help="the hospital's table (CSV) with labels, lesion types, labs ..., keyed on a column "
        "StudyInstanceUID, AccessionNumber or PatientID; merged into clinical.csv")] = None,
    key_file: Annotated[Path | None, typer.Option(
        "--key-file", help="pseudonymisation key (keep it, outside the cohort: the same key gives the same ids on "
        "every later import); default: COHORT.key beside --out")] = None,
    new_key: Annotated[bool, typer.Option("--new-key", help="create the key file (first import of a project)")] = False,
    phases: Annotated[str | None, typer.Option(
        help="phases the cohort needs, e.g. unenhanced,venous (studies lacking one are left out); default: those "
        "every imported study has")] = None,
    keep_dicom: Annotated[bool, typer.Option(
        "--keep-dicom", help="point at the DICOM series (links to the export's files, which stay identified) "
        "instead of writing NIfTI volumes")] = False,
    mapping_file: Annotated[Path | None, typer.Option(
        "--mapping-file", help="also write the mapping from pseudonyms to PatientID, AccessionNumber and "
        "StudyInstanceUID to this CSV (outside the cohort; identifying: keep it safe)")] = None,
    prefer_thickness_mm: Annotated[float | None, typer.Option(
        "--prefer-thickness-mm", help="choose the reconstruction closest to this slice thickness (default: the "
        "thinnest soft-tissue one)")] = None,
    allow_sharp_kernel: Annotated[bool, typer.Option(
        "--allow-sharp-kernel", help="do not put soft-tissue kernels before sharp (bone, lung) ones")] = False,
    min_slices: Annotated[int, typer.Option(help="fewer slice positions than this: not a volume")] = 8,
    compress: Annotated[bool, typer.Option(
        "--compress/--no-compress", help="gzip the NIfTI volumes; --no-compress imports several times faster and "
        "takes about twice the space")] = True,
    centre: Annotated[str | None, typer.Option(
        help="centre name for every study (default: the table's centre column, else InstitutionName)")] = None,
    workers: Annotated[int, typer.Option(help="processes (0 = as many as cores, up to 4)")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing cohort directory")] = False,
    scheduler: SchedulerOption = None,
) -> None:
    """Turn a PACS export (CT studies, DICOM SEG / RTSTRUCT outlines) into a pseudonymised cohort directory:
    cohort.json, clinical.csv, NIfTI volumes per phase, masks, and import_report.html + series.csv saying what
    was done with every series and why."""
    from fusion_model.configbase import parse_model
    from fusion_model.dicom_import.build import ImportOptions, import_dicom, warn_notes

    options = parse_model(ImportOptions, {
        "phases": [p.strip() for p in phases.split(",") if p.strip()] if phases else None,
        "keep_dicom": keep_dicom, "min_slices": min_slices, "prefer_thickness_mm": prefer_thickness_mm,
        "allow_sharp_kernel": allow_sharp_kernel, "centre": centre, "workers": workers, "compress": compress,
    }, "import-dicom options")
    key_file = key_file or out.parent / f"{out.name}.key"
    from fusion_model.engine import Engine, EngineSettings

    with Engine(EngineSettings(scheduler=scheduler)) as engine:
        result = import_dicom(export, out, key_file, new_key=new_key, clinical=clinical, mapping_file=mapping_file,
                              options=options, overwrite=overwrite, engine=engine)
    warn_notes(result.notes)
    if result.key_created:
        console.print(f"created the pseudonymisation key {key_file}: keep it (outside the cohort); later imports "
                      "need it to give the same patients the same ids")
    decisions = Counter(s.decision for s in result.series)
    scan = result.scan
    console.print(f"read {scan.files} files: {len(scan.headers)} DICOM, {len(scan.not_dicom)} not DICOM, "
                  f"{len(scan.unreadable)} unreadable")
    console.print("series: " + ", ".join(f"{k} {v}" for k, v in sorted(decisions.items())))
    disagreements = sum(1 for s in result.series if s.phase_source.startswith("image (the headers said"))
    imported = sum(1 for s in result.studies if s.imported)
    console.print(f"{imported} of {len(result.studies)} studies imported: {len(result.rows)} lesion rows, "
                  f"{result.rows['patient_id'].nunique()} patients, phases {', '.join(result.phases)}; "
                  f"{int(result.rows['mask_path'].isna().sum())} without an outline; "
                  f"{disagreements} series whose image contradicted its headers' phase")
    console.print(f"wrote {out} (check {out / 'import_report.html'} before trusting it)")
