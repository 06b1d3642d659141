"""`fusion-model segment predict`: outline every lesion of a cohort and write a new cohort that uses the masks.

For each scan: sliding-window probabilities, resampled onto the scan's own grid, thresholded, split into
connected components (smaller than ``min_component_mm3`` dropped), each with its highest voxel probability
(times the refiner's confidence in it, with ``refine_confirms``).
Components farther than ``gland_margin_mm`` from an adrenal gland (given by ``--region`` or learned by the
detector) are suppressed. Components are matched to the table's lesions (which the table says exist) only when
plausible: on the lesion's side, near a gland, of a size compatible with ``size_mm``, with at least
``match_min_probability`` (:mod:`fusion_model.segment.matching`); ``matching.csv`` says for every lesion which
component it took or why each was refused. Each lesion found gets its label in ``masks/KEY_auto.nii.gz``
(and, for DICOM images, a DICOM SEG beside it); lesions where nothing was found keep an empty mask_path and
are listed in ``not_found.csv`` with their label and type where the table has them, and counted in
``segmentation.json``. The new cohort shares the images (hard links where the file system allows,
copies otherwise), keeps every other cell of clinical.csv as written, and says ``mask_source = auto``.
The input's own masks, where it had them, become the second reader of the new cohort (``masks_manual/``,
``mask_path_b`` / ``mask_label_b``), so that ``fusion-model agreement --cohort NEWDIR`` measures the automatic
outlines against them.
"""

from __future__ import annotations

import functools
import json
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch

from clinical_schema import PATH_COLUMNS
from fusion_model import __version__
from fusion_model.cohort import load_cohort
from fusion_model.cohort.load import Cohort, read_clinical_csv
from fusion_model.cohort.spec import TABLE_FILE, write_cohort_spec
from fusion_model.devices import resolve_device
from fusion_model.engine import Engine, task_threads
from fusion_model.errors import UserInputError
from fusion_model.fileio import atomic_directory, check_output_dir, link_or_copy
from fusion_model.imaging.io import read_image_header
from fusion_model.segment.artifact import Segmenter, load_segmenter
from fusion_model.segment.infer import match_table_lesions, segment_scan
from fusion_model.segment.matching import Component, Match
from fusion_model.segment.scans import (
    Region,
    ScanRecord,
    check_scan_geometry,
    cohort_scans,
    lesion_queries,
    load_scan,
)

MANUAL_MASKS = "masks_manual"  # the input cohort's masks: the new cohort's second reader
NOT_FOUND_FILE = "not_found.csv"
MATCHING_FILE = "matching.csv"
COMPONENTS_FILE = "components.csv"
SUMMARY_FILE = "segmentation.json"


@dataclass
class ScanPrediction:
    """One scan's result: component labels on its grid, the components, and each lesion's component."""

    labels: np.ndarray
    components: list[Component]
    matches: list[Match]
    reference: sitk.Image
    seconds: float
    suppressed: list[Component] = field(default_factory=list)
    gland_source: str | None = None

    @property
    def matched(self) -> list[int | None]:
        """Each lesion's component label (None: none)."""
        return [m.label for m in self.matches]


def check_cohort_for_segmenter(cohort: Cohort, scans: list[ScanRecord], segmenter: Segmenter) -> None:
    """Refuse, before any work, a cohort without the segmenter's phases or with scans it cannot handle."""
    lacking = [p for p in segmenter.phases if p not in cohort.spec.phases]
    if lacking:
        raise UserInputError(
            f"{cohort.root / 'cohort.json'}: the segmenter was trained on phases {segmenter.phases} and this cohort "
            f"has {cohort.spec.phases} (no {lacking}); use a segmenter trained on this cohort's phases")
    for scan in scans:
        missing = [p for p in segmenter.phases if p not in scan.phase_paths]
        if missing:
            raise UserInputError(f"{scan.where}: no {missing} phase file, which the segmenter needs; give the file "
                                 "or leave this patient out")
        header = read_image_header(scan.phase_paths[segmenter.phases[0]])
        check_scan_geometry(header, f"{scan.where}, {scan.phase_paths[segmenter.phases[0]].name}",
                            segmenter.config, segmenter.spacing_range)


def predict_scan(segmenter: Segmenter, scan: ScanRecord, device: torch.device,
                 region: Region | None = None) -> ScanPrediction:
    """Find and outline the lesions of one scan."""
    started = time.perf_counter()
    volume = load_scan(scan, segmenter.phases, segmenter.config, with_target=False, region=region,
                       spacing_range=segmenter.spacing_range)
    found = segment_scan(segmenter.network, segmenter.refiner, volume, segmenter.config, device, segmenter.phases)
    config = segmenter.config
    queries = lesion_queries(scan)
    found, matches = match_table_lesions(segmenter.refiner, volume, found, queries, segmenter.match_threshold,
                                         config, device, segmenter.phases)
    return ScanPrediction(found.labels, found.components, matches, volume.reference, time.perf_counter() - started,
                          found.suppressed, found.gland_source)


def table_cell(cohort: Cohort, lesion_id: str, column: str):
    """One cell of the cohort's table for a lesion (None when the column is absent or the cell empty)."""
    if column not in cohort.table:
        return None
    value = cohort.table.loc[cohort.table["lesion_id"] == lesion_id, column].iloc[0]
    return None if pd.isna(value) else value.item() if hasattr(value, "item") else value


def unscored_counts(frame: pd.DataFrame) -> dict:
    """Lesions left without an automatic mask, counted by label and by lesion type (where the table has them)."""
    out: dict = {"count": int(len(frame))}
    for column in ("label", "lesion_type"):
        if column in frame and len(frame):
            values = frame[column].map(lambda v: "unknown" if v is None or (isinstance(v, float) and np.isnan(v))
                                       else str(int(v)) if column == "label" else str(v))
            out[f"by_{column}"] = {k: int(n) for k, n in sorted(values.value_counts().items())}
    return out


def _write_dicom_seg(series: Path, lesion_labels: np.ndarray, lesion_ids: list[str], path: Path) -> None:
    """A DICOM SEG on the CT series, one segment per found lesion (so a PACS viewer shows the outline)."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from fusion_model.imaging.io import dicom_series_files

    sources = [pydicom.dcmread(f) for f in dicom_series_files(series)]
    algorithm = hd.AlgorithmIdentificationSequence(name="fusion-model segment", version=__version__,
                                                   family=codes.DCM.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=k + 1, segment_label=f"lesion {lesion_id}"[:64],
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm) for k, lesion_id in enumerate(lesion_ids)]
    pixels = np.stack([lesion_labels == k + 1 for k in range(len(lesion_ids))], axis=-1)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=900,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="fusion-model",
        manufacturer_model_name="fusion-model segment", software_versions=__version__, device_serial_number="0",
        series_description="fusion-model automatic lesion masks", omit_empty_frames=False)
    seg.save_as(path)


@dataclass
class ScanOutline:
    """What outlining one scan returns to the pass (its mask file is written by the task): each lesion's match,
    the components (kept and suppressed), where the gland region came from, the lesions given a mask (in label
    order), whether a DICOM SEG was written, and the seconds it took."""

    matches: list[Match]
    components: list[Component]
    suppressed: list[Component]
    gland_source: str | None
    found_ids: list[str]
    dicom_seg: bool
    seconds: float

    @property
    def matched(self) -> list[int | None]:
        """Each lesion's component label (None: none)."""
        return [m.label for m in self.matches]


def _segmenter_on(model_dir: str, device: str) -> tuple[Segmenter, torch.device]:
    """The segmenter on its device, loaded once per process (on a Dask worker: once per worker) and again when
    its files change."""
    files = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(Path(model_dir).iterdir())) \
        if Path(model_dir).is_dir() else ()
    return _load_segmenter_on(model_dir, device, files)


@functools.lru_cache(maxsize=2)
def _load_segmenter_on(model_dir: str, device: str, files: tuple) -> tuple[Segmenter, torch.device]:
    segmenter = load_segmenter(Path(model_dir))
    torch_device = resolve_device(device)
    segmenter.to(torch_device)
    return segmenter, torch_device


def outline_scan(scan_and_region: tuple[ScanRecord, Region | None], model_dir: str, device: str, masks_dir: Path,
                 dicom_seg: bool) -> ScanOutline:
    """Outline one scan (in its region, if given) and write its lesions' mask (``masks_dir/KEY_auto.nii.gz``, and
    a DICOM SEG for DICOM images): a task of the pass, the same on any worker."""
    scan, region = scan_and_region
    segmenter, torch_device = _segmenter_on(model_dir, device)
    if segmenter.config.threads and task_threads() is None:  # a Dask worker has its own (engine_plugins.WorkerSettings)
        torch.set_num_threads(segmenter.config.threads)
    result = predict_scan(segmenter, scan, torch_device, region)
    lesion_labels = np.zeros(result.labels.shape, dtype=np.uint8)
    found_ids = []
    for lesion, match in zip(scan.lesions, result.matches):
        if match.label is not None:
            found_ids.append(lesion.lesion_id)
            lesion_labels[result.labels == match.label] = len(found_ids)
    wrote_seg = False
    if found_ids:
        image = sitk.GetImageFromArray(lesion_labels)
        image.CopyInformation(result.reference)
        sitk.WriteImage(image, str(masks_dir / f"{scan.key}_auto.nii.gz"), True)
        reference_path = scan.phase_paths[segmenter.phases[0]]
        if dicom_seg and reference_path.is_dir():
            _write_dicom_seg(reference_path, lesion_labels, found_ids, masks_dir / f"{scan.key}_auto_seg.dcm")
            wrote_seg = True
    return ScanOutline(result.matches, result.components, result.suppressed, result.gland_source, found_ids,
                       wrote_seg, result.seconds)


@dataclass
class PredictRun:
    """What segment predict wrote and found."""

    out: Path
    lesions: int
    found: int
    not_found: pd.DataFrame
    seconds_per_scan: float
    peak_memory_gb: float
    dicom_seg_files: int = 0
    summary: dict = field(default_factory=dict)


def predict_masks(model_dir: Path, cohort_dir: Path, out: Path, centre: str | None = None,
                  regions: dict[str, Region] | None = None, device: str = "auto", dicom_seg: bool = True,
                  overwrite: bool = False, progress: bool = True, engine: Engine | None = None) -> PredictRun:
    """Outline the lesions of a cohort (or one centre of it) and write a new cohort directory using the masks;
    one :func:`outline_scan` task per scan on ``engine`` (default: this process)."""
    check_output_dir(out, overwrite)
    engine = engine or Engine()
    model_path = str(Path(model_dir).absolute())
    segmenter, torch_device = _segmenter_on(model_path, device)
    cohort = load_cohort(cohort_dir).select(centre=centre)
    scans = cohort_scans(cohort)
    check_cohort_for_segmenter(cohort, scans, segmenter)
    out = Path(out)
    if out.resolve() == Path(cohort_dir).resolve():
        raise UserInputError(f"{out}: is the input cohort; give a new directory for the cohort with automatic masks")
    raw = read_clinical_csv(Path(cohort_dir) / TABLE_FILE)
    raw = raw[raw["lesion_id"].astype(str).isin(set(cohort.table["lesion_id"]))].reset_index(drop=True)
    row_of = {str(lesion_id): i for i, lesion_id in enumerate(raw["lesion_id"].astype(str))}
    manual = cohort.table.set_index("lesion_id").reindex(columns=["mask_path", "mask_label"])
    raw["mask_path_b"] = [None if pd.isna(v) else f"{MANUAL_MASKS}/{v}"
                          for v in manual["mask_path"].reindex(raw["lesion_id"].astype(str))]
    raw["mask_label_b"] = manual["mask_label"].reindex(raw["lesion_id"].astype(str)).to_numpy()
    for column in ("mask_path", "mask_label", "mask_source"):
        raw[column] = pd.Series([None] * len(raw), dtype=object)
    regions = regions or {}
    not_found, component_rows, matching_rows, seconds, seg_files = [], [], [], [], 0
    with atomic_directory(out, overwrite=overwrite) as staging:
        for column in [PATH_COLUMNS[p] for p in cohort.spec.phases if PATH_COLUMNS[p] in cohort.table]:
            for rel in sorted(set(cohort.table[column].dropna().astype(str))):
                link_or_copy(Path(cohort_dir) / rel, staging / rel)
        for rel in sorted(set(manual["mask_path"].dropna().astype(str))):
            link_or_copy(Path(cohort_dir) / rel, staging / MANUAL_MASKS / rel)
        masks_dir = Path(staging).absolute() / "masks"
        masks_dir.mkdir(exist_ok=True)
        if engine.on_cluster:
            engine.check_paths({p.parent for s in scans for p in s.phase_paths.values()} | {Path(model_path)},
                               "the cohort's images or the segmenter")
            engine.check_writable([masks_dir], "the new cohort's folder")
        task = functools.partial(outline_scan, model_dir=model_path, device=device, masks_dir=masks_dir,
                                 dicom_seg=dicom_seg)
        items = [(scan, regions.get(scan.patient_id)) for scan in scans]
        for scan, result in zip(scans, engine.map(task, items, "outlining lesions", progress)):
            seconds.append(result.seconds)
            seg_files += int(result.dicom_seg)
            found_ids = []
            for k, (lesion, match) in enumerate(zip(scan.lesions, result.matches)):
                row = row_of[lesion.lesion_id]
                truth = {c: table_cell(cohort, lesion.lesion_id, c) for c in ("label", "lesion_type")
                         if c in cohort.table}
                matching_rows.append({"lesion_id": lesion.lesion_id, "patient_id": lesion.patient_id, "row": lesion.row,
                                      "side": scan.sides[k], "size_mm": scan.sizes_mm[k],
                                      "component": match.label, "gland_source": result.gland_source or "none",
                                      "reason": match.reason})
                if match.label is None:
                    not_found.append({"lesion_id": lesion.lesion_id, "patient_id": lesion.patient_id,
                                      "row": lesion.row, "side": scan.sides[k], **truth, "reason": match.reason})
                    continue
                found_ids.append(lesion.lesion_id)
                raw.loc[row, ["mask_path", "mask_label", "mask_source"]] = [f"masks/{scan.key}_auto.nii.gz",
                                                                            len(found_ids), "auto"]
            lesion_of = {c: scan.lesions[k].lesion_id for k, c in enumerate(result.matched) if c is not None}
            for c in [*result.components, *result.suppressed]:
                component_rows.append({
                    "scan": scan.key, "patient_id": scan.patient_id, "component": c.label or "",
                    "probability": round(c.probability, 4),
                    "detector_probability": None if c.detector_probability is None else round(
                        c.detector_probability, 4),
                    "refiner_confidence": None if c.refiner_confidence is None else round(c.refiner_confidence, 4),
                    "volume_mm3": round(c.volume_mm3, 1), "diameter_mm": round(c.diameter_mm, 1),
                    "x_mm": round(c.centroid_mm[0], 1), "y_mm": round(c.centroid_mm[1], 1),
                    "z_mm": round(c.centroid_mm[2], 1), "side": c.side,
                    "gland_distance_mm": None if c.gland_distance_mm is None else round(c.gland_distance_mm, 1),
                    "suppressed": not c.label,
                    "above_operating_point": c.probability >= segmenter.threshold,
                    "lesion_id": lesion_of.get(c.label, "") if c.label else ""})
        raw["mask_label"] = raw["mask_label"].astype("Int64")
        raw["mask_label_b"] = raw["mask_label_b"].astype("Int64")
        if raw["mask_path_b"].isna().all():
            raw = raw.drop(columns=["mask_path_b", "mask_label_b"])
        raw.to_csv(staging / TABLE_FILE, index=False)
        truth_columns = [c for c in ("label", "lesion_type") if c in cohort.table]
        not_found_frame = pd.DataFrame(not_found, columns=["lesion_id", "patient_id", "row", "side", *truth_columns,
                                                           "reason"])
        not_found_frame.to_csv(staging / NOT_FOUND_FILE, index=False)
        pd.DataFrame(matching_rows).to_csv(staging / MATCHING_FILE, index=False)
        components_frame = pd.DataFrame(component_rows)
        components_frame.to_csv(staging / COMPONENTS_FILE, index=False)
        spec = cohort.spec.model_copy(update={
            "name": f"{cohort.spec.name} (automatic masks)",
            "description": (cohort.spec.description + " " if cohort.spec.description else "")
            + f"Masks by fusion-model segment predict ({Path(model_dir).name}).",
            "centres": [c for c in cohort.spec.centres if c in set(cohort.table["centre"])]})
        write_cohort_spec(staging, spec)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        summary = {"segmenter": str(model_dir), "source_cohort": str(cohort_dir), "centre": centre,
                   "component_threshold": segmenter.threshold, "scans": len(scans), "lesions": len(raw),
                   "found": len(raw) - len(not_found), "not_found": [r["lesion_id"] for r in not_found],
                   "unscored": unscored_counts(not_found_frame),
                   "gland_source": {k: int(v) for k, v in pd.Series(
                       [r["gland_source"] for r in matching_rows]).value_counts().items()},
                   "components": int((~components_frame["suppressed"]).sum()) if len(components_frame) else 0,
                   "suppressed_components": int(components_frame["suppressed"].sum()) if len(components_frame) else 0,
                   "suppressed_volume_ml": float(components_frame.loc[components_frame["suppressed"], "volume_mm3"]
                                                 .sum() / 1000) if len(components_frame) else 0.0,
                   "seconds_per_scan": float(np.mean(seconds)) if seconds else 0.0, "peak_memory_gb": peak,
                   "device": str(torch_device), "dicom_seg_files": seg_files}
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return PredictRun(out, len(raw), len(raw) - len(not_found), not_found_frame, summary["seconds_per_scan"],
                      peak, seg_files, summary)
