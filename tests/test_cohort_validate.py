import json

import numpy as np
import pytest
import SimpleITK as sitk

from fusion_model.cohort import load_cohort, validate_cohort
from fusion_model.errors import CohortValidationError
from tests.helpers import edit_table, sphere_mask, to_image, write_cohort


def errors(report):
    return [p.line() for p in report.errors]


def test_clean_cohort_validates_with_summary(tmp_path):
    root = write_cohort(tmp_path / "c")
    report = validate_cohort(root, require_label=True, progress=False)
    assert report.ok, errors(report)
    s = report.summary
    assert s["lesions"] == 3 and s["patients"] == 3
    assert s["class_balance"] == {"benign": 2, "malignant": 1, "unlabelled": 0}
    assert s["phases"] == {"unenhanced": 3, "venous": 3}
    assert s["missing_percent"]["size_mm"] == 0


def test_table_problems_are_reported_with_rows(tmp_path):
    root = write_cohort(tmp_path / "c")
    edit_table(root, size_mm={1: "-3"}, sex={2: "Q"})
    report = validate_cohort(root, progress=False)
    text = "\n".join(errors(report))
    assert "row 3" in text and "size_mm" in text and "row 4" in text and "sex" in text


def test_geometry_mismatch_is_refused_and_accepted_with_resample(tmp_path):
    root = write_cohort(tmp_path / "c")
    shifted = to_image(sphere_mask(radius_vox=4), spacing=(1.0, 1.0, 2.0), origin=(5.0, 0.0, 0.0))
    sitk.WriteImage(shifted, str(root / "masks/P1.nii.gz"))
    report = validate_cohort(root, progress=False)
    (line,) = errors(report)
    assert "row 2 (lesion P1-L1)" in line and "origin" in line and "--resample" in line
    report = validate_cohort(root, resample_mismatched=True, progress=False)
    assert report.ok and any("resampled onto the unenhanced grid" in p.message for p in report.warnings)


def test_spacing_mismatch_names_both_spacings(tmp_path):
    root = write_cohort(tmp_path / "c")
    sitk.WriteImage(to_image(sphere_mask(radius_vox=4), spacing=(1.0, 1.0, 3.0)), str(root / "masks/P2.nii.gz"))
    (line,) = errors(validate_cohort(root, progress=False))
    assert "spacing (1, 1, 3) vs (1, 1, 2)" in line


def test_empty_mask_is_refused(tmp_path):
    root = write_cohort(tmp_path / "c")
    sitk.WriteImage(to_image(np.zeros((24, 24, 24), np.uint8), spacing=(1, 1, 2)), str(root / "masks/P1.nii.gz"))
    (line,) = errors(validate_cohort(root, progress=False))
    assert "P1.nii.gz is empty" in line


def test_multilabel_mask_needs_mask_label(tmp_path):
    root = write_cohort(tmp_path / "c")
    two = sphere_mask(centre=(8, 8, 8), radius_vox=3) + sphere_mask(centre=(16, 16, 16), radius_vox=3, label=2)
    sitk.WriteImage(to_image(two, spacing=(1, 1, 2)), str(root / "masks/P1.nii.gz"))
    (line,) = errors(validate_cohort(root, progress=False))
    assert "several labels [1, 2]" in line and "mask_label" in line
    edit_table(root, mask_label={0: "2"})
    assert validate_cohort(root, progress=False).ok
    edit_table(root, mask_label={0: "3"})
    (line,) = errors(validate_cohort(root, progress=False))
    assert "no voxel with label 3" in line


@pytest.mark.parametrize("bad_path", ["../outside.nii.gz", "/etc/passwd", "masks/../../x.nii.gz"])
def test_path_escaping_the_cohort_is_refused(tmp_path, bad_path):
    root = write_cohort(tmp_path / "c")
    edit_table(root, mask_path={0: bad_path})
    (line,) = errors(validate_cohort(root, progress=False))
    assert "row 2" in line and ("outside the cohort directory" in line or "absolute" in line)


def test_symlink_escaping_the_cohort_is_refused(tmp_path):
    root = write_cohort(tmp_path / "c")
    outside = tmp_path / "outside.nii.gz"
    (root / "masks/P1.nii.gz").rename(outside)
    (root / "masks/P1.nii.gz").symlink_to(outside)
    (line,) = errors(validate_cohort(root, progress=False))
    assert "outside the cohort directory" in line


def test_missing_file_is_reported(tmp_path):
    root = write_cohort(tmp_path / "c")
    (root / "images/P3_venous.nii.gz").unlink()
    (line,) = errors(validate_cohort(root, progress=False))
    assert "row 4" in line and "P3_venous.nii.gz: file not found" in line


def test_patient_in_two_splits_is_refused(tmp_path):
    root = write_cohort(tmp_path / "c", n_lesions=3)
    edit_table(root, patient_id={1: "P1"}, split={0: "train", 1: "test", 2: "train"})
    (line,) = errors(validate_cohort(root, progress=False))
    assert "patient 'P1' is in splits ['test', 'train']" in line and "rows [2, 3]" in line


def test_phase_files_not_declared_in_cohort_json(tmp_path):
    root = write_cohort(tmp_path / "c", spec={"name": "x", "phases": ["unenhanced"]})
    (line,) = errors(validate_cohort(root, progress=False))
    assert "venous_path" in line and "cohort.json" in line


def test_bad_cohort_json_is_explained(tmp_path):
    root = write_cohort(tmp_path / "c")
    (root / "cohort.json").write_text(json.dumps({"name": "x", "phases": ["portal"], "colour": 1}))
    (line,) = errors(validate_cohort(root, progress=False))
    assert "phases" in line and "unknown phase" in line and "colour: unknown key" in line


def test_load_cohort_raises_with_every_problem(tmp_path):
    root = write_cohort(tmp_path / "c")
    edit_table(root, size_mm={0: "-1", 1: "abc"})
    with pytest.raises(CohortValidationError, match=r"row 2 \(lesion P1-L1\), column 'size_mm'") as info:
        load_cohort(root)
    assert len(info.value.problems) == 2
    assert "1 more problems" in str(info.value)
