"""Scans for the segmenter: a patient's CT phases on one isotropic grid, with every lesion of the scan as target.

A *scan* is one set of phase files: the lesions of a table that name the same files (usually one patient's
lesions) share it. The network sees the scan's phases as channels, HU-windowed to [0, 1], resampled to the
segmenter's isotropic spacing over the whole field of view, or over the adrenal region when one is given
(a box in mm, or an organ mask such as TotalSegmentator's adrenal labels, plus a margin).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from fusion_model.cohort.load import Cohort, read_clinical_csv, resolve_inside
from fusion_model.config import SegmentConfig
from fusion_model.errors import UserInputError
from fusion_model.imaging.io import read_image
from fusion_model.imaging.preprocess import read_lesion_mask, window_hu
from fusion_model.records import LesionRecord

AIR_HU = -1000.0
BODY_HU = -500.0
REGION_BOX_COLUMNS = ("x_min_mm", "x_max_mm", "y_min_mm", "y_max_mm", "z_min_mm", "z_max_mm")


@dataclass
class ScanRecord:
    """One scan of a cohort: its phase files and the table's lesions on it (in table order)."""

    patient_id: str
    centre: str
    phase_paths: dict[str, Path]
    lesions: list[LesionRecord] = field(default_factory=list)
    sides: list[str | None] = field(default_factory=list)
    key: str = ""  # file name of the scan: the patient, numbered (P001_scan2) when the patient has several

    @property
    def where(self) -> str:
        """How messages name this scan."""
        first = next(iter(self.phase_paths.values()))
        return f"patient {self.patient_id} ({first.name}, clinical.csv row {self.lesions[0].row})"

    @property
    def outlined(self) -> bool:
        """Whether every lesion on the scan has a mask (only then is the scan a training example)."""
        return all(lesion.mask_path is not None for lesion in self.lesions)


def cohort_scans(cohort: Cohort) -> list[ScanRecord]:
    """The cohort's scans, grouping lesions that name the same phase files; several scans of one patient get
    numbered keys."""
    scans: dict[tuple, ScanRecord] = {}
    sides = cohort.table["side"] if "side" in cohort.table else pd.Series([None] * len(cohort.table))
    for i, lesion in enumerate(cohort.lesions()):
        if not lesion.phase_paths:
            raise UserInputError(f"{lesion.where}: no CT phase file; fill at least one phase path")
        key = (lesion.patient_id, tuple(sorted((p, str(v)) for p, v in lesion.phase_paths.items())))
        scan = scans.setdefault(key, ScanRecord(lesion.patient_id, lesion.centre, dict(lesion.phase_paths)))
        scan.lesions.append(lesion)
        side = sides.iloc[i]
        scan.sides.append(None if side is None or pd.isna(side) else str(side))
    out = list(scans.values())
    per_patient: dict[str, int] = {}
    for scan in out:
        per_patient[scan.patient_id] = per_patient.get(scan.patient_id, 0) + 1
    seen: dict[str, int] = {}
    for scan in out:
        seen[scan.patient_id] = seen.get(scan.patient_id, 0) + 1
        several = per_patient[scan.patient_id] > 1
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", scan.patient_id)
        scan.key = f"{safe}_scan{seen[scan.patient_id]}" if several else safe
    return out


@dataclass(frozen=True)
class Region:
    """Where to search: a box in physical mm (LPS) or an organ mask file; a margin is added."""

    box_mm: tuple[float, float, float, float, float, float] | None = None
    mask_path: Path | None = None


def read_regions(path: Path, cohort_root: Path) -> dict[str, Region]:
    """The adrenal region per patient from a CSV: ``patient_id`` and either the six box columns (physical mm:
    x_min_mm ... z_max_mm) or ``region_mask_path`` (an organ mask, relative to the cohort directory; every
    non-zero voxel counts)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: region file not found")
    table = read_clinical_csv(path)
    if "patient_id" not in table:
        raise UserInputError(f"{path}: needs a patient_id column and either {list(REGION_BOX_COLUMNS)} or "
                             "region_mask_path")
    has_box = all(c in table for c in REGION_BOX_COLUMNS)
    if not has_box and "region_mask_path" not in table:
        raise UserInputError(f"{path}: give the box columns {list(REGION_BOX_COLUMNS)} (mm) or a region_mask_path "
                             "column")
    regions = {}
    for i, row in table.iterrows():
        where = f"{path} row {i + 2}"
        patient = str(row["patient_id"])
        if "region_mask_path" in table and isinstance(row["region_mask_path"], str) and row["region_mask_path"]:
            regions[patient] = Region(mask_path=resolve_inside(cohort_root, row["region_mask_path"],
                                                               f"{where}, column 'region_mask_path'"))
            continue
        if not has_box:
            raise UserInputError(f"{where}: region_mask_path is empty; give a mask or the box columns")
        try:
            box = tuple(float(row[c]) for c in REGION_BOX_COLUMNS)
        except (TypeError, ValueError):
            raise UserInputError(f"{where}: the box columns {list(REGION_BOX_COLUMNS)} must be numbers (mm)") from None
        if any(np.isnan(box)) or box[0] >= box[1] or box[2] >= box[3] or box[4] >= box[5]:
            raise UserInputError(f"{where}: box {box} is empty or incomplete; each *_min_mm must be below its "
                                 "*_max_mm")
        regions[patient] = Region(box_mm=box)
    return regions


@dataclass
class ScanVolume:
    """A scan on the segmenter's grid: image (channels, z, y, x) float32 in [0, 1], the target (z, y, x) uint8
    (None without masks), the isotropic grid, and the reference phase image on its own grid."""

    image: np.ndarray
    target: np.ndarray | None
    grid: sitk.Image
    reference: sitk.Image
    native_spacing_mm: tuple[float, float, float]
    phase_images: list[sitk.Image] = field(default_factory=list)  # the phases as read (HU), in segmenter order
    lesion_masks: np.ndarray | None = None  # (lesions, z, y, x) bool on the reference grid, with the target


def _physical_corners(image: sitk.Image) -> np.ndarray:
    size = np.array(image.GetSize()) - 1
    corners = [[i, j, k] for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])]
    return np.array([image.TransformContinuousIndexToPhysicalPoint([float(v) for v in c]) for c in corners])


def _extent_mm(image: sitk.Image) -> np.ndarray:
    return np.array(image.GetSize()) * np.array(image.GetSpacing())


def _region_bounds(region: Region | None, reference: sitk.Image, margin_mm: float, where: str) -> np.ndarray:
    """(2, 3) physical lower/upper bounds (in the reference's axes) to resample over."""
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    local = _physical_corners(reference) @ direction  # coordinates along the image axes
    lower, upper = local.min(axis=0), local.max(axis=0)
    if region is None:
        return np.stack([lower, upper])
    if region.box_mm is not None:
        box = np.array(region.box_mm).reshape(3, 2)
        corners = np.array([[x, y, z] for x in box[0] for y in box[1] for z in box[2]]) @ direction
    else:
        organ = read_image(region.mask_path)
        stats = sitk.LabelShapeStatisticsImageFilter()
        stats.Execute(sitk.Cast(sitk.NotEqual(organ, 0), sitk.sitkUInt8))
        if not stats.HasLabel(1):
            raise UserInputError(f"{where}: region mask {region.mask_path.name} is empty; give the adrenal region")
        x, y, z, sx, sy, sz = stats.GetBoundingBox(1)
        corners_index = [[i, j, k] for i in (x, x + sx - 1) for j in (y, y + sy - 1) for k in (z, z + sz - 1)]
        corners = np.array([organ.TransformIndexToPhysicalPoint([int(v) for v in c]) for c in corners_index]) @ direction
    region_lower = np.maximum(corners.min(axis=0) - margin_mm, lower)
    region_upper = np.minimum(corners.max(axis=0) + margin_mm, upper)
    if np.any(region_upper <= region_lower):
        raise UserInputError(f"{where}: the given adrenal region lies outside the scan; check its coordinates")
    return np.stack([region_lower, region_upper])


def isotropic_grid(reference: sitk.Image, bounds: np.ndarray, spacing_mm: float) -> sitk.Image:
    """An empty grid at ``spacing_mm`` with the reference's direction covering ``bounds`` (image-axis mm)."""
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    size = np.maximum(1, np.floor((bounds[1] - bounds[0]) / spacing_mm).astype(int) + 1)
    grid = sitk.Image([int(v) for v in size], sitk.sitkUInt8)
    grid.SetSpacing([spacing_mm] * 3)
    grid.SetDirection(reference.GetDirection())
    grid.SetOrigin(tuple(direction @ bounds[0]))
    return grid


def check_scan_geometry(reference: sitk.Image, where: str, config: SegmentConfig,
                        spacing_range: tuple[list[float], list[float]] | None = None) -> None:
    """Refuse a scan too small for the segmenter, or (for a trained segmenter) with voxels far outside the
    spacings it was trained on."""
    extent = _extent_mm(reference)
    if np.any(extent < config.min_extent_mm):
        raise UserInputError(
            f"{where}: the scan covers only {' x '.join(f'{v:.0f}' for v in extent)} mm; the segmenter needs at "
            f"least {config.min_extent_mm:g} mm along each axis around the adrenals (re-export a larger field of "
            "view)")
    if spacing_range is not None:
        spacing = np.array(reference.GetSpacing())
        low, high = np.array(spacing_range[0]), np.array(spacing_range[1])
        tol = config.spacing_tolerance
        if np.any(spacing < low / tol) or np.any(spacing > high * tol):
            raise UserInputError(
                f"{where}: voxel spacing {tuple(round(float(v), 2) for v in spacing)} mm is far outside the "
                f"segmenter's training range {tuple(low.round(2))}-{tuple(high.round(2))} mm (tolerance x{tol:g}); "
                "resample the scan or train the segmenter on such scans")


def load_scan(scan: ScanRecord, phases: list[str], config: SegmentConfig, with_target: bool,
              region: Region | None = None,
              spacing_range: tuple[list[float], list[float]] | None = None) -> ScanVolume:
    """Read a scan's phases (and its lesions' masks) onto the segmenter's isotropic grid."""
    missing = [p for p in phases if p not in scan.phase_paths]
    if missing:
        raise UserInputError(f"{scan.where}: the segmenter uses phases {phases} and this scan lacks {missing}; "
                             "give those phase files, or train a segmenter on the phases you have "
                             "(segment.yaml 'phases')")
    reference = read_image(scan.phase_paths[phases[0]], sitk.sitkFloat32)
    check_scan_geometry(reference, scan.where, config, spacing_range)
    bounds = _region_bounds(region, reference, config.region_margin_mm, scan.where)
    grid = isotropic_grid(reference, bounds, config.spacing_mm)
    channels, images = [], []
    for phase in phases:
        image = reference if phase == phases[0] else read_image(scan.phase_paths[phase], sitk.sitkFloat32)
        images.append(image)
        values = sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, AIR_HU,
                                                      sitk.sitkFloat32))
        if not np.isfinite(values).all():
            raise UserInputError(f"{scan.where}: {phase} phase holds non-finite values; re-export it")
        channels.append(window_hu(values, config.hu_window))
    target, masks = None, None
    if with_target:
        masks = lesion_masks(scan, reference)
        target_image = sitk.GetImageFromArray(np.any(masks, axis=0).astype(np.float32))
        target_image.CopyInformation(reference)
        resampled = sitk.Resample(target_image, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        target = (sitk.GetArrayFromImage(resampled) >= 0.5).astype(np.uint8)
    return ScanVolume(np.stack(channels).astype(np.float32), target, grid, reference,
                      tuple(float(v) for v in reference.GetSpacing()), images, masks)


def lesion_masks(scan: ScanRecord, reference: sitk.Image) -> np.ndarray:
    """(lesions, z, y, x) bool: each lesion's mask on the reference phase's grid; an empty mask is refused."""
    shape = sitk.GetArrayViewFromImage(reference).shape
    out = np.zeros((len(scan.lesions), *shape), dtype=bool)
    for i, lesion in enumerate(scan.lesions):
        mask = read_lesion_mask(lesion.require_mask(), lesion.mask_label, reference)
        if sitk.GetArrayViewFromImage(mask).shape != shape:
            mask = sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        out[i] = sitk.GetArrayViewFromImage(mask) > 0
        if not out[i].any():
            raise UserInputError(f"{lesion.where}: mask {lesion.mask_path.name} has no voxel of this lesion")
    return out


def body_midline_x(reference: sitk.Image) -> float:
    """Physical x (mm, LPS: + is the patient's left) of the body's centre: the centroid of voxels above
    -500 HU, or the image centre when nothing is."""
    body = sitk.Cast(reference > BODY_HU, sitk.sitkUInt8)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(body)
    if stats.HasLabel(1):
        return float(stats.GetCentroid(1)[0])
    size = np.array(reference.GetSize(), dtype=float)
    return float(reference.TransformContinuousIndexToPhysicalPoint(list((size - 1) / 2))[0])
