"""A cohort's commands and their console output: `validate` and `schema` (the contract), `features` (its
radiological features as CSV) and `preprocess` (its lesion-centred crops into the cache)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from fusion_model.console import CacheOption, SchedulerOption, WorkersOption, console, labelled
from fusion_model.errors import UserInputError


app = typer.Typer()


def print_summary(summary: dict) -> None:
    """The cohort's summary table: lesions, patients, centres, labels, types, phases, masks, missingness."""
    table = Table(title=f"cohort {summary.get('name', '')}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("lesions", str(summary["lesions"]))
    table.add_row("patients", str(summary["patients"]))
    table.add_row("centres", ", ".join(f"{k}: {v}" for k, v in summary["centres"].items()))
    if "class_balance" in summary:
        cb = summary["class_balance"]
        share = cb["malignant"] / max(1, cb["benign"] + cb["malignant"])
        table.add_row("label", summary["label_meaning"])
        table.add_row("class balance", f"0: {cb['benign']}, 1: {cb['malignant']} ({share:.0%} label 1)"
                      + (f", unlabelled {cb['unlabelled']}" if cb["unlabelled"] else ""))
        table.add_row("malignant by centre", ", ".join(f"{k}: {v}" for k, v in summary["malignant_by_centre"].items()))
    if "lesion_types" in summary:
        table.add_row("lesion types", ", ".join(f"{k}: {v}" for k, v in summary["lesion_types"].items()))
    if "splits" in summary:
        table.add_row("splits", ", ".join(f"{k}: {v}" for k, v in summary["splits"].items()))
    table.add_row("phases (lesions with file)", ", ".join(f"{k}: {v}" for k, v in summary["phases"].items()))
    if summary.get("mask_sources"):
        table.add_row("masks", ", ".join(f"{k}: {v}" for k, v in summary["mask_sources"].items()))
    if "second_reader_masks" in summary:
        table.add_row("second reader's masks", str(summary["second_reader_masks"]))
    missing = {k: v for k, v in summary["missing_percent"].items() if v > 0}
    table.add_row("missing (% of lesions)", ", ".join(f"{k}: {v:g}%" for k, v in missing.items()) or "none")
    console.print(table)


def print_problems(problems, limit: int = 200) -> None:
    """The problems found, one row each (the first ``limit``)."""
    if not problems:
        return
    table = Table(title=f"{len(problems)} problem(s)", show_lines=False)
    for column in ("severity", "where", "problem"):
        table.add_column(column, overflow="fold")
    for p in problems[:limit]:
        style = "red" if p.severity == "error" else "yellow"
        table.add_row(Text(p.severity, style=style), p.where, p.message)
    console.print(table)
    if len(problems) > limit:
        console.print(f"... and {len(problems) - limit} more (use --json to get them all)")


@app.command()
def validate(
    cohort: Annotated[Path, typer.Argument(help="cohort directory (cohort.json, clinical.csv, images, masks)")],
    require_labels: Annotated[bool, typer.Option("--require-labels", help="every lesion must have a label")] = False,
    resample: Annotated[bool, typer.Option("--resample", help="accept phases/masks on different grids "
                                                              "(they will be resampled onto the reference phase)")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write summary and problems as JSON")] = None,
    masks_b: Annotated[Path | None, typer.Option("--masks-b", help="folder of a second reader's masks, named as the "
                                                                   "mask_path files: checked like the first")] = None,
    workers: WorkersOption = None,
    scheduler: SchedulerOption = None,
) -> None:
    """Check a cohort directory: table schema, files, masks, geometry, split leakage. Exit 2 on errors."""
    from fusion_model.cohort import validate_cohort
    from fusion_model.engine import Engine, EngineSettings
    from fusion_model.fileio import atomic_write_json

    with Engine(EngineSettings(workers, scheduler)) as engine:
        report = validate_cohort(cohort, require_label=require_labels, resample_mismatched=resample,
                                 masks_b_dir=masks_b, engine=engine)
    if report.summary:
        print_summary(report.summary)
    print_problems(report.problems)
    if json_out:
        atomic_write_json(json_out, {"cohort": str(cohort), "ok": report.ok, "summary": report.summary,
                                     "problems": [p.__dict__ for p in report.problems]})
    if not report.ok:
        raise UserInputError(f"{cohort}: {len(report.errors)} error(s) found; fix them and run validate again")
    labelled(f"{cohort}: valid", "green", f" ({len(report.warnings)} warning(s))")


@app.command()
def schema(
    format: Annotated[str, typer.Option("--format", help="markdown (data dictionary) or json (JSON Schema)")] = "markdown",
    out: Annotated[Path | None, typer.Option("--out", help="file to write (default: print)")] = None,
    cohort: Annotated[Path | None, typer.Option(help="include this cohort's declared extra features")] = None,
) -> None:
    """Export the clinical table contract as a data dictionary or a JSON Schema."""
    import json

    from clinical_schema.export import data_dictionary_markdown, to_json_schema
    from fusion_model.cohort.spec import read_cohort_spec
    from fusion_model.fileio import atomic_write_text

    extra = read_cohort_spec(cohort).extra_features if cohort else []
    if format == "markdown":
        text = data_dictionary_markdown(extra)
    elif format == "json":
        text = json.dumps(to_json_schema(extra), indent=2) + "\n"
    else:
        raise UserInputError(f"--format {format!r}: use 'markdown' or 'json'")
    if out:
        atomic_write_text(out, text)
        console.print(f"wrote {out}")
    else:
        sys.stdout.write(text)


@app.command()
def features(
    cohort: Annotated[Path, typer.Argument(help="cohort directory")],
    out: Annotated[Path, typer.Option("--out", help="CSV of radiological features per lesion")],
    cache: CacheOption = None,
    resample: Annotated[bool, typer.Option("--resample")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="stop at the first unreadable lesion")] = False,
    workers: WorkersOption = None,
    scheduler: SchedulerOption = None,
) -> None:
    """Compute radiological features from images and masks; fill size_mm / unenhanced_hu where empty."""
    from fusion_model.imaging.cache import ImageCache
    from fusion_model.cohort import load_cohort
    from fusion_model.config import PreprocessConfig
    from fusion_model.features.table import filled_feature_table
    from fusion_model.fileio import atomic_write_text

    from fusion_model.engine import Engine, EngineSettings

    loaded = load_cohort(cohort)
    with Engine(EngineSettings(workers, scheduler)) as engine:
        images = loaded.images(PreprocessConfig(resample_mismatched=resample), ImageCache.at(cache), crops=False,
                               strict=strict, engine=engine)
    rows, notes = filled_feature_table(loaded.table, images.features)
    atomic_write_text(out, rows.to_csv(index=False))
    for note in notes:
        labelled("warning", "yellow", f": {note}")
    for error in images.errors:
        labelled("error", "red", f": lesion {error.lesion_id} (row {error.row}): {error.message}")
    console.print(f"wrote {out}: {len(rows)} lesions, {len(images.errors)} unreadable")


@app.command()
def preprocess(
    cohort: Annotated[Path, typer.Argument(help="cohort directory")],
    cache: CacheOption = None,
    spacing_mm: Annotated[float, typer.Option(help="isotropic crop spacing")] = 1.0,
    crop_mm: Annotated[float, typer.Option(help="edge of the lesion-centred cube")] = 64.0,
    resample: Annotated[bool, typer.Option("--resample")] = False,
    strict: Annotated[bool, typer.Option("--strict")] = False,
    workers: WorkersOption = None,
    scheduler: SchedulerOption = None,
) -> None:
    """Build the lesion-centred crops (phases + mask) into the cache; a second run reads the cache."""
    import time

    from fusion_model.imaging.cache import ImageCache
    from fusion_model.cohort import load_cohort
    from fusion_model.config import PreprocessConfig
    from fusion_model.configbase import parse_model

    config = parse_model(PreprocessConfig, {"spacing_mm": spacing_mm, "crop_size_mm": crop_mm,
                                            "resample_mismatched": resample}, "preprocess options")
    from fusion_model.engine import Engine, EngineSettings

    cache_folder = ImageCache.at(cache)
    loaded = load_cohort(cohort)
    with Engine(EngineSettings(workers, scheduler)) as engine:
        start = time.perf_counter()
        images = loaded.images(config, cache_folder, features=False, strict=strict, engine=engine)
        elapsed = time.perf_counter() - start
    shape = None if images.crops is None else tuple(images.crops.shape)
    console.print(f"crops {shape} channels {images.channels}: {cache_folder.hits} from cache, "
                  f"{cache_folder.misses} computed, {len(images.errors)} unreadable, {elapsed:.1f} s")
    for error in images.errors:
        labelled("error", "red", f": lesion {error.lesion_id} (row {error.row}): {error.message}")
