"""`fusion-model import-dicom`: from a PACS export to a cohort directory.

The stages, each in its module: headers (:mod:`.scan`), series and their geometry (:mod:`.series`), phases
(:mod:`.phase`), volumes (:mod:`.volumes`), pseudonyms (:mod:`.pseudonym`), the report (:mod:`.report`). This
module decides: which series of which study becomes which phase, which outlines belong to which lesion, which
rows the cohort gets, and writes it all at once (built beside ``out``, renamed into place).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from clinical_schema import PATH_COLUMNS, PHASES
from fusion_model.cohort.spec import TABLE_FILE, CohortSpec, write_cohort_spec
from fusion_model.configbase import StrictModel, known_names
from fusion_model.dicom_import import phase as phases_
from fusion_model.dicom_import import pseudonym as pseudo
from fusion_model.dicom_import.scan import ScanResult, scan_export
from fusion_model.dicom_import.series import (
    MASK_MODALITIES,
    SeriesRecord,
    check_geometry,
    group_series,
    mixed_identity,
    set_aside_reason,
    stack_affine,
)
from fusion_model.engine import Engine, on_cluster
from fusion_model.errors import FusionModelWarning, UserInputError
from fusion_model.fileio import atomic_directory, atomic_write_json, atomic_write_text, check_output_dir
from fusion_model.progress import map_tracked

MANIFEST_FILE = "import_manifest.json"
SERIES_FILE = "series.csv"
REPORT_FILE = "import_report.html"
KEY_COLUMNS = {"studyinstanceuid": "StudyInstanceUID", "accessionnumber": "AccessionNumber",
               "patientid": "PatientID"}  # most specific first
TABLE_COLUMNS_KEPT = ("centre", "split", "label", "lesion_type", "side", "size_mm", "unenhanced_hu", "age_years",
                      "sex", "history_extra_adrenal_malignancy", "hypertension", "bilateral",
                      "cortisol_post_dst_ug_dl", "plasma_metanephrines_xuln", "dhea_s_umol_l",
                      "aldosterone_renin_ratio", "potassium_mmol_l", "mask_source")


class ImportOptions(StrictModel):
    """How an export becomes a cohort (the command's options as data)."""

    phases: list[str] | None = Field(None, description="phases the cohort needs; default: those every imported "
                                     "study has")
    keep_dicom: bool = Field(False, description="point at the DICOM series (symbolic links) instead of writing NIfTI")
    min_slices: int = Field(8, ge=2, description="a series with fewer slice positions is not a volume")
    prefer_thickness_mm: float | None = Field(None, gt=0, description="choose the reconstruction closest to this "
                                              "slice thickness (default: the thinnest)")
    allow_sharp_kernel: bool = Field(False, description="let a sharp (bone/lung) kernel reconstruction be chosen "
                                     "when it is the better match; by default soft-tissue kernels come first")
    centre: str | None = Field(None, description="centre name for every study (default: InstitutionName, or the "
                               "clinical table's centre column)")
    compress: bool = Field(True, description="gzip the NIfTI volumes (.nii.gz); without, the import runs several "
                           "times faster and the volumes take about twice the space")
    name: str | None = None
    workers: int = Field(0, ge=0)

    @field_validator("phases")
    @classmethod
    def _phases(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else known_names(value, PHASES, "phase", ordered=True)


@dataclass
class StudyRecord:
    """One study of the export and what the import made of it."""

    uid: str
    series: list[SeriesRecord]
    masks: list[SeriesRecord] = field(default_factory=list)
    chosen: dict[str, SeriesRecord] = field(default_factory=dict)
    imported: bool = False
    reason: str = ""
    token: str = ""
    patient_id: str = ""
    day: int | None = None

    @property
    def first(self) -> dict:
        """A header of the study (patient- and study-level attributes)."""
        return self.series[0].first

    @property
    def patient_key(self) -> str:
        """PatientID as the export gives it; a study without one counts as its own patient (two studies without
        PatientID are never merged into one patient)."""
        return str(self.first.get("PatientID", "") or "").strip() or f"no PatientID: study {self.uid}"

    def key_value(self, key: str) -> str:
        """This study's value of a clinical table's key column (StudyInstanceUID, AccessionNumber or PatientID)."""
        return {"StudyInstanceUID": self.uid, "AccessionNumber": self.accession, "PatientID": self.patient_key}[key]

    @property
    def accession(self) -> str:
        """AccessionNumber (empty when absent)."""
        return str(self.first.get("AccessionNumber", ""))

    @property
    def date(self) -> dt.date | None:
        """StudyDate."""
        return _date(self.first.get("StudyDate"))


@dataclass
class ImportResult:
    """What an import did: the cohort written, its rows, and every series with its decision."""

    out: Path
    rows: pd.DataFrame
    series: list[SeriesRecord]
    studies: list[StudyRecord]
    scan: ScanResult
    notes: Notes
    phases: list[str]
    key_created: bool = False
    seconds: dict[str, float] = field(default_factory=dict)  # per stage


def _date(value) -> dt.date | None:
    text = str(value or "").strip()
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None


AGE_CAP_YEARS = 90  # HIPAA safe harbour: ages above 89 are reported as 90


def _age_years(header: dict) -> float | None:
    """Age at the study in whole years (PatientAge, else birth and study dates), capped at 90."""
    age = str(header.get("PatientAge", "") or "").strip().upper()
    years = None
    if len(age) == 4 and age[:3].isdigit() and age[3] in "YMWD":
        years = float(int(int(age[:3]) / {"Y": 1, "M": 12, "W": 52.18, "D": 365.25}[age[3]]))
    else:
        birth, study = _date(header.get("PatientBirthDate")), _date(header.get("StudyDate"))
        if birth and study and study >= birth:
            years = float(int((study - birth).days / 365.25))
    return None if years is None else min(years, float(AGE_CAP_YEARS))


@dataclass
class Notes:
    """What the user should know: ``console`` lines may name files of the export (whose folder names can carry
    patient names); ``public`` lines, for the report, never do."""

    console: list[str] = field(default_factory=list)
    public: list[str] = field(default_factory=list)

    def add(self, console: str, public: str | None = "") -> None:
        """A note for the console, and for the report (the same text unless ``public`` says otherwise; None:
        console only)."""
        self.console.append(console)
        if public is not None:
            self.public.append(public or console)


# ----------------------------------------------------------------------------------------------- the clinical table
@dataclass
class ClinicalTable:
    """The user's table: its rows by key value, the key column and what was left out."""

    path: Path
    key: str
    rows: dict[str, list[dict]]
    dropped: list[str]
    row_numbers: dict[str, list[int]]


def read_clinical_table(path: Path) -> ClinicalTable:
    """Read the user's clinical table, find its key column (StudyInstanceUID, AccessionNumber or PatientID; case,
    spaces and underscores ignored) and group its rows by key value."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: clinical table not found")
    try:
        header = path.read_text(encoding="utf-8-sig").split("\n", 1)[0]
        separator = max((",", ";", "\t"), key=header.count)  # hospital exports use all three
        table = pd.read_csv(path, dtype=str, keep_default_na=False, sep=separator, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise UserInputError(f"{path}: is empty; give the clinical table with a header row") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise UserInputError(f"{path}: cannot be read as a CSV table ({str(err).splitlines()[0]})") from None
    found = {"".join(ch for ch in c.lower() if ch.isalnum()): c for c in table.columns}
    key = next((k for k in KEY_COLUMNS if k in found), None)
    if key is None:
        raise UserInputError(f"{path}: needs a column that names each study: StudyInstanceUID, AccessionNumber or "
                             f"PatientID (found: {', '.join(map(str, table.columns))})")
    column = found[key]
    rows: dict[str, list[dict]] = defaultdict(list)
    numbers: dict[str, list[int]] = defaultdict(list)
    kept = [c for c in table.columns if c in TABLE_COLUMNS_KEPT]
    dropped = [c for c in table.columns if c not in TABLE_COLUMNS_KEPT and c != column]
    for index, record in table.iterrows():
        value = str(record[column]).strip()
        if not value:
            raise UserInputError(f"{path}, row {index + 2}: column {column} is empty; every row needs its "
                                 f"{KEY_COLUMNS[key]}")
        rows[value].append({c: record[c] for c in kept})
        numbers[value].append(index + 2)
    return ClinicalTable(path, KEY_COLUMNS[key], dict(rows), dropped, dict(numbers))


# ------------------------------------------------------------------------------------------------------ the keys
def check_key(key_file: Path, new_key: bool, out: Path) -> bytes | None:
    """The pseudonymisation key (None when ``new_key`` asks for a new one, created once the import succeeds).
    Refused: a missing key file without ``new_key``, an existing one with it, and a key other than the one
    ``out``'s cohort was imported with (its ids would change)."""
    key_file = Path(key_file)
    if new_key and key_file.exists():
        raise UserInputError(f"{key_file}: already exists; drop --new-key to use it (same ids as before), or choose "
                             "another --key-file")
    key = None if new_key else pseudo.read_key(key_file)
    manifest = Path(out) / MANIFEST_FILE
    if manifest.is_file():
        recorded = json.loads(manifest.read_text(encoding="utf-8")).get("key_fingerprint")
        if recorded and (key is None or recorded != pseudo.fingerprint(key)):
            raise UserInputError(
                f"{out}: was imported with another pseudonymisation key (fingerprint {recorded}); its patient ids "
                "would change. Give that key file with --key-file, or import into a new --out")
    return key


# ---------------------------------------------------------------------------------------------- parallel helpers
def _volume_task(args: tuple) -> tuple[str, str | None]:
    from fusion_model.dicom_import.volumes import stack, write_volume

    files, matrix, origin, target = args
    try:
        write_volume(stack(files, matrix, origin), Path(target), compress=target.endswith(".gz"))
    except UserInputError as err:
        return target, str(err)
    return target, None


# -------------------------------------------------------------------------------------------------- the decisions
def _acquisition_seconds(series: SeriesRecord) -> float | None:
    times = [phases_.seconds_of_day(h.get("AcquisitionTime")) for h in series.headers]
    times = [t for t in times if t is not None]
    return min(times) if times else None


def _acquisition_key(series: SeriesRecord):
    """Reconstructions of one acquisition share their acquisition time (to 5 s); without one, each series is its
    own acquisition."""
    seconds = _acquisition_seconds(series)
    return round(seconds / 5.0) if seconds is not None else series.uid


def _header_phases(study: StudyRecord, requested: list[str] | None) -> None:
    candidates = [s for s in study.series if s.decision == "candidate"]
    with_agent = [bool(s.get("ContrastBolusAgent")) for s in candidates]
    informative = any(with_agent) and not all(with_agent)
    times = {s.uid: _acquisition_seconds(s) for s in candidates}
    distinct = sorted({round(t / 5.0) for t in times.values() if t is not None})
    order_phases = requested if requested and len(requested) == len(distinct) else (
        list(phases_.PHASE_ORDER) if len(distinct) == 4 else None)
    for series in candidates:
        start = phases_.seconds_of_day(series.get("ContrastBolusStartTime"))
        acquired = times[series.uid]
        delay = None
        if start is not None and acquired is not None:
            delay = acquired - start
            if delay < -12 * 3600:
                delay += 24 * 3600  # acquired after midnight
        order = None
        if order_phases and acquired is not None:
            order = order_phases[distinct.index(round(acquired / 5.0))]
        series.header_phase, series.header_evidence = phases_.header_phase(
            series.description, delay, bool(series.get("ContrastBolusAgent")), informative, order)


def _choice_key(series: SeriesRecord, options: ImportOptions) -> tuple:
    sharp = series.sharp_kernel and not options.allow_sharp_kernel
    thickness = series.thickness_mm
    closeness = abs(thickness - options.prefer_thickness_mm) if options.prefer_thickness_mm else thickness
    return (sharp, round(closeness, 3), -len(series.files), int(series.get("SeriesNumber", 0) or 0))


def _choose(study: StudyRecord, options: ImportOptions) -> None:
    by_phase: dict[str, list[SeriesRecord]] = defaultdict(list)
    for series in study.series:
        if series.decision == "candidate":
            by_phase[series.phase].append(series)
    for phase, group in by_phase.items():
        group.sort(key=lambda s: _choice_key(s, options))
        best = group[0]
        best.decision, best.reason = "chosen", _why_chosen(best, group, options)
        study.chosen[phase] = best
        for other in group[1:]:
            why = ("sharp kernel" if other.sharp_kernel and not best.sharp_kernel else
                   f"{other.thickness_mm:g} mm slices" if other.thickness_mm != best.thickness_mm else "same kind")
            other.decision = "not chosen"
            other.reason = (f"{why}; series {best.get('SeriesNumber', '?')} ({best.thickness_mm:g} mm, kernel "
                            f"{best.kernel or '?'}) is the {phase} series chosen")


def _why_chosen(best: SeriesRecord, group: list[SeriesRecord], options: ImportOptions) -> str:
    rule = (f"closest to {options.prefer_thickness_mm:g} mm" if options.prefer_thickness_mm else "thinnest")
    kernel = "soft-tissue kernel" if not best.sharp_kernel else "sharp kernel"
    return f"{rule} {kernel} reconstruction of {len(group)} {best.phase} series"


def _link_masks(masks: list[SeriesRecord], series_by_uid: dict[str, SeriesRecord],
                studies: dict[str, StudyRecord], notes: Notes) -> None:
    frames: dict[str, str] = {}
    for study in studies.values():
        for series in study.series:
            if series.modality == "CT" and series.get("FrameOfReferenceUID"):
                frames.setdefault(str(series.get("FrameOfReferenceUID")), study.uid)
    for mask in masks:
        header = mask.first
        target = next((series_by_uid[u] for u in header.get("referenced_series", []) if u in series_by_uid), None)
        if target is not None and target.modality == "CT":
            mask.decision, mask.reason = "mask", f"drawn on series {target.get('SeriesNumber', '?')}"
            mask.drawn_on = target.uid
            studies[target.study_uid].masks.append(mask)
            continue
        frame_study = next((frames[f] for f in header.get("referenced_frames", []) if f in frames), None)
        if frame_study is not None:
            mask.decision = "mask"
            mask.reason = "linked by frame of reference (the series it references is not in the export)"
            studies[frame_study].masks.append(mask)
            continue
        mask.decision = "refused"
        mask.reason = ("references a series that is not in the export (and no CT shares its frame of reference); "
                       "export the CT it was drawn on with it, or leave the outline out")
        notes.add(f"{Path(header['path'])}: the {mask.modality} {mask.reason}",
                  f"the {mask.modality} of series {mask.get('SeriesNumber', '?')} {mask.reason}")


def _select_studies(studies: list[StudyRecord], table: ClinicalTable | None, requested: list[str] | None) -> None:
    by_patient: dict[str, list[StudyRecord]] = defaultdict(list)
    for study in studies:
        by_patient[study.patient_key].append(study)
    for study in studies:
        study.imported, study.reason = True, ""
        if not study.chosen:
            study.imported, study.reason = False, "no usable axial CT series"
        elif requested and not set(requested) <= set(study.chosen):
            lacking = [p for p in requested if p not in study.chosen]
            study.imported, study.reason = False, f"lacks the {', '.join(lacking)} phase(s)"
        elif table is not None and study.key_value(table.key) not in table.rows:
            study.imported, study.reason = False, f"not in the clinical table ({table.key})"
    if table is None or table.key == "PatientID":
        for patient_studies in by_patient.values():
            usable = [s for s in patient_studies if s.imported]
            if len(usable) < 2:
                continue
            usable.sort(key=lambda s: (len(s.masks) > 0, len(s.chosen), s.date or dt.date.min), reverse=True)
            for other in usable[1:]:
                other.imported = False
                why = ("it has outlines" if usable[0].masks else "it has more phases"
                       if len(usable[0].chosen) > len(other.chosen) else "it is more recent")
                other.reason = f"another study of this patient was imported ({why})"


def _mark_not_imported(studies: list[StudyRecord]) -> None:
    for study in studies:
        if not study.imported:
            for series in study.series:
                if series.decision in ("chosen", "not chosen"):
                    series.decision, series.reason = "study not imported", study.reason
            for mask in study.masks:
                mask.decision, mask.reason = "study not imported", study.reason


def _check_table_rows(table: ClinicalTable, studies: list[StudyRecord], notes: Notes) -> None:
    values = {s.key_value(table.key) for s in studies}
    missing = sorted(n for value, numbers in table.row_numbers.items() if value not in values for n in numbers)
    total = sum(len(n) for n in table.row_numbers.values())
    if missing and len(missing) == total:
        raise UserInputError(f"{table.path}: none of its {total} row(s) names a study of the export by "
                             f"{table.key}; check that the table and the export belong together")
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        notes.add(f"{table.path}: {len(missing)} row(s) name no study of the export by {table.key} (rows {shown}); "
                  "they are not in the cohort",
                  f"{len(missing)} row(s) of the clinical table name no study of the export (rows {shown})")


# ---------------------------------------------------------------------------------------------------- the import
@dataclass
class _Passes:
    """Where the import's passes run: ``processes`` local processes, or the Dask cluster of ``engine``."""

    processes: int
    engine: Engine | None = None

    def map(self, function, tasks: list, description: str, progress: bool) -> list:
        """``[function(t) for t in tasks]``, in order."""
        if on_cluster(self.engine):
            return list(self.engine.map(function, tasks, description, progress))
        return map_tracked(function, tasks, self.processes, description, progress)


def import_dicom(export: Path, out: Path, key_file: Path, new_key: bool = False, clinical: Path | None = None,
                 mapping_file: Path | None = None, options: ImportOptions | None = None, overwrite: bool = False,
                 progress: bool = True, engine: Engine | None = None) -> ImportResult:
    """Import a DICOM export into the cohort directory ``out``; see the module docstring. The per-file and
    per-series passes run in ``options.workers`` local processes, or on ``engine``'s Dask cluster when it has one
    (the export and the cohort's folder on a filesystem the workers share)."""
    options = options or ImportOptions()
    export, out = Path(export), Path(out)
    if not export.is_dir():
        raise UserInputError(f"{export}: not a folder; give the folder of the DICOM export")
    table = read_clinical_table(clinical) if clinical is not None else None
    if mapping_file is not None:
        mapping_file = Path(mapping_file)
        if out.resolve() in mapping_file.resolve().parents:
            raise UserInputError(f"{mapping_file}: the mapping to real ids must not be written inside the cohort "
                                 f"({out}); choose a path outside it")
        if mapping_file.exists() and not overwrite:
            raise UserInputError(f"{mapping_file}: already exists; choose another --mapping-file or pass --overwrite")
    if out.resolve() in Path(key_file).resolve().parents:
        raise UserInputError(f"{key_file}: the pseudonymisation key must be kept outside the cohort ({out}); "
                             "choose a --key-file elsewhere")
    key = check_key(key_file, new_key, out)  # a missing or changed key is refused before any work
    check_output_dir(out, overwrite)
    workers = _Passes(options.workers or min(4, os.cpu_count() or 1), engine)
    if on_cluster(engine):
        engine.check_paths([export], "the DICOM export")
        engine.check_writable([out.absolute().parent], "the cohort's parent folder")
    clock = time.perf_counter()
    seconds: dict[str, float] = {}
    scan = scan_export(export, workers.processes, progress, engine)
    seconds["read headers"] = time.perf_counter() - clock
    notes = Notes()
    if not scan.headers:
        raise UserInputError(f"{export}: no readable DICOM file among {scan.files} file(s) "
                             f"({len(scan.not_dicom)} not DICOM, {len(scan.unreadable)} unreadable)")
    for path, why in scan.unreadable:
        notes.add(f"{path}: {why}; skipped", None)
    all_series = group_series(scan.headers)
    if not any(s.modality == "CT" for s in all_series):
        found = sorted({s.modality for s in all_series})
        raise UserInputError(f"{export}: holds no CT series ({len(all_series)} series of modality "
                             f"{', '.join(found)}); export the CT studies themselves")
    masks, studies = [], {}
    for series in all_series:
        mixed = mixed_identity(series)
        if mixed:
            series.decision, series.reason = "refused", mixed
            notes.add(f"series {series.get('SeriesNumber', '?')} ({Path(series.first['path']).parent}): {mixed}",
                      f"series {series.get('SeriesNumber', '?')}: {mixed}")
            continue
        study = studies.setdefault(series.study_uid, StudyRecord(series.study_uid, []))
        if study.series and series.patient_key != study.series[0].patient_key:
            series.decision = "refused"
            series.reason = ("its PatientID differs from the rest of its study (one StudyInstanceUID, two "
                             "patients): the export mixed two patients; re-export the study")
            notes.add(f"series {series.get('SeriesNumber', '?')} ({Path(series.first['path']).parent}): "
                      f"{series.reason}", f"series {series.get('SeriesNumber', '?')}: {series.reason}")
            continue
        study.series.append(series)
        if series.modality in MASK_MODALITIES:
            masks.append(series)
            continue
        why = set_aside_reason(series, options.min_slices)
        if why:
            series.decision, series.reason = "set aside", why
            continue
        refusal = check_geometry(series)
        if refusal:
            series.decision, series.reason = "refused", refusal
            continue
        series.decision = "candidate"
    candidates = [s for s in all_series if s.decision == "candidate"]
    for study in studies.values():
        _header_phases(study, options.phases)
    seconds["group and check series"] = time.perf_counter() - clock - sum(seconds.values())
    measured = workers.map(phases_.measure_series, [s.files for s in candidates], "checking phases on the images",
                           progress)
    for series, (aorta, ivc) in zip(candidates, measured):
        series.aorta_hu, series.ivc_hu = aorta, ivc
        series.image_phase = phases_.image_phase(aorta, ivc)
        series.phase, series.phase_source = phases_.decide(series.header_phase, series.image_phase)
        if series.phase is None:
            series.decision = "set aside"
            series.reason = ("phase unknown: neither the headers nor the image say which phase it is (name it in "
                             "the series description)")
    seconds["check phases on the images"] = time.perf_counter() - clock - sum(seconds.values())
    for study in studies.values():
        study_candidates = [s for s in study.series if s.decision == "candidate"]
        phases_.settle_study(study_candidates, _acquisition_key)
        _choose(study, options)
    _link_masks(masks, {s.uid: s for s in all_series}, studies, notes)
    study_list = [s for s in studies.values() if any(x.modality == "CT" for x in s.series)]
    _select_studies(study_list, table, options.phases)
    if table is not None:
        _check_table_rows(table, study_list, notes)
    imported = [s for s in study_list if s.imported]
    if not imported:
        reasons = sorted({s.reason for s in study_list})
        raise UserInputError(f"{export}: no study could be imported ({'; '.join(reasons)}); see the reasons above "
                             "or relax --phases")
    if not options.phases:  # the phases most studies have; the studies lacking one are left out, and say so
        cohort_phases = [p for p in PHASES if 2 * sum(p in s.chosen for s in imported) > len(imported)]
        if not cohort_phases:
            raise UserInputError(f"{export}: no CT phase is found in most studies; choose the phases with --phases "
                                 "(studies lacking one are then left out)")
        _select_studies(study_list, table, cohort_phases)
        imported = [s for s in study_list if s.imported]
    else:
        cohort_phases = options.phases
    _mark_not_imported(study_list)
    created = key is None
    if created:
        key = pseudo.create_key(key_file)
    try:
        return _write(export, out, key, created, table, mapping_file, options, overwrite, progress, scan,
                      all_series, study_list, imported, cohort_phases, notes, workers, seconds, clock)
    except BaseException:
        if created:
            Path(key_file).unlink(missing_ok=True)  # nothing was written with it
        raise


def _write(export, out, key, created, table, mapping_file, options, overwrite, progress, scan, all_series,
           study_list, imported, cohort_phases, notes, workers, seconds, clock) -> ImportResult:
    from fusion_model.dicom_import.report import render_report, series_rows

    first_day: dict[str, dt.date] = {}
    for study in study_list:
        study.patient_id = "P" + pseudo.pseudonym(key, "patient", study.patient_key)
        study.token = pseudo.pseudonym(key, "study", study.uid, 6)
        if study.date:
            first_day[study.patient_key] = min(first_day.get(study.patient_key, study.date), study.date)
    for study in study_list:
        if study.date:
            study.day = (study.date - first_day[study.patient_key]).days
    with atomic_directory(out, overwrite) as staging:
        staging = Path(staging).absolute()  # the tasks' outputs: the same path on every worker
        (staging / "images").mkdir()
        (staging / "masks").mkdir()
        volume_tasks, links = [], []
        for study in imported:
            for phase, series in study.chosen.items():
                if phase not in cohort_phases:
                    series.decision, series.reason = "not chosen", f"the cohort's phases are {', '.join(cohort_phases)}"
                    continue
                stem = f"{study.patient_id}_{study.token}_{phase}"
                tilted = series.tilt_degrees > 0.5
                if options.keep_dicom and not tilted:
                    series.output = f"dicom/{stem}"
                    links.append((series, staging / series.output))
                else:
                    series.output = f"images/{stem}.nii" + (".gz" if options.compress else "")
                    matrix, origin = stack_affine(series)
                    volume_tasks.append((series.files, matrix, origin, str(staging / series.output)))
        for series, folder in links:
            folder.mkdir(parents=True)
            for n, source in enumerate(series.files):
                os.symlink(Path(source).resolve(), folder / f"slice_{n + 1:04d}.dcm")
        start = time.perf_counter()
        written = workers.map(_volume_task, volume_tasks, "writing volumes", progress)
        failures = [(t, e) for t, e in written if e]
        if failures:
            raise UserInputError(failures[0][1])
        seconds["write volumes"] = time.perf_counter() - start
        start = time.perf_counter()
        rows, lesion_ids = [], {}
        masks = {m.uid: m for s in imported for m in s.masks}
        tasks = [(study, staging, table, options, cohort_phases) for study in imported]
        for uid, study_rows, study_notes, repairs in workers.map(_study_task, tasks, "outlines and table rows",
                                                                 progress):
            rows.extend(study_rows)
            lesion_ids[uid] = " ".join(r["lesion_id"] for r in study_rows)
            notes.console.extend(study_notes.console)
            notes.public.extend(study_notes.public)
            for mask_uid, mask_repairs in repairs.items():
                masks[mask_uid].repairs = mask_repairs
        mapping = [{"patient_id": s.patient_id, "study": s.token, "imported": s.imported, "PatientID": s.patient_key,
                    "AccessionNumber": s.accession, "StudyInstanceUID": s.uid, "lesion_ids": lesion_ids.get(s.uid, "")}
                   for s in study_list]
        seconds["outlines and table"] = time.perf_counter() - start
        frame = _table(sorted(rows, key=lambda r: r["lesion_id"]), cohort_phases)  # in pseudonym order
        atomic_write_text(staging / TABLE_FILE, frame.to_csv(index=False))
        centres = sorted({str(c) for c in frame["centre"] if str(c)})
        write_cohort_spec(staging, CohortSpec(
            name=options.name or out.name, phases=cohort_phases, centres=centres,
            description=f"Imported from a DICOM export by fusion-model import-dicom: {len(imported)} studies of "
                        f"{frame['patient_id'].nunique()} patients, pseudonymised.",
            source="DICOM export (fusion-model import-dicom)"))
        table_rows = series_rows(all_series, {s.uid: s for s in study_list})
        atomic_write_text(staging / SERIES_FILE, pd.DataFrame(table_rows).to_csv(index=False))
        atomic_write_json(staging / MANIFEST_FILE, {
            "key_fingerprint": pseudo.fingerprint(key), "phases": cohort_phases,
            "options": options.model_dump(mode="json"),
            "files": {"scanned": scan.files, "dicom": len(scan.headers), "not_dicom": len(scan.not_dicom),
                      "unreadable": len(scan.unreadable)},
            "studies": {"seen": len(study_list), "imported": len(imported)}, "lesions": len(frame),
            "seconds": {k: round(v, 2) for k, v in seconds.items()},
            "clinical_table": {"key": table.key, "columns_not_imported": table.dropped} if table else None,
        })
        atomic_write_text(staging / REPORT_FILE, render_report(table_rows, study_list, scan, frame, cohort_phases,
                                                                notes, table))
    if mapping_file is not None:
        atomic_write_text(mapping_file, pd.DataFrame(mapping).to_csv(index=False))
    seconds["total"] = time.perf_counter() - clock
    return ImportResult(out, frame, all_series, study_list, scan, notes, cohort_phases, created, seconds)


def _study_task(args: tuple) -> tuple[str, list[dict], Notes, dict[str, list[str]]]:
    """One imported study's outlines (a label image on the reference phase's grid) and its table rows; run in a
    worker process, so what it learns comes back in the result: (study uid, rows, notes, repairs per outline)."""
    import SimpleITK as sitk

    study, staging, table, options, cohort_phases = args
    notes = Notes()
    reference = _read_output(staging, study.chosen[cohort_phases[0]])
    segments = []
    for mask in study.masks:
        segments.extend(_segments(mask, study, staging, reference, notes))
    mask_rel = None
    if segments:
        labelled = np.zeros(sitk.GetArrayViewFromImage(reference).shape, np.uint8)
        for n, segment in enumerate(segments, start=1):
            labelled[segment["array"] & (labelled == 0)] = n
            segment["label"] = n
        image = sitk.GetImageFromArray(labelled)
        image.CopyInformation(reference)
        mask_rel = f"masks/{study.patient_id}_{study.token}_lesions.nii.gz"
        sitk.WriteImage(image, str(staging / mask_rel), True)
    rows = _study_rows(study, segments, mask_rel, table, options, notes)
    for row in rows:
        for phase in cohort_phases:
            row[PATH_COLUMNS[phase]] = study.chosen[phase].output
    return study.uid, rows, notes, {m.uid: m.repairs for m in study.masks}


def _read_output(root: Path, series: SeriesRecord):
    from fusion_model.imaging.io import read_image

    return read_image(root / series.output)


def _segments(mask: SeriesRecord, study: StudyRecord, staging: Path, reference, notes: Notes) -> list[dict]:
    """Each segment (SEG) or ROI (RTSTRUCT) of a mask object as a boolean array on the reference grid."""
    import pydicom
    import SimpleITK as sitk

    from fusion_model.dicom_import.volumes import on_grid, side_of, stack
    from fusion_model.imaging.dicom_masks import read_dicom_mask

    path = Path(mask.first["path"])
    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    if mask.modality == "SEG":
        numbers = [(int(s.SegmentNumber), str(s.get("SegmentLabel", ""))) for s in dataset.SegmentSequence]
    else:
        numbers = [(int(r.ROINumber), str(r.get("ROIName", ""))) for r in dataset.StructureSetROISequence]
    drawn_on = next((s for s in study.series if s.uid == mask.drawn_on), None)
    if drawn_on is not None and drawn_on.files and drawn_on is not study.chosen.get(drawn_on.phase):
        grid = stack(drawn_on.files, *stack_affine(drawn_on))  # drawn on a series not chosen: its own grid first
    elif drawn_on is not None and drawn_on.output:
        grid = _read_output(staging, drawn_on)
    else:
        grid = reference
    found = []
    for number, label in numbers:
        try:
            image = read_dicom_mask(path, number, grid)
        except UserInputError as err:
            why = str(err).split(": ", 1)[-1]
            notes.add(f"{err}; this outline was left out", f"study {study.token}: segment {number} left out: {why}")
            mask.repairs.append(f"segment {number} left out: {why}")
            continue
        array = sitk.GetArrayFromImage(on_grid(image, reference)).astype(bool)
        if not array.any():
            notes.add(f"{path}: segment {number} ({label}) is empty; left out",
                      f"study {study.token}: segment {number} ({label}) is empty; left out")
            continue
        found.append({"array": array, "side": side_of(array, reference), "number": number, "name": label})
    return found


def _study_rows(study: StudyRecord, segments: list[dict], mask_rel: str | None, table: ClinicalTable | None,
                options: ImportOptions, notes: Notes) -> list[dict]:
    header = study.first
    base = {"patient_id": study.patient_id, "centre": options.centre or str(header.get("InstitutionName", "") or
                                                                              "unknown centre"),
            "age_years": _age_years(header), "sex": {"F": "F", "M": "M"}.get(str(header.get("PatientSex", "")))}
    user_rows = None
    if table is not None:
        user_rows = table.rows.get(study.key_value(table.key), [])
    rows: list[dict] = []
    remaining = list(segments)
    if user_rows:
        for user in user_rows:
            segment = None
            side = str(user.get("side", "")).strip().lower()
            side = {"l": "left", "r": "right"}.get(side, side)
            same_side = [s for s in remaining if s["side"] == side] if side else []
            if len(same_side) == 1:
                segment = same_side[0]
            elif len(user_rows) == 1 and len(remaining) == 1:
                segment = remaining[0]
            elif len(user_rows) == len(segments) and remaining:
                segment = remaining[0]
                notes.add(f"study {study.token}: table rows matched to outlines in segment order (no side to "
                             "match by)")
            if segment is not None:
                remaining.remove(segment)
            rows.append({**base, **{k: v for k, v in user.items() if v != ""}, "_segment": segment})
    else:
        rows = [{**base, "side": s["side"], "_segment": s} for s in remaining]
        remaining = []
        if not rows:
            rows = [{**base, "_segment": None}]
    for segment in remaining:
        notes.add(f"study {study.token}: outline {segment['number']} ({segment['name']}) has no row in the "
                     "clinical table; imported as a lesion without a label")
        rows.append({**base, "side": segment["side"], "_segment": segment})
    for n, row in enumerate(rows, start=1):
        segment = row.pop("_segment")
        row["lesion_id"] = f"{study.patient_id}-{study.token}-L{n}"
        row["mask_path"] = mask_rel if segment is not None else None
        row["mask_label"] = segment["label"] if segment is not None else None
        if segment is not None and not row.get("side"):
            row["side"] = segment["side"]
    return rows


def _table(rows: list[dict], phases: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    first = ["patient_id", "lesion_id", "centre"]
    paths = [PATH_COLUMNS[p] for p in phases] + ["mask_path", "mask_label"]
    middle = [c for c in frame.columns if c not in first + paths]
    frame = frame[first + middle + paths]
    frame["mask_label"] = frame["mask_label"].astype("Int64")
    return frame


def warn_notes(notes: Notes, limit: int = 20) -> None:
    """Each console note as a fusion-model warning (one line each), at most ``limit`` of them."""
    for note in notes.console[:limit]:
        warnings.warn(note, FusionModelWarning, stacklevel=2)
    if len(notes.console) > limit:
        warnings.warn(f"... and {len(notes.console) - limit} more (import_report.html lists every series)",
                      FusionModelWarning, stacklevel=2)


__all__ = ["ImportOptions", "ImportResult", "import_dicom", "read_clinical_table", "check_key", "warn_notes"]
