"""Scans for the segmenter: a patient's CT phases on one isotropic grid, with every lesion of the scan as target.

A *scan* is one set of phase files: the lesions of a table that name the same files (usually one patient's
lesions) share it. The network sees the scan's phases as channels, HU-windowed to [0, 1], resampled to the
segmenter's isotropic spacing over the whole field of view, or over the adrenal region when one is given
(a box in mm, or an organ mask such as TotalSegmentator's adrenal labels, plus a margin).
"""

from __future__ import annotations

import json
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
from fusion_model.segment.matching import LesionQuery

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
    sizes_mm: list[float | None] = field(default_factory=list)  # the table's size_mm per lesion
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
    sizes = pd.to_numeric(cohort.table["size_mm"], errors="coerce") if "size_mm" in cohort.table \
        else pd.Series([np.nan] * len(cohort.table))
    for i, lesion in enumerate(cohort.lesions()):
        if not lesion.phase_paths:
            raise UserInputError(f"{lesion.where}: no CT phase file; fill at least one phase path")
        key = (lesion.patient_id, tuple(sorted((p, str(v)) for p, v in lesion.phase_paths.items())))
        scan = scans.setdefault(key, ScanRecord(lesion.patient_id, lesion.centre, dict(lesion.phase_paths)))
        scan.lesions.append(lesion)
        side = sides.iloc[i]
        scan.sides.append(None if side is None or pd.isna(side) else str(side))
        size = sizes.iloc[i]
        scan.sizes_mm.append(None if pd.isna(size) or size <= 0 else float(size))
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


TOTALSEGMENTATOR_FILES = {"right": "adrenal_gland_right", "left": "adrenal_gland_left"}
TOTALSEGMENTATOR_LABELS = {"right": 8, "left": 9}  # its 'total' task, v2: 8 adrenal_gland_right, 9 adrenal_gland_left
LABEL_MAP_FILE = "labels.json"
GLANDS_FOLDER = "glands"  # a cohort's own gland outlines, one folder per patient
GLAND_RIGHT, GLAND_LEFT, GLAND_UNSIDED = 1, 2, 3  # values of a gland map
NIFTI_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def lesion_queries(scan: ScanRecord) -> list[LesionQuery]:
    """What the table says about each lesion of the scan (side, size) for matching components."""
    return [LesionQuery(side, size) for side, size in zip(scan.sides, scan.sizes_mm)]


def cohort_gland_regions(cohort: Cohort) -> dict[str, Region]:
    """The cohort's own gland outlines (``glands/PATIENT/adrenal_gland_*.nii.gz``, as ``fusion-model synth``
    writes them and TotalSegmentator lays them out), by patient; empty when the cohort has none."""
    folder = cohort.root / GLANDS_FOLDER
    return read_regions(folder, cohort.root) if folder.is_dir() and any(folder.iterdir()) else {}


@dataclass(frozen=True)
class GlandFile:
    """One file of adrenal-gland voxels: those equal to ``label`` (any non-zero voxel when None), on ``side``
    (None: the mask does not say which gland)."""

    path: Path
    side: str | None = None
    label: int | None = None


@dataclass(frozen=True)
class Region:
    """Where the adrenal glands are: a box in physical mm (LPS), or gland masks (TotalSegmentator's
    ``adrenal_gland_left/right`` files, its multi-label file, or any organ mask); a margin is added."""

    box_mm: tuple[float, float, float, float, float, float] | None = None
    glands: tuple[GlandFile, ...] = ()

    @property
    def has_glands(self) -> bool:
        """Whether the region outlines the glands (not only a box)."""
        return bool(self.glands)


def _strip_suffix(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _image_files(folder: Path) -> dict[str, Path]:
    return {_strip_suffix(p.name): p for p in sorted(folder.iterdir())
            if p.is_file() and p.name.endswith(NIFTI_SUFFIXES)}


def read_label_map(path: Path) -> dict[str, int]:
    """TotalSegmentator's multi-label values of the two glands: from a ``labels.json`` ({"8":
    "adrenal_gland_right", ...} or {"adrenal_gland_right": 8, ...}) or its 'total' task's numbering (8, 9)."""
    if not path.is_file():
        return dict(TOTALSEGMENTATOR_LABELS)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserInputError(f"{path}: not a JSON label map ({err}); write e.g. {{\"8\": \"adrenal_gland_right\", "
                             "\"9\": \"adrenal_gland_left\"}") from None
    pairs = {}
    if isinstance(raw, dict):
        for key, value in raw.items():
            name, number = (value, key) if isinstance(value, str) else (key, value)
            try:
                pairs[str(name)] = int(number)
            except (TypeError, ValueError):
                raise UserInputError(f"{path}: label {number!r} of {name!r} is not a whole number") from None
    out = {side: pairs[name] for side, name in TOTALSEGMENTATOR_FILES.items() if name in pairs}
    if not out:
        raise UserInputError(f"{path}: names neither adrenal_gland_right nor adrenal_gland_left; give their label "
                             "values, e.g. {\"8\": \"adrenal_gland_right\", \"9\": \"adrenal_gland_left\"}")
    return out


def gland_files_at(path: Path, label_map: dict[str, int], where: str) -> tuple[GlandFile, ...]:
    """The gland files of one patient: a TotalSegmentator output folder (``adrenal_gland_right`` and
    ``adrenal_gland_left`` files, or one multi-label file in it) or a single file (multi-label by the label map,
    or a plain organ mask)."""
    if path.is_dir():
        files = _image_files(path)
        sided = tuple(GlandFile(files[name], side) for side, name in TOTALSEGMENTATOR_FILES.items() if name in files)
        if sided:
            return sided
        if len(files) == 1:
            return gland_files_at(next(iter(files.values())), label_map, where)
        raise UserInputError(f"{where}: {path} holds no adrenal_gland_right / adrenal_gland_left file (as "
                             "TotalSegmentator writes them) and not one multi-label file; give the glands there")
    if not path.is_file():
        raise UserInputError(f"{where}: {path} not found")
    return (GlandFile(path, None, None),) if not label_map else \
        tuple(GlandFile(path, side, value) for side, value in label_map.items())


def read_regions(path: Path, cohort_root: Path) -> dict[str, Region]:
    """The adrenal region per patient.

    ``path`` is a folder of TotalSegmentator outputs, one per patient (``PATIENT/adrenal_gland_right.nii.gz`` and
    ``..._left``, or ``PATIENT.nii.gz`` / ``PATIENT/NAME.nii.gz`` multi-label with a ``labels.json`` beside them or
    TotalSegmentator's 'total' numbering), or a CSV: ``patient_id`` and either the six box columns (physical mm:
    x_min_mm ... z_max_mm) or ``region_mask_path`` (relative to the cohort directory: a TotalSegmentator folder,
    a multi-label file, or an organ mask whose every non-zero voxel counts).
    """
    path = Path(path)
    if path.is_dir():
        return _read_region_folder(path)
    if not path.is_file():
        raise UserInputError(f"{path}: region file or folder not found")
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
            target = resolve_inside(cohort_root, row["region_mask_path"], f"{where}, column 'region_mask_path'")
            label_map = read_label_map(target.parent / LABEL_MAP_FILE) if (target.parent / LABEL_MAP_FILE).is_file() \
                else {}
            regions[patient] = Region(glands=gland_files_at(target, label_map, where))
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


def _read_region_folder(folder: Path) -> dict[str, Region]:
    label_map = read_label_map(folder / LABEL_MAP_FILE)
    regions = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.name == LABEL_MAP_FILE:
            continue
        if entry.is_dir():
            regions[entry.name] = Region(glands=gland_files_at(entry, label_map, f"{folder}"))
        elif entry.name.endswith(NIFTI_SUFFIXES):
            regions[_strip_suffix(entry.name)] = Region(glands=gland_files_at(entry, label_map, f"{folder}"))
    if not regions:
        raise UserInputError(f"{folder}: no patient folder or file; give TotalSegmentator's output per patient "
                             "(PATIENT/adrenal_gland_right.nii.gz and adrenal_gland_left.nii.gz, or PATIENT.nii.gz)")
    return regions


def gland_map(region: Region, reference: sitk.Image, where: str) -> np.ndarray:
    """The region's glands on the reference grid (z, y, x) uint8: 1 right, 2 left, 3 a gland of unknown side
    (nearest-neighbour resampling); an empty result is refused."""
    shape = sitk.GetArrayViewFromImage(reference).shape
    out = np.zeros(shape, dtype=np.uint8)
    binary_files = []
    for gland in region.glands:
        try:
            image = read_image(gland.path)
        except UserInputError as err:
            raise UserInputError(f"{where}: region {err}") from None
        if image.GetSize() != reference.GetSize() or image.GetOrigin() != reference.GetOrigin() \
                or image.GetSpacing() != reference.GetSpacing() or image.GetDirection() != reference.GetDirection():
            image = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                  image.GetPixelID())
        values = sitk.GetArrayViewFromImage(image)
        inside = values != 0 if gland.label is None else values == gland.label
        code = {"right": GLAND_RIGHT, "left": GLAND_LEFT}.get(gland.side or "", GLAND_UNSIDED)
        out[inside & (out == 0)] = code
        if gland.label is not None and values.max() == 1:
            binary_files.append(values != 0)
    if not out.any() and binary_files:  # a plain 0/1 mask where a multi-label file was expected
        out[np.any(binary_files, axis=0)] = GLAND_UNSIDED
    if not out.any():
        names = ", ".join(sorted({g.path.name for g in region.glands}))
        labels = sorted({g.label for g in region.glands if g.label is not None})
        raise UserInputError(f"{where}: region {names} has no adrenal-gland voxel" + (
            f" (labels {labels}; give the file's label map as {LABEL_MAP_FILE} beside it)" if labels else "")
            + "; give the adrenal region or leave this patient out of --region")
    return out


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
    glands: np.ndarray | None = None  # gland map (1 right, 2 left, 3 unsided) on the segmenter's grid, when known
    glands_native: np.ndarray | None = None  # the same on the reference grid


def _physical_corners(image: sitk.Image) -> np.ndarray:
    size = np.array(image.GetSize()) - 1
    corners = [[i, j, k] for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])]
    return np.array([image.TransformContinuousIndexToPhysicalPoint([float(v) for v in c]) for c in corners])


def _extent_mm(image: sitk.Image) -> np.ndarray:
    return np.array(image.GetSize()) * np.array(image.GetSpacing())


def _region_bounds(region: Region | None, reference: sitk.Image, margin_mm: float, where: str,
                   glands: np.ndarray | None = None) -> np.ndarray:
    """(2, 3) physical lower/upper bounds (in the reference's axes) to resample over (``glands``: the region's
    gland map, when already read)."""
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    local = _physical_corners(reference) @ direction  # coordinates along the image axes
    lower, upper = local.min(axis=0), local.max(axis=0)
    if region is None:
        return np.stack([lower, upper])
    if region.box_mm is not None:
        box = np.array(region.box_mm).reshape(3, 2)
        corners = np.array([[x, y, z] for x in box[0] for y in box[1] for z in box[2]]) @ direction
    else:
        inside = np.argwhere((gland_map(region, reference, where) if glands is None else glands) > 0)
        lo, hi = inside.min(axis=0)[::-1], inside.max(axis=0)[::-1]  # x, y, z
        corners_index = [[i, j, k] for i in (lo[0], hi[0]) for j in (lo[1], hi[1]) for k in (lo[2], hi[2])]
        corners = np.array([reference.TransformIndexToPhysicalPoint([int(v) for v in c])
                            for c in corners_index]) @ direction
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
              spacing_range: tuple[list[float], list[float]] | None = None,
              glands: Region | None = None) -> ScanVolume:
    """Read a scan's phases (and its lesions' masks) onto the segmenter's isotropic grid, over the whole scan
    or the region's box; the gland map comes from ``glands`` or else from the region when it outlines glands."""
    missing = [p for p in phases if p not in scan.phase_paths]
    if missing:
        raise UserInputError(f"{scan.where}: the segmenter uses phases {phases} and this scan lacks {missing}; "
                             "give those phase files, or train a segmenter on the phases you have "
                             "(segment.yaml 'phases')")
    reference = read_image(scan.phase_paths[phases[0]], sitk.sitkFloat32)
    check_scan_geometry(reference, scan.where, config, spacing_range)
    source = glands if glands is not None else region if region is not None and region.has_glands else None
    native_glands = gland_map(source, reference, scan.where) if source is not None else None
    bounds = _region_bounds(region, reference, config.region_margin_mm, scan.where,
                            native_glands if source is region else None)
    grid = isotropic_grid(reference, bounds, config.spacing_mm)
    grid_glands = None
    if native_glands is not None:
        image = sitk.GetImageFromArray(native_glands)
        image.CopyInformation(reference)
        grid_glands = sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkNearestNeighbor,
                                                           0, sitk.sitkUInt8))
        if not grid_glands.any():  # thin glands between coarse voxels: keep the nearest voxel of each
            zyx = np.argwhere(native_glands > 0)
            for index in zyx[:: max(1, len(zyx) // 64)]:
                point = reference.TransformIndexToPhysicalPoint([int(v) for v in index[::-1]])
                cell = grid.TransformPhysicalPointToIndex(point)
                if all(0 <= c < n for c, n in zip(cell, grid.GetSize())):
                    grid_glands[cell[2], cell[1], cell[0]] = native_glands[tuple(index)]
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
                      tuple(float(v) for v in reference.GetSpacing()), images, masks, grid_glands, native_glands)


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
