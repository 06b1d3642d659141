"""`fusion-model import-dicom`: a generated PACS export (synth --format dicom) becomes a cohort that validates,
every series decided as the generator knows it should be, voxels unchanged, nothing identifying written; the
phase evidence, the geometry checks and the bad inputs one by one."""

import gzip
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk

from fusion_model.cohort import validate_cohort
from fusion_model.config import SynthConfig
from fusion_model.dicom_import import phase
from fusion_model.dicom_import.build import ImportOptions, import_dicom
from fusion_model.dicom_import.scan import read_header
from fusion_model.dicom_import.series import SeriesRecord, check_geometry, is_sharp_kernel, stack_affine
from fusion_model.dicom_import.volumes import stack
from fusion_model.errors import UserInputError
from fusion_model.synthetic.dicom_export import check_import, write_dicom_export
from fusion_model.synthetic.generate import synthesize_cohort
from tests.helpers import rt_references

PHASES = ["unenhanced", "arterial", "venous", "delayed"]


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fusion_model.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    synthesize_cohort(root / "direct", SynthConfig(patients=5, seed=4, phases=PHASES, patients_without_masks=1,
                                                    two_lesion_fraction=0.3), progress=False)
    return write_dicom_export(root / "direct", root / "pacs", seed=4, wrong_description_fraction=0.3,
                              progress=False)


@pytest.fixture(scope="module")
def imported(export, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imported")
    import_dicom(export / "dicom", root / "cohort", root / "project.key", new_key=True,
                 clinical=export / "hospital_table.csv", mapping_file=root / "mapping.csv", progress=False)
    return root


def test_every_series_is_decided_as_the_generator_knows_and_the_cohort_validates(export, imported):
    check = check_import(export, imported / "cohort", imported / "mapping.csv")
    assert check["series_found"] == check["series"] > 60
    assert check["decision_errors"] == [] and check["phase_errors"] == []
    assert check["wrong_description_series"] > 0  # descriptions naming another phase: the image corrected them
    assert check["wrong_description_corrected"] == check["wrong_description_series"]
    report = validate_cohort(imported / "cohort", require_label=True, progress=False)
    assert report.ok, [p.message for p in report.problems]
    spec = json.loads((imported / "cohort" / "cohort.json").read_text())
    assert spec["phases"] == PHASES and set(spec["centres"]) <= {"centre_a", "centre_b", "centre_c"}
    series = pd.read_csv(imported / "cohort" / "series.csv")
    assert {"decision", "reason", "header_evidence", "aorta_hu", "ivc_hu", "image_phase", "phase_source"} <= \
        set(series.columns)
    html = (imported / "cohort" / "import_report.html").read_text()
    assert "headers against the image" in html and "localizer" in html


def test_imported_volumes_and_masks_are_the_generators_voxels(export, imported):
    table = pd.read_csv(imported / "cohort" / "clinical.csv")
    direct = pd.read_csv(export / "cohort" / "clinical.csv")
    to_source = dict(pd.read_csv(imported / "mapping.csv", dtype=str)[["patient_id", "PatientID"]].values)
    to_synth = dict(pd.read_csv(export / "identifiers.csv", dtype=str)[["PatientID", "synth_patient_id"]].values)
    assert len(table) == len(direct)
    for row in table.itertuples():
        source = direct[(direct.patient_id == to_synth[to_source[row.patient_id]]) & (direct.side == row.side)]
        assert len(source) == 1
        source = source.iloc[0]
        assert (row.label, row.lesion_type) == (source.label, source.lesion_type)
        for p in PHASES:
            a = sitk.ReadImage(str(imported / "cohort" / getattr(row, f"{p}_path")))
            b = sitk.ReadImage(str(export / "cohort" / source[f"{p}_path"]))
            assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
            assert np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
        if isinstance(source.mask_path, str):
            a = sitk.GetArrayFromImage(sitk.ReadImage(str(imported / "cohort" / row.mask_path))) == row.mask_label
            b = sitk.GetArrayFromImage(sitk.ReadImage(str(export / "cohort" / source.mask_path)))
            assert np.array_equal(a, b == (1 if pd.isna(source.mask_label) else int(source.mask_label)))
        else:  # a study without outlines: a row ready for segment predict
            assert pd.isna(row.mask_path)


def _texts(root: Path):
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".gz":
                data = gzip.decompress(data)
            yield path, data.decode("latin-1")


def test_no_identifying_value_reaches_any_file_the_import_writes(export, imported):
    identifiers = pd.read_csv(export / "identifiers.csv", dtype=str)
    secrets = set()
    for row in identifiers.itertuples():
        name = row.PatientName.split("^")
        secrets |= {row.PatientName, f"{name[0]}^{name[1]}", name[2], row.PatientID, row.PatientBirthDate,
                    row.AccessionNumber, row.StudyDate, f"{row.StudyDate[:4]}-{row.StudyDate[4:6]}-{row.StudyDate[6:]}"}
        if isinstance(row.prior_accession, str):
            secrets.add(row.prior_accession)
        secrets.add(name[0].upper())  # centre_b's export folders are named after the patient
    uids = pd.read_csv(export / "truth_series.csv", dtype=str)
    secrets |= set(uids["study_uid"]) | set(uids["series_uid"])
    for path, text in _texts(imported / "cohort"):
        found = sorted(s for s in secrets if s in text)
        assert not found, f"{path.name} holds {found}"
    mapping = pd.read_csv(imported / "mapping.csv", dtype=str)  # the mapping, written on request, has them
    assert set(mapping["PatientID"]) == set(identifiers["PatientID"])
    assert not (imported / "cohort" / "project.key").exists()


def test_the_same_key_gives_the_same_ids_and_a_missing_or_other_key_is_refused(export, imported, tmp_path):
    again = tmp_path / "again"
    import_dicom(export / "dicom", again, imported / "project.key", clinical=export / "hospital_table.csv",
                 progress=False)
    first = pd.read_csv(imported / "cohort" / "clinical.csv")
    second = pd.read_csv(again / "clinical.csv")
    assert list(first["lesion_id"]) == list(second["lesion_id"])
    result = _cli("import-dicom", export / "dicom", "--out", tmp_path / "x", "--key-file", tmp_path / "lost.key")
    assert result.returncode == 2 and "lost.key: pseudonymisation key not found" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x").exists()
    result = _cli("import-dicom", export / "dicom", "--out", again, "--key-file", tmp_path / "other.key",
                  "--new-key", "--overwrite")
    assert result.returncode == 2 and "imported with another pseudonymisation key" in result.stderr
    assert not (tmp_path / "other.key").exists()
    assert list(pd.read_csv(again / "clinical.csv")["lesion_id"]) == list(second["lesion_id"])


def test_an_import_on_a_dask_cluster_writes_the_same_cohort(local_cluster, export, imported, tmp_path):
    import_dicom(export / "dicom", tmp_path / "cohort", imported / "project.key",
                 clinical=export / "hospital_table.csv", progress=False, engine=local_cluster)
    first, second = imported / "cohort", tmp_path / "cohort"
    assert (second / "clinical.csv").read_text() == (first / "clinical.csv").read_text()
    files = sorted(p.relative_to(first) for p in first.rglob("*.nii*"))
    assert files == sorted(p.relative_to(second) for p in second.rglob("*.nii*")) and len(files) > 5
    for name in files:
        a = sitk.ReadImage(str(first / name))
        b = sitk.ReadImage(str(second / name))
        assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)), name
        assert a.GetOrigin() == b.GetOrigin() and a.GetSpacing() == b.GetSpacing()


def test_keep_dicom_points_at_the_series_and_validates(export, imported, tmp_path):
    result = import_dicom(export / "dicom", tmp_path / "linked", imported / "project.key",
                          clinical=export / "hospital_table.csv", options=ImportOptions(keep_dicom=True),
                          progress=False)
    folder = tmp_path / "linked" / result.rows.iloc[0]["venous_path"]
    assert folder.is_dir() and all(p.is_symlink() for p in folder.iterdir())
    assert validate_cohort(tmp_path / "linked", require_label=True, progress=False).ok


def test_without_a_clinical_table_each_outline_becomes_a_row_with_its_side(export, imported, tmp_path):
    result = import_dicom(export / "dicom", tmp_path / "bare", imported / "project.key",
                          options=ImportOptions(phases=["unenhanced", "venous"]), progress=False)
    rows = result.rows
    assert "label" not in rows.columns and set(rows["side"].dropna()) <= {"left", "right"}
    assert json.loads((tmp_path / "bare" / "cohort.json").read_text())["phases"] == ["unenhanced", "venous"]
    direct = pd.read_csv(export / "cohort" / "clinical.csv")
    outlined = direct["mask_path"].notna().sum()
    assert len(rows) == outlined + 1  # a row per outlined lesion, and one for the study without outlines
    assert rows["mask_path"].isna().sum() == 1
    assert validate_cohort(tmp_path / "bare", progress=False).ok


# ------------------------------------------------------------------------------------------------ phase evidence
@pytest.mark.parametrize("description, expected", [
    ("ABD W/O CONTRAST 2.0 Br40", "unenhanced"), ("Abdomen sans injection", "unenhanced"),
    ("Leeraufnahme", "unenhanced"), ("Abdomen simple", "unenhanced"), ("pingsao 1.25", "unenhanced"),
    ("Temps artériel", "arterial"), ("LATE ARTERIAL", "arterial"), ("dongmaiqi", "arterial"),
    ("Abdomen portalvenös", "venous"), ("Phase veineuse portale", "venous"), ("Fase venosa", "venous"),
    ("menmaiqi", "venous"), ("Spätphase", "delayed"), ("Fase tardía", "delayed"), ("yanchiqi", "delayed"),
    ("Adrenal washout 15 min", "delayed"), ("COR MPR 3mm", None), ("arterial + portal", None),
    ("CT ABD C-", "unenhanced"), ("CT ABD C+", None), ("腹部平扫", "unenhanced"), ("动脉期", "arterial"),
    ("门静脉期", "venous"), ("延迟期", "delayed"), ("単純CT", "unenhanced"), ("門脈相", "venous"),
    ("Abdomen blanco", "unenhanced"), ("portaal veneus", "venous"), ("sem contraste", "unenhanced"),
    ("Pre Op planning", None),
])
def test_descriptions_name_phases_in_the_languages_hospitals_use(description, expected):
    assert phase.description_phase(description) == expected


def test_timing_and_vessel_attenuation_give_the_phase():
    assert [phase.timing_phase(d) for d in (-60, 30, 70, 600, 140, None)] == \
        ["unenhanced", "arterial", "venous", "delayed", None, None]
    assert phase.image_phase(42, 90) == "unenhanced"
    assert phase.image_phase(310, 90) == "arterial"
    assert phase.image_phase(170, 80) == "arterial"  # late arterial: aorta well above an unopacified IVC
    assert phase.image_phase(165, 150) == "venous"
    assert phase.image_phase(112, 110) == "delayed"
    assert phase.decide("arterial", "venous") == ("venous", "image (the headers said arterial)")
    assert phase.decide("venous", None)[0] == "venous"
    assert phase.seconds_of_day("101530.5") == 36930.5


def test_sharp_kernels_of_the_major_vendors():
    assert [is_sharp_kernel(k) for k in ("Br40", "B30f", "Br64", "B70f", "STANDARD", "BONE", "FC18", "FC52",
                                         "LUNG", "I70f")] == \
        [False, False, True, True, False, True, False, True, True, True]


# ------------------------------------------------------------------------------------------------------ geometry
def _write_ct(folder: Path, arrays, positions, orientation=(1, 0, 0, 0, 1, 0), patient="PAT1", series_uid=None,
              sop_uids=None) -> list[Path]:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    paths = []
    for k, (array, position) in enumerate(zip(arrays, positions)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = sop_uids[k] if sop_uids else generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "CT"
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient, "1.2.3.4", series_uid
        ds.ImageType, ds.InstanceNumber = ["ORIGINAL", "PRIMARY", "AXIAL"], k + 1
        ds.ImageOrientationPatient = list(orientation)
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.PixelSpacing, ds.SliceThickness = [1, 1], 2
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = array.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = array.astype(np.int16).tobytes()
        path = folder / f"im{k:03d}"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def _series(paths) -> SeriesRecord:
    return SeriesRecord("s", [read_header(p) for p in paths])


def test_a_gantry_tilt_is_resampled_so_the_anatomy_stays_where_it_is(tmp_path):
    tilt = math.radians(15)
    row, col = np.array([1.0, 0, 0]), np.array([0, math.cos(tilt), math.sin(tilt)])
    centre, radius = np.array([16.0, 18.0, 20.0]), 6.0
    arrays, positions = [], []
    j, i = np.indices((36, 32))
    for k in range(20):
        origin = np.array([0.0, 0.0, 2.0 * k])  # the table moves along z; the image plane is tilted
        points = origin + i[..., None] * row + j[..., None] * col
        arrays.append(np.where(np.linalg.norm(points - centre, axis=-1) <= radius, 200, 0))
        positions.append(origin)
    series = _series(_write_ct(tmp_path / "tilt", arrays, positions, (*row, *col)))
    assert check_geometry(series) is None
    assert abs(series.tilt_degrees - 15) < 0.2 and "gantry tilt" in series.repairs[0]
    image = stack(series.files, *stack_affine(series))
    array = sitk.GetArrayFromImage(image)
    inside = np.argwhere(array > 100)[:, ::-1].astype(float)  # (x, y, z) indices
    points = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(p)) for p in inside])
    assert np.abs(points.mean(axis=0) - centre).max() < 0.6
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    assert np.allclose(direction.T @ direction, np.eye(3), atol=1e-6)


def test_duplicated_files_are_repaired_missing_slices_and_two_acquisitions_refused(tmp_path):
    arrays = [np.full((8, 8), k, np.int16) for k in range(10)]
    positions = [(0.0, 0.0, 2.0 * k) for k in range(10)]
    paths = _write_ct(tmp_path / "dup", arrays, positions)
    shutil.copyfile(paths[4], tmp_path / "dup" / "copy_of_im004")
    series = _series(list(paths) + [tmp_path / "dup" / "copy_of_im004"])
    assert check_geometry(series) is None and "1 duplicated file" in series.repairs[0] and len(series.files) == 10
    gap = _series(paths[:4] + paths[5:])
    assert "1 missing slice(s)" in check_geometry(gap)
    other = _write_ct(tmp_path / "other", arrays[:2], positions[:2])
    assert "two different images at the same position" in check_geometry(_series(paths + other[:1]))
    unknown = _series(paths)
    for header in unknown.headers:
        header.pop("PixelSpacing")
    assert "without PixelSpacing" in check_geometry(unknown)


# --------------------------------------------------------------------------------------------------- bad inputs
def _small_export(export: Path, target: Path) -> Path:
    """One patient's studies copied out of the generated export (centre_a's folder layout: patient folders)."""
    truth = pd.read_csv(export / "identifiers.csv", dtype=str)
    patient = truth[truth["synth_patient_id"] == "P00001"].iloc[0]
    target.mkdir(parents=True)
    for path in (export / "dicom").rglob("*"):
        if path.is_file():
            if pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"]).PatientID == patient.PatientID:
                rel = path.relative_to(export / "dicom")
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target / rel)
    return target


def test_bad_exports_get_one_line_each_and_exit_2_with_nothing_written(export, imported, tmp_path):
    key = imported / "project.key"
    empty = tmp_path / "notes"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    result = _cli("import-dicom", empty, "--out", tmp_path / "o1", "--key-file", key)
    assert result.returncode == 2 and "no readable DICOM file among 1 file(s) (1 not DICOM" in result.stderr
    sr_only = tmp_path / "sr_only"
    sr_only.mkdir()
    for path in (export / "dicom").rglob("*"):
        if path.is_file() and pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"]).Modality == "SR":
            shutil.copyfile(path, sr_only / path.name)
    result = _cli("import-dicom", sr_only, "--out", tmp_path / "o2", "--key-file", key)
    assert result.returncode == 2 and "holds no CT series" in result.stderr and "SR" in result.stderr
    table = tmp_path / "table.csv"
    table.write_text("mrn,label\n1,0\n")
    result = _cli("import-dicom", sr_only, "--out", tmp_path / "o3", "--key-file", key, "--clinical", table)
    assert result.returncode == 2 and "needs a column that names each study" in result.stderr
    for result in (result,):
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))


def test_truncated_files_mixed_patients_and_orphan_segs_are_reported_and_the_rest_imported(export, imported,
                                                                                          tmp_path):
    small = _small_export(export, tmp_path / "small")
    files = sorted(p for p in small.rglob("*") if p.is_file())
    headers = {p: pydicom.dcmread(p, stop_before_pixels=True) for p in files}
    thin = [p for p, h in headers.items() if h.Modality == "CT" and "AXIAL" in h.ImageType
            and str(h.SeriesDescription).endswith("Br40") and h.SliceThickness == 2]
    victim = thin[len(thin) // 2]
    victim.write_bytes(victim.read_bytes()[:-5000])  # a truncated copy
    seg = next(p for p, h in headers.items() if h.Modality == "SEG")
    dataset = pydicom.dcmread(seg)
    dataset.ReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3.999"
    dataset.FrameOfReferenceUID = "1.2.3.998"
    dataset.save_as(seg)
    intruder = next(p for p, h in headers.items() if h.Modality == "CT" and "thick" not in str(p) and p != victim
                    and h.SliceThickness == 4)
    other = pydicom.dcmread(intruder)
    other.PatientID = "SOMEONE-ELSE"
    other.save_as(intruder)
    result = _cli("import-dicom", small, "--out", tmp_path / "cohort", "--key-file", imported / "project.key")
    assert result.returncode == 0, result.stderr
    assert "is truncated" in result.stderr and victim.name in result.stderr
    assert "belong to 2 different patients" in result.stderr
    assert "references a series that is not in the export" in result.stderr
    series = pd.read_csv(tmp_path / "cohort" / "series.csv")
    assert (series["decision"] == "refused").sum() >= 3  # the truncated series (missing slice), the mixed, the SEG
    rows = pd.read_csv(tmp_path / "cohort" / "clinical.csv")
    assert rows["mask_path"].isna().all()  # the orphan outline is not used


def test_synth_writes_an_export_and_the_cli_imports_it_with_a_new_key_beside_the_cohort(tmp_path):
    result = _cli("synth", "--format", "dicom", "--patients", "2", "--phases", "unenhanced,venous", "--seed", "9",
                  "--out", tmp_path / "pacs")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "pacs" / "hospital_table.csv").is_file() and (tmp_path / "pacs" / "truth_series.csv").is_file()
    result = _cli("import-dicom", tmp_path / "pacs" / "dicom", "--out", tmp_path / "cohort", "--clinical",
                  tmp_path / "pacs" / "hospital_table.csv", "--new-key")
    assert result.returncode == 0, result.stderr
    assert "created the pseudonymisation key" in result.stdout and (tmp_path / "cohort.key").is_file()
    assert re.search(r"2 of [23] studies imported", " ".join(result.stdout.split()))
    assert validate_cohort(tmp_path / "cohort", require_label=True, progress=False).ok
    result = _cli("import-dicom", tmp_path / "pacs" / "dicom", "--out", tmp_path / "cohort", "--new-key",
                  "--overwrite")
    assert result.returncode == 2 and "cohort.key: already exists" in result.stderr


def test_a_table_keyed_on_patient_id_gives_the_same_cohort(export, imported, tmp_path):
    identifiers = pd.read_csv(export / "identifiers.csv", dtype=str)
    table = pd.read_csv(export / "hospital_table.csv", dtype=str)
    table.insert(0, "Patient ID", table["AccessionNumber"].map(dict(identifiers[["AccessionNumber", "PatientID"]]
                                                                    .values)))
    table.drop(columns=["AccessionNumber"]).to_csv(tmp_path / "by_patient.csv", index=False)
    result = import_dicom(export / "dicom", tmp_path / "cohort", imported / "project.key",
                          clinical=tmp_path / "by_patient.csv", progress=False)
    first = pd.read_csv(imported / "cohort" / "clinical.csv")
    second = pd.read_csv(tmp_path / "cohort" / "clinical.csv")
    columns = ["lesion_id", "label", "lesion_type", "side", "mask_label"]
    pd.testing.assert_frame_equal(first[columns], second[columns])
    assert json.loads((tmp_path / "cohort" / "import_manifest.json").read_text())["clinical_table"]["key"] == \
        "PatientID" and not result.notes.public


def _rtstruct(path: Path, ct_headers: list, centre_mm, radius_mm: float) -> None:
    """One ROI: a circle of ``radius_mm`` around ``centre_mm`` (x, y) on every slice of a CT series."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.481.3", generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality, ds.SOPClassUID, ds.SOPInstanceUID = "RTSTRUCT", meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    first = ct_headers[0]
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber", "StudyDate"):
        setattr(ds, keyword, first.get(keyword))
    ds.SeriesInstanceUID, ds.SeriesNumber = generate_uid(), 99
    roi = pydicom.Dataset()
    roi.ROINumber, roi.ROIName = 3, "left adrenal mass"
    ds.StructureSetROISequence = Sequence([roi])
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    contours = []
    for header in ct_headers:
        z = float(header.ImagePositionPatient[2])
        item = pydicom.Dataset()
        item.ContourGeometricType, item.NumberOfContourPoints = "CLOSED_PLANAR", len(angles)
        points = np.column_stack([centre_mm[0] + radius_mm * np.cos(angles), centre_mm[1] + radius_mm * np.sin(angles),
                                  np.full(len(angles), z)])
        item.ContourData = [f"{v:.3f}" for v in points.ravel()]
        contours.append(item)
    roi_contour = pydicom.Dataset()
    roi_contour.ReferencedROINumber, roi_contour.ContourSequence = 3, Sequence(contours)
    ds.ROIContourSequence = Sequence([roi_contour])
    rt_references(ds, first.SeriesInstanceUID, first.FrameOfReferenceUID)
    ds.save_as(path, enforce_file_format=True)


def test_an_rtstruct_in_the_export_becomes_a_lesion_row_on_its_side(export, imported, tmp_path):
    small = _small_export(export, tmp_path / "small")
    headers = {p: pydicom.dcmread(p, stop_before_pixels=True) for p in small.rglob("*") if p.is_file()}
    for path, header in headers.items():
        if header.Modality == "SEG":
            path.unlink()
    venous = sorted((h for h in headers.values() if h.Modality == "CT" and "AXIAL" in h.ImageType
                     and phase.description_phase(str(h.SeriesDescription)) == "venous"
                     and float(h.SliceThickness) == 2.0 and "Br40" in str(h.ConvolutionKernel)),
                    key=lambda h: float(h.ImagePositionPatient[2]))
    _rtstruct(small / "rtstruct.dcm", venous[len(venous) // 2 - 2: len(venous) // 2 + 2], (36.0, 32.0), 8.0)
    result = import_dicom(small, tmp_path / "cohort", imported / "project.key", progress=False)
    rows = result.rows
    assert len(rows) == 1 and rows.iloc[0]["side"] == "left" and rows.iloc[0]["mask_label"] == 1
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cohort" / rows.iloc[0]["mask_path"])))
    assert 4 * np.pi * 64 * 0.8 < (mask == 1).sum() < 4 * np.pi * 64 * 1.2  # four slices of a 8 mm disc, 1 mm pixels
    assert validate_cohort(tmp_path / "cohort", progress=False).ok


def test_clinical_tables_as_hospitals_write_them(tmp_path):
    from fusion_model.dicom_import.build import read_clinical_table

    (tmp_path / "semicolon.csv").write_text("Accession Number;label;MRN;Patient Name\nA1;1;555;DOE^JANE\nA1;0;555;x\n")
    table = read_clinical_table(tmp_path / "semicolon.csv")
    assert table.key == "AccessionNumber" and table.rows == {"A1": [{"label": "1"}, {"label": "0"}]}
    assert table.dropped == ["MRN", "Patient Name"]  # identifying columns never reach the cohort
    (tmp_path / "tab.csv").write_text("\ufeffStudyInstanceUID\tPatientID\tside\n1.2.3\t007\tL\n")
    table = read_clinical_table(tmp_path / "tab.csv")
    assert table.key == "StudyInstanceUID" and table.rows == {"1.2.3": [{"side": "L"}]}
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UserInputError, match="empty.csv: is empty"):
        read_clinical_table(tmp_path / "empty.csv")
    (tmp_path / "blank_key.csv").write_text("AccessionNumber,label\nA1,1\n,0\n")
    with pytest.raises(UserInputError, match="blank_key.csv, row 3: column AccessionNumber is empty"):
        read_clinical_table(tmp_path / "blank_key.csv")


def test_compressed_series_decode_and_a_dicomdir_is_not_an_object(tmp_path):
    from pydicom.uid import RLELossless

    arrays = [np.arange(64, dtype=np.int16).reshape(8, 8) * (k + 1) - 500 for k in range(10)]
    paths = _write_ct(tmp_path / "rle", arrays, [(0.0, 0.0, 2.0 * k) for k in range(10)])
    for path in paths:
        dataset = pydicom.dcmread(path)
        dataset.compress(RLELossless)
        dataset.save_as(path)
    series = _series(paths)
    assert check_geometry(series) is None
    volume = sitk.GetArrayFromImage(stack(series.files, *stack_affine(series)))
    assert np.array_equal(volume, np.stack(arrays))
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.1.3.10", "1.2.3.4.5"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    index = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    index.FileSetID = "EXPORT"
    pydicom.dcmwrite(tmp_path / "DICOMDIR", index, enforce_file_format=True)
    assert read_header(tmp_path / "DICOMDIR") is None
