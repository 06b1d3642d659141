"""`fusion-model segment evaluate`: how well the segmenter finds and outlines the lesions of a cohort with
reference masks.

Per lesion: Dice, 95% Hausdorff distance, surface Dice at 2 mm and volume difference (MONAI's metrics) of the
mask ``segment predict`` would write for it (its matched component; a lesion with none counts as missed, Dice 0).
Detection, as in lesion-detection studies, with two definitions of a hit: *touching* (a lesion is found at a
threshold when a component touching it has that probability or more; every component touching no lesion is a
false positive) and *IoU >= 0.5* (components by probability take the free lesion they overlap most with IoU >=
0.5; the others are false positives). Sweeping the threshold gives the FROC curves, with the segmenter's
operating point marked; average precision at IoU 0.5 per lesion type (where the table has lesion_type). False
positives are reported by count and volume, and, where the cohort has its gland outlines (``glands/``), those
lying outside the gland region. Lesions without an automatic mask are counted by label and type. Everything is
reported overall and per centre: HTML report, metrics.json, lesions.csv, components.csv, PNG figures.
"""

from __future__ import annotations

import datetime as dt
import tempfile
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
from fusion_model.errors import UserInputError
from fusion_model.segment.artifact import load_segmenter
from fusion_model.segment.classify import ComponentCohort, component_id
from fusion_model.segment.metrics import (
    SURFACE_TOLERANCE_MM,
    DetectionRecord,
    classification_ap,
    detection_ap_by_type,
    hits_by_iou,
    iou_detection,
    overlap_metrics,
    overlaps,
    summarise,
)
from fusion_model.segment.predict import check_cohort_for_segmenter, predict_scan, table_cell, unscored_counts
from fusion_model.segment.report import write_segment_report
from fusion_model.segment.scans import Region, cohort_gland_regions, cohort_scans, gland_map, lesion_masks

IOU_HIT = 0.5  # a hit as in the mediastinal 3D U-Net and adrenal detector studies
LARGE_FP_ML = 5.0  # a false positive this large outside a gland region is a blob a radiologist would reject

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
    components: pd.DataFrame = field(default_factory=pd.DataFrame)


def false_positive_summary(components: pd.DataFrame, threshold: float, scans: int) -> dict:
    """False positives (components touching no lesion) at the operating point: count and volume per scan, the
    largest, and, where the true glands are known, those outside the gland region and those over 5 mL there."""
    fp = components[(~components["touches_lesion"].astype(bool)) & (components["probability"] >= threshold)]
    outside = fp[fp["outside_true_glands"].fillna(False).astype(bool)]
    known = fp["outside_true_glands"].notna().all() and len(components) > 0
    return {"count": len(fp), "per_scan": len(fp) / max(scans, 1), "volume_ml_total": float(fp["volume_ml"].sum()),
            "volume_ml_per_scan": float(fp["volume_ml"].sum()) / max(scans, 1),
            "volume_ml": summarise(fp["volume_ml"]),
            "outside_glands": len(outside) if known else None,
            "outside_glands_over_5ml": int((outside["volume_ml"] > LARGE_FP_ML).sum()) if known else None,
            "largest_outside_glands_ml": float(outside["volume_ml"].max()) if known and len(outside) else None}


def evaluate_segmenter(model_dir: Path, cohort_dir: Path, out: Path, centre: str | None = None,
                       regions: dict[str, Region] | None = None, device: str = "auto", overwrite: bool = False,
                       progress: bool = True, risk_model: Path | None = None, cache=None) -> SegmentEvaluation:
    """Run the segmenter on a cohort with reference masks and report segmentation and detection figures; with
    ``risk_model`` (trained with lesion-type heads) also the classification average precision per lesion type,
    per phase set when it was trained with ``compare_phases``."""
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
    truth_glands = cohort_gland_regions(cohort)
    if risk_model is not None:
        from fusion_model.artifact import load_model

        risk = load_model(risk_model)
        if not risk.subtypes_:
            raise UserInputError(f"{risk_model}: the risk model has no lesion-type heads; train it with 'targets: "
                                 "[malignancy, lesion_type]' to score the components' types")
    workdir = tempfile.TemporaryDirectory(prefix=".components-", dir=Path(out).resolve().parent) \
        if risk_model is not None else None
    component_cohort = ComponentCohort(cohort, Path(workdir.name)) if workdir else None
    records: dict[tuple[str, str], DetectionRecord] = {}

    def record(hit: str, centre_name: str) -> DetectionRecord:
        return records.setdefault((hit, centre_name), DetectionRecord())

    rows, views, seconds, component_rows, detections = [], [], [], [], []
    for scan in track(scans, "evaluating segmenter", total=len(scans), enabled=progress):
        result = predict_scan(segmenter, scan, torch_device, regions.get(scan.patient_id))
        seconds.append(result.seconds)
        masks = lesion_masks(scan, result.reference)
        iou, touching = overlaps(result.labels, list(masks))
        probabilities = np.zeros(iou.shape[1])  # column k is label k + 1
        for c in result.components:
            probabilities[c.label - 1] = c.probability
        touch_p = [float(probabilities[t].max()) if t.any() else 0.0 for t in touching]
        touch_fp = [float(p) for p, t in zip(probabilities, touching.any(axis=0)) if not t]
        iou_p, iou_fp = iou_detection(iou, probabilities, IOU_HIT)
        for centre_name in ("all", scan.centre):
            record("touching", centre_name).add(touch_p, touch_fp)
            record("iou", centre_name).add(iou_p, iou_fp)
        assigned = hits_by_iou(iou, probabilities, IOU_HIT)
        true_distance = None
        if scan.patient_id in truth_glands:
            from scipy import ndimage

            glands = gland_map(truth_glands[scan.patient_id], result.reference, scan.where) > 0
            true_distance = ndimage.distance_transform_edt(~glands, sampling=result.reference.GetSpacing()[::-1])
        types = [table_cell(cohort, lesion.lesion_id, "lesion_type") for lesion in scan.lesions]
        for c in result.components:
            k = c.label - 1
            inside = result.labels == c.label
            distance = float(true_distance[inside].min()) if true_distance is not None else None
            component_rows.append({
                "scan": scan.key, "patient_id": scan.patient_id, "centre": scan.centre, "component": c.label,
                "probability": c.probability, "detector_probability": c.detector_probability,
                "refiner_confidence": c.refiner_confidence, "volume_ml": c.volume_mm3 / 1000,
                "diameter_mm": c.diameter_mm, "side": c.side, "gland_distance_mm": c.gland_distance_mm,
                "suppressed": False,
                "touches_lesion": bool(touching[:, k].any()), "best_iou": float(iou[:, k].max()) if len(iou) else 0.0,
                "hit_lesion": scan.lesions[assigned[k]].lesion_id if assigned[k] >= 0 else "",
                "true_gland_distance_mm": distance,
                "outside_true_glands": None if distance is None else distance > segmenter.config.gland_margin_mm})
            detections.append({"score": c.probability, "type": types[assigned[k]] if assigned[k] >= 0 else None,
                               "id": component_id(scan.key, c.label)})
        if component_cohort is not None:
            component_cohort.add_scan(scan, result.labels, result.reference, result.components)
        for c in result.suppressed:
            component_rows.append({
                "scan": scan.key, "patient_id": scan.patient_id, "centre": scan.centre, "component": 0,
                "probability": c.probability, "volume_ml": c.volume_mm3 / 1000, "diameter_mm": c.diameter_mm,
                "side": c.side, "gland_distance_mm": c.gland_distance_mm, "suppressed": True})
        spacing_zyx = tuple(reversed(result.reference.GetSpacing()))
        for k, (lesion, side, mask, match) in enumerate(zip(scan.lesions, scan.sides, masks, result.matches)):
            predicted = result.labels == match.label if match.label is not None else np.zeros_like(mask)
            figures = overlap_metrics(predicted, mask, spacing_zyx)
            rows.append({"lesion_id": lesion.lesion_id, "patient_id": lesion.patient_id, "centre": lesion.centre,
                         **{c: table_cell(cohort, lesion.lesion_id, c) for c in ("label", "lesion_type")
                            if c in cohort.table},
                         "side": side, "found": match.label is not None, "component": match.label,
                         "component_probability": touch_p[k], "iou_hit_probability": iou_p[k],
                         **figures, "matching": match.reason})
            views.append(_axial_view(result.reference, mask, predicted, lesion.lesion_id, figures["dice"]))
    lesions = pd.DataFrame(rows)
    components = pd.DataFrame(component_rows, columns=[
        "scan", "patient_id", "centre", "component", "probability", "detector_probability", "refiner_confidence",
        "volume_ml", "diameter_mm", "side",
        "gland_distance_mm", "suppressed", "touches_lesion", "best_iou", "hit_lesion", "true_gland_distance_mm",
        "outside_true_glands"])
    lesion_types = [t for t in lesions.get("lesion_type", pd.Series(dtype=object)) if isinstance(t, str)]

    def block(frame: pd.DataFrame, centre_name: str) -> dict:
        touching, by_iou = record("touching", centre_name), record("iou", centre_name)
        kept = components[~components["suppressed"].astype(bool)]
        kept = kept if centre_name == "all" else kept[kept["centre"] == centre_name]
        return {"lesions": len(frame), "scans": touching.scans,
                "dice": summarise(frame["dice"]), "hd95_mm": summarise(frame["hd95_mm"]),
                "surface_dice_2mm": summarise(frame["surface_dice_2mm"]),
                "volume_difference_percent": summarise(frame["volume_difference_percent"]),
                "dice_by_side": {side: summarise(frame.loc[frame["side"] == side, "dice"])
                                 for side in sorted(frame["side"].dropna().unique())},
                "found_by_matching": float(frame["found"].mean()),
                "unscored": unscored_counts(frame[~frame["found"]]),
                "detection": detection_summary(touching, segmenter.threshold),
                "detection_iou": detection_summary(by_iou, segmenter.threshold),
                "false_positives": false_positive_summary(kept, segmenter.threshold, touching.scans)}

    ap = detection_ap_by_type(detections, lesion_types) if lesion_types else None
    if component_cohort is not None and lesion_types:
        from fusion_model.imaging.cache import ImageCache

        try:
            by_set, unreadable = component_cohort.type_probabilities(risk_model, cache or ImageCache(None), risk)
        finally:
            workdir.cleanup()
        per_set = {name: classification_ap(detections, lesion_types, frame) for name, frame in by_set.items()}
        if per_set:
            first = next(iter(per_set.values()))
            ap["classification"] = first["per_type"]
            ap["mean_classification_ap"] = first["mean"]
            ap["classification_by_phase_set"] = per_set
            ap["risk_model"] = str(risk_model)
            ap["components_not_scored"] = unreadable
    metrics = json_safe({
        "format": "fusion-model-segment-evaluation", "package_version": __version__,
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "segmenter": str(model_dir), "cohort": str(cohort_dir), "cohort_name": cohort.spec.name, "centre": centre,
        "trained_on": segmenter.info.get("training", {}).get("centres"),
        "component_threshold": segmenter.threshold, "surface_tolerance_mm": SURFACE_TOLERANCE_MM,
        "refiner_confirms": bool(segmenter.refiner is not None and segmenter.config.refine_confirms),
        "overall": block(lesions, "all"), "iou_hit": IOU_HIT,
        "per_centre": {c: block(lesions[lesions["centre"] == c], c) for c in sorted(set(lesions["centre"]))},
        "average_precision_iou_0.5": ap,
        "suppressed_components": {"count": int(components["suppressed"].astype(bool).sum()),
                                  "volume_ml": float(components.loc[components["suppressed"].astype(bool),
                                                                    "volume_ml"].sum())},
        "seconds_per_scan": float(np.mean(seconds)), "device": str(torch_device),
        "minutes": (time.perf_counter() - started) / 60,
    })
    evaluation = SegmentEvaluation(metrics, lesions, Path(out), views, components)
    write_segment_report(evaluation, overwrite=overwrite)
    return evaluation
