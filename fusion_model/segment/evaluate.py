"""`fusion-model segment evaluate`: how well the segmenter finds and outlines the lesions of a cohort with
reference masks.

Per lesion: Dice, 95% Hausdorff distance, surface Dice at 2 mm and volume difference (MONAI's metrics) of the
mask ``segment predict`` would write for it (its matched component; a lesion with none counts as missed, Dice 0).
Detection, as in lesion-detection studies: a lesion is found at a threshold when a component touching it has
that probability or more, and every component touching no lesion is a false positive; sweeping the threshold
gives the FROC curve (sensitivity against false positives per scan), with the segmenter's operating point
marked. Everything is reported overall and per centre: HTML report, metrics.json, lesions.csv, PNG figures.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from fusion_model import __version__
from fusion_model.cohort import load_cohort
from fusion_model.devices import resolve_device
from fusion_model.fileio import check_output_dir, json_safe
from fusion_model.progress import track
from fusion_model.segment.artifact import load_segmenter
from fusion_model.segment.metrics import (
    SURFACE_TOLERANCE_MM,
    DetectionRecord,
    overlap_metrics,
    scan_detection,
    summarise,
)
from fusion_model.segment.predict import check_cohort_for_segmenter, predict_scan
from fusion_model.segment.report import write_segment_report
from fusion_model.segment.scans import Region, cohort_scans, lesion_masks

FP_RATES = (0.25, 0.5, 1.0, 2.0)
OVERLAY_HALF_WIDTH_MM = 40.0


@dataclass
class LesionView:
    """An axial slice through a lesion for the overlay figure: CT (HU), reference and predicted masks."""

    lesion_id: str
    dice: float
    ct: np.ndarray
    reference: np.ndarray
    predicted: np.ndarray
    extent_mm: tuple[float, float, float, float]


def _axial_view(reference_image: sitk.Image, ref: np.ndarray, pred: np.ndarray, lesion_id: str,
                dice: float) -> LesionView:
    spacing = reference_image.GetSpacing()
    zs, ys, xs = np.nonzero(ref)
    z = int(np.argmax(np.bincount(zs)))  # the slice with most of the lesion
    cy, cx = int(np.mean(ys)), int(np.mean(xs))
    hy, hx = int(OVERLAY_HALF_WIDTH_MM / spacing[1]), int(OVERLAY_HALF_WIDTH_MM / spacing[0])
    y0, y1 = max(0, cy - hy), min(ref.shape[1], cy + hy)
    x0, x1 = max(0, cx - hx), min(ref.shape[2], cx + hx)
    ct = sitk.GetArrayViewFromImage(reference_image)[z, y0:y1, x0:x1].astype(np.float32)
    extent = (0.0, (x1 - x0) * spacing[0], (y1 - y0) * spacing[1], 0.0)
    return LesionView(lesion_id, dice, ct, ref[z, y0:y1, x0:x1], pred[z, y0:y1, x0:x1], extent)


def detection_summary(record: DetectionRecord, threshold: float) -> dict:
    """Sensitivity and FP/scan at the operating point, the best sensitivity within set FP rates, the curve."""
    curve = record.froc()
    sensitivity, fp = record.at(threshold)
    within = {}
    for rate in FP_RATES:
        points = [p["sensitivity"] for p in curve if p["fp_per_scan"] <= rate]
        within[f"{rate:g}"] = max(points) if points else 0.0
    return {"lesions": len(record.lesion_probability), "scans": record.scans,
            "operating_point": {"threshold": threshold, "sensitivity": sensitivity, "fp_per_scan": fp},
            "sensitivity_within_fp_per_scan": within, "froc": curve}


@dataclass
class SegmentEvaluation:
    """The evaluation's figures (metrics.json), the per-lesion table and where the report went."""

    metrics: dict
    lesions: pd.DataFrame
    out: Path
    views: list[LesionView] = field(default_factory=list)


def evaluate_segmenter(model_dir: Path, cohort_dir: Path, out: Path, centre: str | None = None,
                       regions: dict[str, Region] | None = None, device: str = "auto", overwrite: bool = False,
                       progress: bool = True) -> SegmentEvaluation:
    """Run the segmenter on a cohort with reference masks and report segmentation and detection figures."""
    started = time.perf_counter()
    check_output_dir(out, overwrite)
    segmenter = load_segmenter(model_dir)
    torch_device = resolve_device(device)
    segmenter.to(torch_device)
    cohort = load_cohort(cohort_dir).select(centre=centre)
    cohort.require_masks()
    scans = cohort_scans(cohort)
    check_cohort_for_segmenter(cohort, scans, segmenter)
    regions = regions or {}
    overall = DetectionRecord()
    per_centre: dict[str, DetectionRecord] = {}
    rows, views, seconds = [], [], []
    for scan in track(scans, "evaluating segmenter", total=len(scans), enabled=progress):
        result = predict_scan(segmenter, scan, torch_device, regions.get(scan.patient_id))
        seconds.append(result.seconds)
        masks = lesion_masks(scan, result.reference)
        probabilities = {c.label: c.probability for c in result.components}
        lesion_p, false_positive_p, touching = scan_detection(result.labels, probabilities, list(masks))
        overall.add(lesion_p, false_positive_p)
        per_centre.setdefault(scan.centre, DetectionRecord()).add(lesion_p, false_positive_p)
        spacing_zyx = tuple(reversed(result.reference.GetSpacing()))
        for lesion, side, mask, matched, touched in zip(scan.lesions, scan.sides, masks, result.matched, touching):
            predicted = result.labels == matched if matched is not None else np.zeros_like(mask)
            figures = overlap_metrics(predicted, mask, spacing_zyx)
            rows.append({"lesion_id": lesion.lesion_id, "patient_id": lesion.patient_id, "centre": lesion.centre,
                         "side": side, "found": matched is not None,
                         "component_probability": max((probabilities[v] for v in touched), default=0.0),
                         **figures})
            views.append(_axial_view(result.reference, mask, predicted, lesion.lesion_id, figures["dice"]))
    lesions = pd.DataFrame(rows)

    def block(frame: pd.DataFrame, record: DetectionRecord) -> dict:
        return {"lesions": len(frame), "scans": record.scans,
                "dice": summarise(frame["dice"]), "hd95_mm": summarise(frame["hd95_mm"]),
                "surface_dice_2mm": summarise(frame["surface_dice_2mm"]),
                "volume_difference_percent": summarise(frame["volume_difference_percent"]),
                "found_by_matching": float(frame["found"].mean()),
                "detection": detection_summary(record, segmenter.threshold)}

    metrics = json_safe({
        "format": "fusion-model-segment-evaluation", "package_version": __version__,
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "segmenter": str(model_dir), "cohort": str(cohort_dir), "cohort_name": cohort.spec.name, "centre": centre,
        "trained_on": segmenter.info.get("training", {}).get("centres"),
        "component_threshold": segmenter.threshold, "surface_tolerance_mm": SURFACE_TOLERANCE_MM,
        "overall": block(lesions, overall),
        "per_centre": {c: block(lesions[lesions["centre"] == c], r) for c, r in sorted(per_centre.items())},
        "seconds_per_scan": float(np.mean(seconds)), "device": str(torch_device),
        "minutes": (time.perf_counter() - started) / 60,
    })
    evaluation = SegmentEvaluation(metrics, lesions, Path(out), views)
    write_segment_report(evaluation, overwrite=overwrite)
    return evaluation
