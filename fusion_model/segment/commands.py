"""`fusion-model segment train | predict | evaluate`: the lesion segmenter's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fusion_model.console import SchedulerOption, WorkersOption, console, labelled
from fusion_model.errors import UserInputError


app = typer.Typer(
    help="Find and outline lesions: train a MONAI 3D U-Net on outlined scans, predict masks for a cohort, evaluate.",
    no_args_is_help=True)

DeviceOption = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu or cuda")]
SegmenterOption = Annotated[Path, typer.Option("--model", help="segmenter folder from segment train")]
CentreOption = Annotated[str | None, typer.Option("--centre", help="only this centre")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite")]
RegionOption = Annotated[Path | None, typer.Option(
    "--region", help="the adrenal glands per patient: a folder of TotalSegmentator outputs (PATIENT/"
                     "adrenal_gland_right.nii.gz + _left, or PATIENT.nii.gz multi-label with labels.json or its "
                     "'total' numbering), or a CSV with patient_id and box columns x_min_mm..z_max_mm (LPS mm) or "
                     "region_mask_path; default: the whole scan, glands as the detector learned them")]


def _check_inputs(out: Path, overwrite: bool, cohort: Path, centre: str | None = None, segmenter: Path | None = None,
                  with_masks: bool = False) -> None:
    """The checks of what the user typed that the commands' work starts with (an existing output folder, a folder
    that is not a segmenter, a cohort that does not load or lacks the centre or its masks), run before torch and
    MONAI are loaded so that a typing error is answered at once; the work checks the same again."""
    from fusion_model.cohort import load_cohort
    from fusion_model.fileio import check_output_dir
    from fusion_model.segment.manifest import read_segmenter_manifest

    check_output_dir(out, overwrite)
    if segmenter is not None:
        read_segmenter_manifest(segmenter)
    selected = load_cohort(cohort).select(centre=centre)
    if with_masks:
        selected.require_masks()


def _regions(region: Path | None, cohort: Path):
    from fusion_model.segment.scans import read_regions

    return read_regions(region, cohort) if region else None


def _launch_on_gpus(gpus: int, device: str) -> None:
    """Run this same command (without --gpus) in ``gpus`` processes under torchrun, one GPU each; exits with
    their exit code."""
    import os
    import subprocess
    import sys

    import torch

    if gpus < 1:
        raise UserInputError(f"--gpus {gpus}: give the number of GPUs to train on (1 or more)")
    if os.environ.get("WORLD_SIZE"):
        raise UserInputError("--gpus inside torchrun: give one or the other")
    if device == "cpu":
        raise UserInputError("--gpus trains on GPUs; leave out --device cpu (or use --device cuda)")
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible < gpus:
        raise UserInputError(f"--gpus {gpus}: {visible} CUDA device(s) visible to torch here; give at most {visible}"
                             " (or train on the CPU without --gpus)")
    arguments = sys.argv[1:]
    kept, skip = [], False
    for argument in arguments:
        if skip:
            skip = False
            continue
        if argument == "--gpus":
            skip = True
            continue
        if not argument.startswith("--gpus="):
            kept.append(argument)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
               "-m", "fusion_model.cli", *kept]
    raise typer.Exit(subprocess.call(command))


@app.command("train")
def segment_train(
    cohort: Annotated[Path, typer.Option("--cohort", help="cohort directory with outlined lesions")],
    out: Annotated[Path, typer.Option("--out", help="segmenter folder to write")],
    config: Annotated[Path | None, typer.Option("--config", help="segmenter YAML (experiments/segment.yaml)")] = None,
    test_centre: Annotated[str | None, typer.Option("--test-centre", help="leave this centre out")] = None,
    region: RegionOption = None,
    device: DeviceOption = "auto",
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads")] = None,
    overwrite: OverwriteOption = False,
    gpus: Annotated[int | None, typer.Option("--gpus", help="train data-parallel on N GPUs of this machine (starts "
                                                            "N processes with torchrun; or run torchrun "
                                                            "--nproc_per_node N yourself)")] = None,
) -> None:
    """Train the lesion segmenter (resumes after a kill: run the same command again)."""
    from fusion_model.config import load_segment_config

    settings = load_segment_config(config)
    _check_inputs(out, overwrite, cohort, test_centre)
    from fusion_model.segment.train import train_segmenter

    if threads:
        settings = settings.model_copy(update={"threads": threads})
    if gpus is not None:
        _launch_on_gpus(gpus, device)
        return
    run = train_segmenter(cohort, out, settings, device=device, regions=_regions(region, cohort),
                          test_centre=test_centre, overwrite=overwrite)
    if run is None:  # a data-parallel process other than the leader: the leader reports
        return
    f = run.figures
    op = f["operating_point"]
    if f["resumed_from_epoch"] is not None:
        console.print(f"resumed after epoch {f['resumed_from_epoch'] + 1}")
    if run.skipped:
        console.print(f"left out {len(run.skipped)} scan(s) with lesions not outlined: {', '.join(run.skipped[:10])}")
    console.print(f"trained on {f['training_patients']} patients, early-stopped on {f['early_stopping_patients']} "
                  f"({', '.join(f['centres'])}); best epoch {f['best_epoch'] + 1} of {f['epochs_run']}")
    dice = f["early_stopping_lesion_dice"]
    console.print(f"early-stopping patients: lesion Dice median {dice['median']:.3f}, mean {dice['mean']:.3f}; "
                  f"operating point: component probability >= {op['threshold']:.3f} gives sensitivity "
                  f"{op['sensitivity']:.3f} at {op['fp_per_scan']:.2f} false positives per scan")
    console.print(f"{f['minutes']:.1f} min on {f['device']}, peak memory {f['peak_memory_gb']:.2f} GB; wrote {out}")


@app.command("predict")
def segment_predict(
    model: SegmenterOption,
    cohort: Annotated[Path, typer.Option("--cohort", help="cohort directory to outline")],
    out: Annotated[Path, typer.Option("--out", help="new cohort directory with the automatic masks")],
    centre: CentreOption = None,
    region: RegionOption = None,
    device: DeviceOption = "auto",
    dicom_seg: Annotated[bool, typer.Option("--dicom-seg/--no-dicom-seg",
                                            help="also write DICOM SEG when the images are DICOM")] = True,
    overwrite: OverwriteOption = False,
    workers: WorkersOption = None,
    scheduler: SchedulerOption = None,
) -> None:
    """Outline every lesion of a cohort; write a new cohort (mask_source = auto) and list lesions not found."""
    _check_inputs(out, overwrite, cohort, centre, segmenter=model)
    from fusion_model.engine import Engine, EngineSettings
    from fusion_model.segment.predict import MATCHING_FILE, predict_masks

    with Engine(EngineSettings(workers, scheduler)) as engine:
        run = predict_masks(model, cohort, out, centre=centre, regions=_regions(region, cohort), device=device,
                            dicom_seg=dicom_seg, overwrite=overwrite, engine=engine)
    console.print(f"outlined {run.found} of {run.lesions} lesions ({run.seconds_per_scan:.1f} s per scan, peak "
                  f"memory {run.peak_memory_gb:.2f} GB)" + (f"; {run.dicom_seg_files} DICOM SEG file(s)"
                                                           if run.dicom_seg_files else ""))
    if len(run.not_found):
        counts = run.summary["unscored"]
        by = "; ".join(f"{k.replace('by_', 'by ')}: " + ", ".join(f"{name} {n}" for name, n in v.items())
                       for k, v in counts.items() if k.startswith("by_"))
        labelled("not found", "yellow", f" {len(run.not_found)} of {run.lesions} lesions have no automatic mask and "
                 f"no risk score until outlined ({by or 'no labels in the table'}; why, per lesion, in "
                 f"{out / MATCHING_FILE}; their rows keep an empty mask_path): "
                 + ", ".join(run.not_found["lesion_id"].head(20)))
    if run.summary.get("suppressed_components"):
        console.print(f"suppressed {run.summary['suppressed_components']} component(s) far from the adrenal glands "
                      f"({run.summary['suppressed_volume_ml']:.1f} mL in all; listed in components.csv)")
    console.print(f"wrote {out}")


@app.command("evaluate")
def segment_evaluate(
    model: SegmenterOption,
    cohort: Annotated[Path, typer.Option("--cohort", help="cohort directory with reference masks")],
    out: Annotated[Path, typer.Option("--out", help="report folder")],
    centre: CentreOption = None,
    region: RegionOption = None,
    risk_model: Annotated[Path | None, typer.Option(
        "--risk-model", help="a risk model with lesion-type heads: also the classification average precision per "
                             "lesion type (per phase set with compare_phases)")] = None,
    device: DeviceOption = "auto",
    overwrite: OverwriteOption = False,
) -> None:
    """Dice, HD95, surface Dice, volume difference, FROC (touching and IoU >= 0.5 hits), false positives by count
    and volume, average precision per lesion type, and lesions left without a mask."""
    _check_inputs(out, overwrite, cohort, centre, segmenter=model, with_masks=True)
    from fusion_model.segment.evaluate import evaluate_segmenter

    result = evaluate_segmenter(model, cohort, out, centre=centre, regions=_regions(region, cohort), device=device,
                                overwrite=overwrite, risk_model=risk_model)
    table = Table(title=f"segmenter on {result.metrics['cohort_name']}")
    for column in ("centre", "lesions", "Dice median", "Dice mean", "HD95 median (mm)", "sensitivity",
                   "FP / scan", "FP mL / scan", "sensitivity IoU>=0.5 within 0.5 FP/scan", "no mask"):
        table.add_column(column)
    blocks = [("all", result.metrics["overall"]), *result.metrics["per_centre"].items()]
    for name, b in blocks:
        op = b["detection"]["operating_point"]
        table.add_row(name, str(b["lesions"]), f"{b['dice']['median']:.3f}", f"{b['dice']['mean']:.3f}",
                      "-" if b["hd95_mm"]["median"] is None else f"{b['hd95_mm']['median']:.1f}",
                      f"{op['sensitivity']:.3f}", f"{op['fp_per_scan']:.2f}",
                      f"{b['false_positives']['volume_ml_per_scan']:.2f}",
                      f"{b['detection_iou']['sensitivity_within_fp_per_scan']['0.5']:.3f}",
                      str(b["unscored"]["count"]))
    console.print(table)
    unscored = result.metrics["overall"]["unscored"]
    if unscored["count"]:
        labelled("no mask", "yellow", f": {unscored['count']} lesion(s) got no automatic mask (" + ", ".join(
            f"{n} {k[3:].replace('_', ' ')} {name}" for k, v in unscored.items() if k.startswith("by_")
            for name, n in v.items()) + "); why, per lesion: lesions.csv 'matching'")
    ap = result.metrics.get("average_precision_iou_0.5")
    if ap:
        console.print("average precision at IoU >= 0.5, detection: " + ", ".join(
            f"{k} {v:.3f}" for k, v in ap["detection"].items()) + f"; mean {ap['mean_detection_ap']:.3f}"
            + (f"; classification mean {ap['mean_classification_ap']:.3f}" if ap.get("mean_classification_ap")
               is not None else ""))
    console.print(f"{result.metrics['seconds_per_scan']:.1f} s per scan; wrote {out / 'report.html'}")
