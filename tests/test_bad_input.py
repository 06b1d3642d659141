"""Damaged and unusual inputs: each is refused (or accepted) with one line that names the file, row and fix,
exit code 2, never a traceback."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from fusion_model.cohort import load_cohort, validate_cohort
from fusion_model.config import PreprocessConfig
from fusion_model.errors import UserInputError
from fusion_model.imaging.cache import ImageCache
from fusion_model.imaging.io import read_image
from fusion_model.imaging.quality import check_file_complete, ct_value_problems
from tests.helpers import edit_table, sphere_mask, to_image, write_cohort
from tests.test_cli import run_cli


def _one_line_exit_2(result, *fragments):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def _errors(report) -> str:
    return "\n".join(p.line() for p in report.errors)


# -------------------------------------------------------------------------------- damaged voxels
def test_truncated_gzip_and_nifti_are_refused(tmp_path):
    image = to_image(np.full((20, 24, 24), 40, np.int16))
    for name in ("ct.nii.gz", "ct.nii"):
        sitk.WriteImage(image, str(tmp_path / name))
        check_file_complete(tmp_path / name)  # whole files pass
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(data[: len(data) // 2])
        with pytest.raises(UserInputError, match="truncated"):
            read_image(tmp_path / f"cut_{name}")
    corrupt = bytearray((tmp_path / "ct.nii.gz").read_bytes())
    corrupt[-6] ^= 0xFF  # the CRC
    (tmp_path / "crc.nii.gz").write_bytes(bytes(corrupt))
    with pytest.raises(UserInputError, match="damaged|truncated"):
        read_image(tmp_path / "crc.nii.gz")


def test_the_completeness_check_reads_large_and_unusual_gzip_files_in_one_pass(tmp_path):
    """Volumes larger than one decompressed piece (NaN voxels in any piece, an end cut anywhere), several gzip
    members (as some tools concatenate), zero padding after the end (tape and transfer tools) pass or fail as a
    reader would need."""
    import gzip

    rng = np.random.default_rng(0)
    values = rng.normal(0, 100, (20, 150, 150)).astype(np.float32)  # 1.8 MB: several pieces
    sitk.WriteImage(sitk.GetImageFromArray(values), str(tmp_path / "ct.nii.gz"), True)
    data = (tmp_path / "ct.nii.gz").read_bytes()
    plain = gzip.decompress(data)
    cases = {"members.nii.gz": gzip.compress(plain[:700_001]) + gzip.compress(plain[700_001:]),
             "padded.nii.gz": data + bytes(512), "plain.nii": plain}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        check_file_complete(tmp_path / name)
    flipped = data[:9000] + bytes([data[9000] ^ 0xFF]) + data[9001:]
    bad = {"junk.nii.gz": (data + b"junk", "damaged"), "flipped.nii.gz": (flipped, "damaged"),
           "no_trailer.nii.gz": (data[:-8], "truncated"), "cut.nii": (plain[:-4], "truncated"),
           "text.nii.gz": (b"not an image" * 40, "not gzip-compressed")}
    for name, (content, message) in bad.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UserInputError, match=message):
            check_file_complete(tmp_path / name)
    for where in (0, 10, 19):  # the first, a middle and the last piece
        broken = values.copy()
        broken[where, 149, 149] = np.nan
        broken[where, 0, 3] = -np.inf
        sitk.WriteImage(sitk.GetImageFromArray(broken), str(tmp_path / "nan.nii.gz"), True)
        sitk.WriteImage(sitk.GetImageFromArray(broken), str(tmp_path / "nan.nii"), False)
        for name in ("nan.nii.gz", "nan.nii"):
            with pytest.raises(UserInputError, match="2 voxel.s. are NaN or infinite"):
                check_file_complete(tmp_path / name)


def _write_nifti_with_nan(path):
    """Rewrite a volume as float32 NIfTI with one NaN voxel (as other tools write it: ITK would write 0)."""
    import gzip

    reference = sitk.ReadImage(str(path))
    values = sitk.GetArrayFromImage(reference).astype(np.float32)
    values[2, 2, 2] = 98765.0  # a marker, replaced by NaN in the bytes
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(reference)
    raw = path.with_name("raw.nii")
    sitk.WriteImage(image, str(raw))
    data = raw.read_bytes().replace(np.float32(98765.0).tobytes(), np.float32(np.nan).tobytes())
    raw.unlink()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def test_nan_voxels_in_a_nifti_file_are_found_although_itk_reads_them_as_zero(tmp_path):
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(to_image(np.full((8, 8, 8), 40, np.int16)), str(path))
    _write_nifti_with_nan(path)
    assert not np.isnan(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).any()  # what ITK shows
    with pytest.raises(UserInputError, match="1 voxel.* NaN"):
        read_image(path)


def test_ct_values_that_are_not_hounsfield_units_are_named():
    mask = to_image(sphere_mask())
    ct = np.full((24, 24, 24), 40.0, np.float32)
    assert ct_value_problems(to_image(ct), "unenhanced", mask) == []
    with_nan = ct.copy()
    with_nan[3, 4, 5] = np.nan
    assert "NaN" in ct_value_problems(to_image(with_nan), "unenhanced")[0]
    raw_stored = ct + 1024  # DICOM stored values without the rescale intercept
    assert "plausible" in " ".join(ct_value_problems(to_image(raw_stored), "unenhanced", mask))
    assert "Hounsfield" in " ".join(ct_value_problems(to_image(np.full((8, 8, 8), 5000.0, np.float32)), "venous"))


def test_validate_and_predict_report_damaged_volumes_per_lesion(tmp_path):
    root = write_cohort(tmp_path / "c", n_lesions=3)
    data = (root / "images/P1_venous.nii.gz").read_bytes()
    (root / "images/P1_venous.nii.gz").write_bytes(data[: len(data) // 2])
    _write_nifti_with_nan(root / "images/P2_unenhanced.nii.gz")
    report = validate_cohort(root, progress=False)
    errors = _errors(report)
    assert "row 2 (lesion P1-L1)" in errors and "P1_venous.nii.gz" in errors and "truncated" in errors
    assert "row 3 (lesion P2-L1)" in errors and "NaN" in errors
    assert "P3-L1" not in errors
    images = load_cohort(root).images(PreprocessConfig(spacing_mm=2.0, crop_size_mm=32), ImageCache(None),
                                      progress=False)
    assert images.lesion_ids == ["P3-L1"]
    assert {e.lesion_id for e in images.errors} == {"P1-L1", "P2-L1"}


def test_two_and_four_dimensional_images_are_refused_without_a_traceback(tmp_path):
    root = write_cohort(tmp_path / "c", n_lesions=2)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((24, 24), np.int16)), str(root / "images/P1_venous.nii.gz"))
    four = sitk.JoinSeries([to_image(np.zeros((24, 24, 24), np.int16))] * 2)
    sitk.WriteImage(four, str(root / "images/P2_venous.nii.gz"))
    errors = _errors(validate_cohort(root, progress=False))
    assert "P1_venous.nii.gz: is 2D; a 3D volume is needed" in errors and "P2_venous.nii.gz: is 4D" in errors
    result = run_cli("validate", root)
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout


# ---------------------------------------------------------------------------------- the table
def test_clinical_csv_without_patient_id_stops_after_the_table_check(tmp_path):
    root = write_cohort(tmp_path / "c")
    table = pd.read_csv(root / "clinical.csv").drop(columns=["patient_id"])
    table.to_csv(root / "clinical.csv", index=False)
    report = validate_cohort(root, progress=False)
    assert not report.ok and "patient_id" in _errors(report)
    result = run_cli("validate", root)
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout


def test_header_only_table_is_not_a_cohort(tmp_path):
    root = write_cohort(tmp_path / "c")
    header = (root / "clinical.csv").read_text(encoding="utf-8").splitlines()[0]
    (root / "clinical.csv").write_text(header + "\n")
    report = validate_cohort(root, progress=False)
    assert "no lesion rows" in _errors(report)
    with pytest.raises(UserInputError, match="no lesion rows"):
        load_cohort(root)


def test_semicolon_separated_table_with_decimal_commas_is_read_as_meant(tmp_path):
    root = write_cohort(tmp_path / "c")
    comma = pd.read_csv(root / "clinical.csv", dtype=str)
    comma.loc[0, "unenhanced_hu"] = "12,5"  # a decimal comma, as European spreadsheets write it
    comma.to_csv(root / "clinical.csv", index=False, sep=";")
    cohort = load_cohort(root)
    assert cohort.table.loc[0, "unenhanced_hu"] == 12.5 and len(cohort.table) == 3
    assert validate_cohort(root, progress=False).ok


def test_centre_missing_from_cohort_json_names_its_rows(tmp_path):
    root = write_cohort(tmp_path / "c", spec={"name": "tiny", "phases": ["unenhanced", "venous"], "centres": ["A"]})
    edit_table(root, centre={1: "B", 2: "B"})
    errors = _errors(validate_cohort(root, progress=False))
    assert "rows 3, 4" in errors and "'B'" in errors and "cohort.json" in errors


# ---------------------------------------------------------------------------------- artifacts
def test_a_stray_file_in_the_model_folder_is_one_warning_line(trained_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained_model["model"], model)
    (model / "encoder/extra.safetensors").write_bytes(b"\x00" * 16)
    out = tmp_path / "p.csv"
    result = run_cli("predict", "--model", model, "--cohort", trained_model["test_cohort"], "--out", out,
                     "--cache", trained_model["cache"])
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "manifest does not list" in line]
    assert len(lines) == 1 and lines[0].startswith("warning:") and "encoder/extra.safetensors" in lines[0]
    assert "Traceback" not in result.stderr and out.is_file()



@pytest.mark.parametrize("target", ["encoder/fold0.safetensors", "heads/all_fusion.json"])
def test_artifact_file_of_the_wrong_format_is_one_line_exit_2(trained_model, tmp_path, target):
    from fusion_model.fileio import sha256_file

    model = tmp_path / "model"
    shutil.copytree(trained_model["model"], model)
    (model / target).write_bytes(b'{"not": "a model"}' if target.endswith(".json") else b"\x00" * 64)
    manifest = json.loads((model / "manifest.json").read_text(encoding="utf-8"))
    manifest["files"][target] = sha256_file(model / target)  # a checksum cannot catch this
    (model / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (model / "manifest.sha256").write_text(sha256_file(model / "manifest.json") + "\n")
    out = tmp_path / "p.csv"
    result = run_cli("predict", "--model", model, "--cohort", trained_model["test_cohort"], "--out", out)
    _one_line_exit_2(result, target.split("/")[-1])
    assert not out.exists()
