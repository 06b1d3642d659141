"""`fusion-model validate`: check a cohort directory before anything trains.

Reports every problem at once: table schema, file existence and containment, masks
(readable, non-empty, binary or labelled), geometry of masks against phases, patients in two
splits. Volumes are read one lesion at a time; phases only by header.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from clinical_schema import LAB_COLUMNS, PATH_COLUMNS, PHASES, validate_clinical_table
from fusion_model.catalogue import mask_source_counts
from fusion_model.cohort.load import Cohort, mask_sources, read_clinical_csv
from fusion_model.cohort.spec import TABLE_FILE, CohortSpec, read_cohort_spec
from fusion_model.engine import Engine
from fusion_model.errors import UserInputError
from fusion_model.imaging.dicom_masks import is_dicom_mask, read_dicom_mask
from fusion_model.imaging.geometry import Geometry, geometry_differences
from fusion_model.imaging.io import read_image
from fusion_model.imaging.preprocess import binary_mask
from fusion_model.imaging.quality import ct_value_problems
from fusion_model.records import LesionRecord


@dataclass(frozen=True)
class Problem:
    """One finding of cohort validation: an error or a warning, where, and what to do."""

    severity: str  # "error" or "warning"
    where: str
    message: str

    def line(self) -> str:
        """The finding as one printable line."""
        return f"{self.severity}: {self.where}: {self.message}"


@dataclass
class ValidationReport:
    """Everything `validate` found in a cohort directory."""

    root: Path
    problems: list[Problem] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        """Findings that make the cohort unusable."""
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        """Findings worth a look that do not stop training."""
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when there is no error."""
        return not self.errors

    def error(self, where: str, message: str) -> None:
        """Record an error at ``where``."""
        self.problems.append(Problem("error", where, message))

    def warn(self, where: str, message: str) -> None:
        """Record a warning at ``where``."""
        self.problems.append(Problem("warning", where, message))


def validate_cohort(
    root: Path,
    require_label: bool = False,
    resample_mismatched: bool = False,
    progress: bool = True,
    masks_b_dir: Path | None = None,
    engine: Engine | None = None,
) -> ValidationReport:
    """Check a cohort directory: table schema, files, masks, geometry and split leakage, all at once.

    A second reader's masks (columns ``mask_path_b`` / ``mask_label_b``, or ``masks_b_dir`` holding files named
    as the ``mask_path`` files) are checked like the first: readable, holding the lesion's label, on its grid.
    The images are checked one lesion per task on ``engine`` (default: this process); findings come in table
    order whichever engine ran them.
    """
    root = Path(root)
    report = ValidationReport(root)
    if not root.is_dir():
        report.error(str(root), "not a directory; give the cohort directory (with cohort.json and clinical.csv)")
        return report
    try:
        spec = read_cohort_spec(root)
        raw = read_clinical_csv(root / TABLE_FILE)
    except UserInputError as err:
        report.error(str(root), str(err))
        return report

    table_check = validate_clinical_table(raw, spec.extra_features, require_label=require_label)
    for p in table_check.problems:
        report.error(TABLE_FILE + (f" row {p.row}" if p.row else ""), p.message(TABLE_FILE).split(", ", 1)[-1])
    table = table_check.table
    if not table_check.ok or table is None:
        return report  # later checks read columns that a failed table cannot be trusted to hold
    if len(table) == 0:
        report.error(TABLE_FILE, "has a header but no lesion rows; add one row per lesion")
        return report

    _check_table_against_spec(table, spec, report)
    _check_split_leakage(table, report)
    if masks_b_dir is not None and not Path(masks_b_dir).is_dir():
        report.error(str(masks_b_dir), "--masks-b: not a folder; give the folder holding the second reader's masks, "
                                       "named as the mask_path files")
        return report
    engine = engine or Engine()
    # on a cluster the workers resolve the files from the absolute path (their working folders differ)
    cohort = Cohort(root=root.absolute() if engine.on_cluster else root, spec=spec,
                    table=table.reset_index(drop=True))
    if engine.on_cluster:
        engine.check_paths([cohort.root] + ([Path(masks_b_dir)] if masks_b_dir is not None else []),
                           "the cohort's folder")
    task = functools.partial(check_lesion_images, cohort, resample=resample_mismatched, masks_b_dir=masks_b_dir)
    second_reader = 0
    for problems, second in engine.map(task, list(range(len(table))), "checking images", progress):
        report.problems.extend(problems)
        second_reader += second
    report.summary = summarise(table, spec)
    if second_reader or masks_b_dir is not None or "mask_path_b" in table:
        report.summary["second_reader_masks"] = second_reader
        if masks_b_dir is not None and not second_reader:
            report.error(str(masks_b_dir), "holds no file named as any mask_path file of the cohort; the second "
                                           "reader's masks must carry the first reader's file names")
    return report


def check_lesion_images(cohort: Cohort, index: int, resample: bool = False,
                        masks_b_dir: Path | None = None) -> tuple[list[Problem], int]:
    """The findings on one lesion's images and masks (the second reader's too), and 1 when it has a second
    reader's mask: a task of the image checks, the same on any worker."""
    report = ValidationReport(cohort.root)
    reference = _check_lesion_files(cohort, index, resample, report)
    second = _check_second_reader(cohort, index, masks_b_dir, reference, resample, report)
    return report.problems, second


def _check_table_against_spec(table: pd.DataFrame, spec: CohortSpec, report: ValidationReport) -> None:
    for phase in PHASES:
        column = PATH_COLUMNS[phase]
        if phase not in spec.phases and column in table and table[column].notna().any():
            report.error(TABLE_FILE, f"column {column!r} names files but cohort.json 'phases' lacks {phase!r}; "
                                     "add the phase or empty the column")
    if spec.centres:
        for centre in sorted(set(table["centre"].dropna()) - set(spec.centres)):
            rows = [i + 2 for i in np.flatnonzero((table["centre"] == centre).to_numpy())]
            shown = ", ".join(map(str, rows[:10])) + (f" and {len(rows) - 10} more" if len(rows) > 10 else "")
            report.error(f"{TABLE_FILE} rows {shown}", f"centre {centre!r} is not among cohort.json 'centres' "
                                                        f"{spec.centres}; add it there or correct these rows")
    if not spec.ct_intensities and "unenhanced_hu" in table and table["unenhanced_hu"].notna().any():
        report.warn(TABLE_FILE, "cohort.json says ct_intensities is false, yet unenhanced_hu has values")


def _check_split_leakage(table: pd.DataFrame, report: ValidationReport) -> None:
    if "split" not in table or table["split"].isna().all():
        return
    splits_per_patient = table.dropna(subset=["split"]).groupby("patient_id")["split"].agg(lambda s: sorted(set(s)))
    for patient_id, splits in splits_per_patient.items():
        if len(splits) > 1:
            rows = [i + 2 for i in table.index[table["patient_id"] == patient_id]]
            report.error(
                f"{TABLE_FILE} rows {rows}",
                f"patient {patient_id!r} is in splits {splits}; a patient's lesions must all be in one split "
                "(otherwise the test set leaks into training)",
            )


def _check_lesion_files(cohort: Cohort, index: int, resample: bool, report: ValidationReport
                        ) -> tuple[Path, Geometry] | None:
    """Check one lesion's phases and mask; returns its reference phase's path and grid when it could be read."""
    row = cohort.table.iloc[index]
    where = f"{TABLE_FILE} row {index + 2} (lesion {row['lesion_id']})"
    try:
        lesion = cohort.lesion(index)
    except UserInputError as err:
        report.error(where, str(err).split(": ", 1)[-1])
        return None
    if not lesion.phase_paths:
        report.error(where, f"no CT phase file; fill at least one of {[PATH_COLUMNS[p] for p in cohort.spec.phases]}")
        return None
    reference_phase = next(p for p in cohort.spec.phases if p in lesion.phase_paths)
    geometries, lesion_mask, reference_image = {}, None, None
    if lesion.mask_path is None:
        report.warn(where, "no mask_path: the lesion is not outlined yet; 'fusion-model segment predict' outlines "
                           "it, and train / evaluate skip it until then")
    else:
        try:
            mask, reference_image = _read_mask(lesion, lesion.phase_paths[reference_phase])
        except UserInputError as err:
            report.error(where, f"mask: {err}")
            return None
        _check_mask_values(mask, lesion, where, report)
        geometries["mask"] = (lesion.mask_path, Geometry.of(mask))
        lesion_mask = binary_mask(mask, lesion.mask_label)
    missing = [p for p in cohort.spec.phases if p not in lesion.phase_paths]
    if missing:
        report.warn(where, f"phase(s) {missing} missing for this lesion; models will treat them as missing")
    for phase, path in lesion.phase_paths.items():
        try:
            image = (reference_image if phase == reference_phase and reference_image is not None
                     else read_image(path))
        except UserInputError as err:
            report.error(where, f"{phase} phase: {err}")
            continue
        geometries[phase] = (path, Geometry.of(image))
        same_grid = "mask" in geometries and not geometry_differences(geometries[phase][1], geometries["mask"][1])
        for problem in ct_value_problems(image, phase, lesion_mask if same_grid else None,
                                         hounsfield=cohort.spec.ct_intensities):
            report.error(where, f"{phase} phase ({path.name}): {problem}")
    if reference_phase not in geometries:
        return None
    ref_path, ref_geometry = geometries[reference_phase]
    for name, (path, geometry) in geometries.items():
        if name == reference_phase:
            continue
        differences = geometry_differences(ref_geometry, geometry)
        if not differences:
            continue
        text = (f"{name} ({path.name}) and the {reference_phase} phase ({ref_path.name}) do not share physical "
                "space: " + "; ".join(differences))
        if resample:
            report.warn(where, text + f" (it will be resampled onto the {reference_phase} grid)")
        else:
            report.error(where, text + f"; re-export them on one grid, or pass --resample to resample "
                                       f"onto the {reference_phase} grid")
    return ref_path, ref_geometry


def _check_second_reader(cohort: Cohort, index: int, masks_b_dir: Path | None, reference: tuple[Path, Geometry] | None,
                         resample: bool, report: ValidationReport) -> int:
    """Check the second reader's mask of one lesion like the first; 1 when there is one, else 0."""
    where = f"{TABLE_FILE} row {cohort.line_of(index)} (lesion {cohort.table['lesion_id'].iloc[index]})"
    if reference is None:  # the lesion's own files are broken (reported above): nothing to check against
        value = cohort.table["mask_path_b"].iloc[index] if "mask_path_b" in cohort.table else None
        return int(masks_b_dir is None and value is not None and not pd.isna(value))
    reference_path, reference_geometry = reference
    try:
        lesion = cohort.lesion_b(index, masks_b_dir)
    except UserInputError as err:
        report.error(where, str(err).split(": ", 1)[-1])
        return 1
    if lesion is None:
        return 0
    try:
        mask, _ = _read_mask(lesion, reference_path)
    except UserInputError as err:
        report.error(where, f"second reader's mask: {err}")
        return 1
    _check_mask_values(mask, lesion, where + ", second reader", report,
                       "mask_label" if masks_b_dir is not None else "mask_label_b")
    differences = geometry_differences(reference_geometry, Geometry.of(mask))
    if differences:
        text = (f"second reader's mask ({lesion.mask_path.name}) and the CT ({reference_path.name}) do not share "
                "physical space: " + "; ".join(differences))
        if resample:
            report.warn(where, text + " (it will be resampled onto the CT grid)")
        else:
            report.error(where, text + "; re-export it on the CT grid, or pass --resample")
    return 1


def _read_mask(lesion: LesionRecord, reference_path: Path) -> tuple[sitk.Image, sitk.Image | None]:
    """The mask file as stored, or a DICOM SEG / RTSTRUCT put on the lesion's first CT phase (as 0/1 with
    the lesion's label, so the label checks read it like a label image) together with that phase's image,
    which was read for it (None for a mask file)."""
    if not is_dicom_mask(lesion.mask_path):
        return read_image(lesion.mask_path), None
    reference = read_image(reference_path)
    mask = read_dicom_mask(lesion.mask_path, lesion.mask_label, reference, list(lesion.phase_paths.values()))
    return sitk.Cast(mask, sitk.sitkUInt16) * int(lesion.mask_label or 1), reference


def _check_mask_values(mask: sitk.Image, lesion: LesionRecord, where: str, report: ValidationReport,
                       label_column: str = "mask_label") -> None:
    values = sitk.GetArrayViewFromImage(mask)
    if np.issubdtype(values.dtype, np.floating) and not np.all(np.equal(np.mod(values, 1), 0)):
        report.error(where, f"mask {lesion.mask_path.name} holds fractional values; give a binary or label mask")
        return
    labels = np.unique(values)
    nonzero = [int(v) for v in labels if v != 0]
    if lesion.mask_label is not None:
        if lesion.mask_label not in nonzero:
            report.error(where, f"mask {lesion.mask_path.name} has no voxel with label {lesion.mask_label} "
                                f"(labels present: {nonzero or 'none'}); correct {label_column}")
    elif not nonzero:
        report.error(where, f"mask {lesion.mask_path.name} is empty (no non-zero voxel); segment the lesion")
    elif len(nonzero) > 1:
        report.error(where, f"mask {lesion.mask_path.name} holds several labels {nonzero[:10]}; "
                            f"set {label_column} to this lesion's label value")


def summarise(table: pd.DataFrame, spec: CohortSpec) -> dict:
    """Cohort summary as plain data (printed by the CLI, stored in reports)."""
    summary: dict = {
        "name": spec.name,
        "label_meaning": spec.label_meaning,
        "lesions": int(len(table)),
        "patients": int(table["patient_id"].nunique()),
        "centres": {str(k): int(v) for k, v in table["centre"].value_counts().sort_index().items()},
        "phases": {p: int(table[PATH_COLUMNS[p]].notna().sum()) if PATH_COLUMNS[p] in table else 0
                   for p in spec.phases},
        "mask_sources": mask_source_counts(mask_sources(table)),
    }
    if "label" in table and table["label"].notna().any():
        labels = table["label"].dropna().astype(int)
        summary["class_balance"] = {"benign": int((labels == 0).sum()), "malignant": int((labels == 1).sum()),
                                    "unlabelled": int(table["label"].isna().sum())}
        summary["malignant_by_centre"] = {
            str(c): f"{int(g['label'].sum())}/{len(g)}" for c, g in table.groupby("centre")
        }
    if "lesion_type" in table and table["lesion_type"].notna().any():
        summary["lesion_types"] = {str(k): int(v) for k, v in table["lesion_type"].value_counts().items()}
    if "split" in table and table["split"].notna().any():
        summary["splits"] = {str(k): int(v) for k, v in table["split"].value_counts().sort_index().items()}
    data_columns = [c for c in table.columns if not c.endswith("_path") and c not in ("mask_label",)]
    summary["missing_percent"] = {c: round(100 * float(table[c].isna().mean()), 1) for c in data_columns}
    summary["labs_missing_percent"] = {c: summary["missing_percent"][c] for c in LAB_COLUMNS if c in table}
    return summary
