"""The lesion segmenter: metrics against hand computations, components and side matching, scans on the
segmenter's grid, bad input, and train -> predict -> evaluate on a small cohort of phantoms that it must learn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from fusion_model.config import SegmentConfig
from fusion_model.errors import UserInputError
from fusion_model.segment.infer import Component, find_components, match_lesions
from fusion_model.segment.metrics import DetectionRecord, overlap_metrics
from tests.helpers import sphere_mask, to_image

# ---------------------------------------------------------------- metrics


def test_overlap_metrics_match_hand_computation():
    reference = np.zeros((20, 20, 20), bool)
    reference[5:15, 5:15, 5:15] = True  # 1000 voxels
    predicted = np.zeros_like(reference)
    predicted[5:15, 5:15, 7:17] = True  # shifted 2 voxels along x: 800 shared
    figures = overlap_metrics(predicted, reference, (1.0, 1.0, 1.0))
    assert figures["dice"] == pytest.approx(2 * 800 / 2000)
    assert figures["volume_difference_percent"] == pytest.approx(0.0)
    assert figures["hd95_mm"] == pytest.approx(2.0)  # every surface point is at most 2 voxels from the other
    # with 0.5 mm voxels along x the same shift is 1 mm: within the 2 mm surface tolerance everywhere
    scaled = overlap_metrics(predicted, reference, (1.0, 1.0, 0.5))
    assert scaled["hd95_mm"] == pytest.approx(1.0)
    assert scaled["surface_dice_2mm"] == pytest.approx(1.0)
    assert scaled["reference_ml"] == pytest.approx(0.5)


def test_a_missed_lesion_scores_zero():
    reference = sphere_mask((16, 16, 16), (8, 8, 8), 4).astype(bool)
    figures = overlap_metrics(np.zeros_like(reference), reference, (1.0, 1.0, 1.0))
    assert figures["dice"] == 0 and figures["surface_dice_2mm"] == 0 and np.isnan(figures["hd95_mm"])
    assert figures["volume_difference_percent"] == pytest.approx(-100.0)


def test_froc_and_operating_point():
    record = DetectionRecord()
    labels = np.zeros((10, 10, 10), np.uint16)
    labels[1:3, 1:3, 1:3] = 1  # touches lesion A
    labels[6:8, 6:8, 6:8] = 2  # touches nothing: a false positive
    lesion_a = np.zeros(labels.shape, bool)
    lesion_a[2:4, 2:4, 2:4] = True
    lesion_b = np.zeros(labels.shape, bool)
    lesion_b[8:, 0:2, 0:2] = True  # missed
    touching = record.add_scan(labels, {1: 0.9, 2: 0.7}, [lesion_a, lesion_b])
    assert touching == [[1], []]
    record.add_scan(np.zeros_like(labels), {}, [])  # a scan with no lesion and no component
    assert record.at(0.8) == (0.5, 0.0)
    assert record.at(0.6) == (0.5, 0.5)
    curve = record.froc()
    assert [p["threshold"] for p in curve] == sorted([p["threshold"] for p in curve], reverse=True)
    # within 0.5 FP per scan (2 scans: one FP allowed) the threshold can go down to the floor
    assert record.operating_threshold(0.5, floor=0.5) == 0.5
    # with no FP allowed it must sit just above the false positive's 0.7
    strict = record.operating_threshold(0.0, floor=0.5)
    assert 0.7 < strict < 0.7001 and record.at(strict) == (0.5, 0.0)


# ---------------------------------------------------------------- components and matching


def _reference(shape=(20, 40, 40), spacing=(1.0, 1.0, 1.0)) -> sitk.Image:
    body = np.full(shape, 40.0, np.float32)  # all body: the midline is the image centre (x = 19.5 mm)
    return to_image(body, spacing)


def test_components_are_sized_ranked_and_sided():
    probability = np.zeros((20, 40, 40), np.float32)
    probability += sphere_mask((20, 40, 40), (10, 20, 8), 4) * 0.95  # right of the midline (x < centre)
    probability += sphere_mask((20, 40, 40), (10, 20, 31), 4) * 0.6  # left
    probability[2, 2, 20] = 0.99  # a single voxel: below the minimum size
    labels, components = find_components(probability, _reference(), SegmentConfig(min_component_mm3=10))
    assert [c.side for c in components] == ["right", "left"]
    assert [round(c.probability, 2) for c in components] == [0.95, 0.6]
    assert set(np.unique(labels)) == {0, 1, 2}


def _component(label, probability, side):
    return Component(label, 500.0, probability, (0.0, 0.0, 0.0), side)


def test_matching_uses_the_side_then_probability():
    components = [_component(1, 0.95, "left"), _component(2, 0.8, "right"), _component(3, 0.6, "right")]
    assert match_lesions(["right"], components, 0.5) == [2]
    assert match_lesions(["left", "right"], components, 0.5) == [1, 2]
    assert match_lesions([None, "left"], components, 0.5) == [2, 1]  # the side claims first, then the best left
    assert match_lesions(["left"], components, 0.99) == [None]  # nothing at the operating point
    assert match_lesions(["left", "left"], components, 0.5) == [1, None]


# ---------------------------------------------------------------- scans, regions, bad input


def _phantom_cohort(root: Path, patients: int = 10, seed: int = 0, shape=(24, 48, 48), spacing=(2.0, 2.0, 2.0),
                    outlined: int | None = None) -> Path:
    """Bright spheres (one per patient, random place and size) in noisy soft tissue, on two sides."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for i in range(patients):
        pid = f"P{i + 1:02d}"
        side = "right" if i % 2 else "left"
        x = int(rng.integers(30, 40)) if side == "left" else int(rng.integers(8, 18))
        centre = (int(rng.integers(8, 16)), int(rng.integers(16, 32)), x)
        mask = sphere_mask(shape, centre, float(rng.uniform(3.0, 5.0)))
        ct = np.where(mask > 0, 60.0, 0.0) + rng.normal(0, 12, shape)
        sitk.WriteImage(to_image(ct.astype(np.int16), spacing), str(root / f"images/{pid}.nii.gz"))
        sitk.WriteImage(to_image(mask, spacing), str(root / f"masks/{pid}.nii.gz"))
        has_mask = outlined is None or i < outlined
        rows.append({"patient_id": pid, "lesion_id": f"{pid}-L1", "centre": "A" if i % 3 else "B", "label": i % 2,
                     "side": side, "unenhanced_path": f"images/{pid}.nii.gz",
                     "mask_path": f"masks/{pid}.nii.gz" if has_mask else None})
    pd.DataFrame(rows).to_csv(root / "clinical.csv", index=False)
    (root / "cohort.json").write_text(json.dumps({"name": "phantoms", "phases": ["unenhanced"]}))
    return root


TINY_SEGMENTER = {"channels": [8, 16, 32], "patch_voxels": [32, 32, 16], "epochs": 12, "iterations_per_epoch": 12,
                  "batch_size": 4, "learning_rate": 0.01, "min_component_mm3": 40, "min_extent_mm": 20,
                  "threads": 2, "hu_window": [-100, 150], "patience": 12}


def test_scan_on_the_isotropic_grid_and_region(tmp_path):
    from fusion_model.cohort import load_cohort
    from fusion_model.segment.scans import Region, cohort_scans, load_scan

    root = _phantom_cohort(tmp_path / "c", patients=2, spacing=(1.0, 1.0, 2.5))
    scan = cohort_scans(load_cohort(root))[0]
    config = SegmentConfig(spacing_mm=2.0, min_extent_mm=20)
    volume = load_scan(scan, ["unenhanced"], config, with_target=True)
    assert volume.grid.GetSpacing() == (2.0, 2.0, 2.0)
    # voxel centres span 23 x 2.5 mm along z and 47 x 1 mm in-plane: 2 mm voxels over the same span
    assert volume.image.shape == (1, 29, 24, 24)
    assert 0 <= volume.image.min() and volume.image.max() <= 1
    reference_ml = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "masks/P01.nii.gz"))).sum() * 2.5 / 1000
    assert volume.target.sum() * 8 / 1000 == pytest.approx(reference_ml, rel=0.3)  # a small lesion on 2 mm voxels
    boxed = load_scan(scan, ["unenhanced"], config, with_target=True,
                      region=Region(box_mm=(10.0, 20.0, 10.0, 20.0, 10.0, 20.0)))
    assert boxed.image.shape[1:] == (21, 21, 21)  # 10-20 mm box + 20 mm margin each side, clipped at 0 mm


def test_segment_train_refuses_a_cohort_without_masks(tmp_path):
    from fusion_model.segment.train import train_segmenter

    root = _phantom_cohort(tmp_path / "c", patients=3, outlined=0)
    with pytest.raises(UserInputError, match="no lesion has a mask"):
        train_segmenter(root, tmp_path / "seg", SegmentConfig(**TINY_SEGMENTER), progress=False)
    assert not (tmp_path / "seg").exists()


def test_a_scan_too_small_for_the_segmenter_is_refused(tmp_path):
    from fusion_model.segment.train import train_segmenter

    root = _phantom_cohort(tmp_path / "c", patients=4, shape=(4, 48, 48))  # 8 mm thick
    with pytest.raises(UserInputError, match=r"P01\.nii\.gz.*covers only 96 x 96 x 8 mm"):
        train_segmenter(root, tmp_path / "seg", SegmentConfig(**TINY_SEGMENTER), progress=False)
    assert not (tmp_path / "seg").exists()


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def trained_segmenter(tmp_path_factory):
    from fusion_model.segment.train import train_segmenter

    root = tmp_path_factory.mktemp("segment")
    cohort = _phantom_cohort(root / "cohort", patients=14, seed=1)
    run = train_segmenter(cohort, root / "seg", SegmentConfig(**TINY_SEGMENTER), progress=False)
    return {"root": root, "cohort": cohort, "run": run}


def test_train_learns_and_writes_a_segmenter(trained_segmenter):
    from fusion_model.segment.artifact import load_segmenter

    run = trained_segmenter["run"]
    assert run.figures["early_stopping_lesion_dice"]["median"] > 0.7
    loaded = load_segmenter(run.out)
    assert loaded.phases == ["unenhanced"] and loaded.threshold == run.segmenter.threshold
    assert loaded.spacing_range == ([2.0, 2.0, 2.0], [2.0, 2.0, 2.0])
    assert not list(run.out.parent.glob(".seg.checkpoint.pt"))  # the checkpoint goes once the segmenter is written


def test_predict_writes_a_valid_cohort_with_automatic_masks(trained_segmenter, tmp_path):
    from fusion_model.cohort import load_cohort, validate_cohort
    from fusion_model.segment.predict import predict_masks

    source = _phantom_cohort(tmp_path / "new", patients=6, seed=5, outlined=0)
    run = predict_masks(trained_segmenter["run"].out, source, tmp_path / "auto", progress=False)
    report = validate_cohort(tmp_path / "auto", progress=False)
    assert report.ok, report.problems
    cohort = load_cohort(tmp_path / "auto")
    table = cohort.table
    found = table["mask_path"].notna()
    assert run.found == int(found.sum()) >= 5
    assert (table.loc[found, "mask_source"] == "auto").all()
    assert set(pd.read_csv(tmp_path / "auto" / "not_found.csv")["lesion_id"]) == set(table.loc[~found, "lesion_id"])
    # the automatic masks overlap the truth the generator knows
    for lesion in cohort.lesions():
        if lesion.mask_path is None:
            continue
        auto = sitk.GetArrayFromImage(sitk.ReadImage(str(lesion.mask_path))) == lesion.mask_label
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(source / "masks" / f"{lesion.patient_id}.nii.gz"))) > 0
        assert 2 * (auto & truth).sum() / (auto.sum() + truth.sum()) > 0.6
    # images are shared, not re-encoded
    assert (tmp_path / "auto/images/P01.nii.gz").read_bytes() == (source / "images/P01.nii.gz").read_bytes()


def test_evaluate_reports_overlap_and_detection(trained_segmenter, tmp_path):
    from fusion_model.segment.evaluate import evaluate_segmenter

    cohort = _phantom_cohort(tmp_path / "test", patients=6, seed=9)
    result = evaluate_segmenter(trained_segmenter["run"].out, cohort, tmp_path / "report", progress=False)
    metrics = json.loads((tmp_path / "report/metrics.json").read_text(encoding="utf-8"))
    assert metrics["overall"]["lesions"] == 6 and set(metrics["per_centre"]) == {"A", "B"}
    assert metrics["overall"]["dice"]["median"] > 0.6
    assert metrics["overall"]["detection"]["operating_point"]["sensitivity"] >= 5 / 6
    lesions = pd.read_csv(tmp_path / "report/lesions.csv")
    assert lesions["dice"].median() == pytest.approx(result.metrics["overall"]["dice"]["median"])
    html = (tmp_path / "report/report.html").read_text(encoding="utf-8")
    assert "FROC" in html and html.count("data:image/png;base64,") >= 5
    for name in ("froc", "dice_by_centre", "overlay_best", "overlay_median", "overlay_worst"):
        assert (tmp_path / f"report/figures/{name}.png").stat().st_size > 1000


def test_predict_refuses_other_phases_and_spacing(trained_segmenter, tmp_path):
    from fusion_model.segment.predict import predict_masks

    model = trained_segmenter["run"].out
    venous_only = _phantom_cohort(tmp_path / "venous", patients=2)
    spec = json.loads((venous_only / "cohort.json").read_text())
    (venous_only / "cohort.json").write_text(json.dumps({**spec, "phases": ["venous"]}))
    table = pd.read_csv(venous_only / "clinical.csv").rename(columns={"unenhanced_path": "venous_path"})
    table.to_csv(venous_only / "clinical.csv", index=False)
    with pytest.raises(UserInputError, match=r"trained on phases \['unenhanced'\]"):
        predict_masks(model, venous_only, tmp_path / "out1", progress=False)
    coarse = _phantom_cohort(tmp_path / "coarse", patients=2, shape=(4, 12, 12), spacing=(8.0, 8.0, 8.0))
    with pytest.raises(UserInputError, match="far outside the segmenter's training range"):
        predict_masks(model, coarse, tmp_path / "out2", progress=False)
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()


@pytest.mark.slow
def test_a_killed_training_resumes_where_it_stopped(tmp_path):
    from safetensors.torch import load_file

    from fusion_model.segment.train import train_segmenter

    cohort = _phantom_cohort(tmp_path / "c", patients=6, seed=2)
    config = SegmentConfig(**{**TINY_SEGMENTER, "epochs": 3, "iterations_per_epoch": 2, "refine_epochs": 2})
    whole = train_segmenter(cohort, tmp_path / "whole", config, progress=False)

    class Killed(Exception):
        pass

    def kill_after_first_epoch(record):
        if record["stage"] == "detector" and record["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        train_segmenter(cohort, tmp_path / "resumed", config, progress=False, on_epoch=kill_after_first_epoch)
    assert not (tmp_path / "resumed").exists() and (tmp_path / ".resumed.checkpoint.pt").is_file()
    resumed = train_segmenter(cohort, tmp_path / "resumed", config, progress=False)
    assert resumed.figures["resumed_from_epoch"] == 1
    for name in ("segmenter.safetensors", "refiner.safetensors"):
        a, b = load_file(str(tmp_path / "whole" / name)), load_file(str(tmp_path / "resumed" / name))
        assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert resumed.segmenter.threshold == whole.segmenter.threshold


def test_cli_segment_errors_are_one_line(tmp_path):
    from tests.test_cli import run_cli

    root = _phantom_cohort(tmp_path / "c", patients=3, outlined=0)
    result = run_cli("segment", "train", "--cohort", root, "--out", tmp_path / "seg")
    assert result.returncode == 2
    assert "no lesion has a mask" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_cli("segment", "predict", "--model", tmp_path / "nothing", "--cohort", root, "--out", tmp_path / "o")
    assert result.returncode == 2 and "not a segmenter" in result.stderr


def test_cohort_rows_without_masks_are_listed_not_dropped(tmp_path):
    from fusion_model.cohort import load_cohort, validate_cohort
    from fusion_model.config import PreprocessConfig
    from fusion_model.imaging.cache import ImageCache

    root = _phantom_cohort(tmp_path / "c", patients=4, outlined=2)
    report = validate_cohort(root, progress=False)
    assert report.ok and report.summary["mask_sources"] == {"manual": 2, "none": 2}
    assert sum("not outlined yet" in p.message for p in report.problems) == 2
    cohort = load_cohort(root)
    images = cohort.images(PreprocessConfig(spacing_mm=4, crop_size_mm=32), ImageCache(tmp_path / "cache"),
                           progress=False)
    assert images.lesion_ids == ["P01-L1", "P02-L1"]
    assert [e.lesion_id for e in images.errors] == ["P03-L1", "P04-L1"]
    assert "segment predict" in images.errors[0].message
    with pytest.raises(UserInputError, match=r"2 lesion\(s\) have no mask_path \(rows 4 \(P03-L1\), 5 \(P04-L1\)\)"):
        cohort.images(PreprocessConfig(spacing_mm=4, crop_size_mm=32), ImageCache(tmp_path / "cache"), strict=True,
                      progress=False)


def test_predict_writes_dicom_seg_for_dicom_images(trained_segmenter, tmp_path):
    """A cohort of DICOM series gets a DICOM SEG per scan beside the NIfTI masks; read back with highdicom onto
    the CT grid, it holds the same lesion voxels."""
    from fusion_model.imaging.dicom_masks import read_dicom_mask
    from fusion_model.imaging.io import read_image, write_dicom_series
    from fusion_model.segment.predict import predict_masks

    root = _phantom_cohort(tmp_path / "nifti", patients=2, seed=5, outlined=0)
    table = pd.read_csv(root / "clinical.csv")
    for i, row in table.iterrows():
        series = write_dicom_series(sitk.ReadImage(str(root / row["unenhanced_path"])),
                                    root / f"images/{row['patient_id']}_ct")
        table.loc[i, "unenhanced_path"] = series.relative_to(root).as_posix()
    table.to_csv(root / "clinical.csv", index=False)
    run = predict_masks(trained_segmenter["run"].out, root, tmp_path / "auto", progress=False)
    assert run.dicom_seg_files == run.found >= 1
    auto = pd.read_csv(tmp_path / "auto/clinical.csv")
    for _, row in auto.dropna(subset=["mask_path"]).iterrows():
        ct = read_image(tmp_path / "auto" / row["unenhanced_path"])
        seg = tmp_path / "auto/masks" / f"{row['patient_id']}_auto_seg.dcm"
        from_seg = sitk.GetArrayFromImage(read_dicom_mask(seg, int(row["mask_label"]), ct)) > 0
        from_nifti = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "auto" / row["mask_path"]))) == \
            row["mask_label"]
        assert from_seg.any() and np.array_equal(from_seg, from_nifti)


def test_regions_from_boxes_or_organ_masks(tmp_path):
    from fusion_model.cohort import load_cohort
    from fusion_model.segment.scans import cohort_scans, load_scan, read_regions

    root = _phantom_cohort(tmp_path / "c", patients=2)
    organ = np.zeros((24, 48, 48), np.uint8)
    organ[10:14, 20:30, 30:40] = 7  # an adrenal label of an organ segmentation
    sitk.WriteImage(to_image(organ, (2.0, 2.0, 2.0)), str(root / "masks/P02_organs.nii.gz"))
    (root / "regions.csv").write_text("patient_id,x_min_mm,x_max_mm,y_min_mm,y_max_mm,z_min_mm,z_max_mm,"
                                      "region_mask_path\nP01,10,20,10,20,10,20,\nP02,,,,,,,masks/P02_organs.nii.gz\n")
    regions = read_regions(root / "regions.csv", root)
    assert regions["P01"].box_mm == (10.0, 20.0, 10.0, 20.0, 10.0, 20.0)
    scan = cohort_scans(load_cohort(root))[1]
    volume = load_scan(scan, ["unenhanced"], SegmentConfig(spacing_mm=2.0, min_extent_mm=20), with_target=False,
                       region=regions["P02"])
    # the organ's box (x 60-78 mm, y 40-58 mm, z 20-26 mm) + 20 mm, clipped to the scan (0-94 mm, 0-46 mm in z)
    assert volume.grid.GetOrigin() == pytest.approx((40.0, 20.0, 0.0))
    assert volume.image.shape[1:] == (24, 30, 28)
    (root / "bad.csv").write_text("patient_id,x_min_mm,x_max_mm,y_min_mm,y_max_mm,z_min_mm,z_max_mm\nP01,20,10,0,5,0,5\n")
    with pytest.raises(UserInputError, match=r"bad\.csv row 2: box .* each \*_min_mm must be below"):
        read_regions(root / "bad.csv", root)
    (root / "none.csv").write_text("patient_id,centre\nP01,A\n")
    with pytest.raises(UserInputError, match="give the box columns"):
        read_regions(root / "none.csv", root)


def test_cli_segment_predict_and_evaluate(trained_segmenter, tmp_path):
    from typer.testing import CliRunner

    from fusion_model.cli import app

    model = trained_segmenter["run"].out
    cohort = _phantom_cohort(tmp_path / "c", patients=3, seed=11)
    runner = CliRunner()
    result = runner.invoke(app, ["segment", "predict", "--model", str(model), "--cohort", str(cohort), "--out",
                                 str(tmp_path / "auto"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "outlined" in result.output and (tmp_path / "auto/clinical.csv").is_file()
    result = runner.invoke(app, ["segment", "evaluate", "--model", str(model), "--cohort", str(cohort), "--out",
                                 str(tmp_path / "report"), "--centre", "A"])
    assert result.exit_code == 0, result.output
    assert "Dice median" in result.output and (tmp_path / "report/report.html").is_file()
    assert json.loads((tmp_path / "report/metrics.json").read_text(encoding="utf-8"))["centre"] == "A"


def test_automatic_masks_against_manual_ones(trained_segmenter, tmp_path):
    """segment predict keeps the input's own masks as the second reader: agreement measures auto vs manual."""
    from fusion_model.agreement.run import AgreementSettings, run_agreement
    from fusion_model.cohort import validate_cohort
    from fusion_model.segment.predict import MANUAL_MASKS, predict_masks

    source = _phantom_cohort(tmp_path / "src", patients=5, seed=8, outlined=5)
    predict_masks(trained_segmenter["run"].out, source, tmp_path / "auto", progress=False)
    assert validate_cohort(tmp_path / "auto", progress=False).ok
    table = pd.read_csv(tmp_path / "auto/clinical.csv")
    assert table["mask_path_b"].str.startswith(MANUAL_MASKS + "/").all()
    result = run_agreement(tmp_path / "auto", tmp_path / "r", AgreementSettings(), progress=False)
    dice = result.metrics["comparisons"][0]["segmentation"]["dice"]
    found = int(table["mask_path"].notna().sum())
    assert result.metrics["lesions_compared"] == found and dice["mean"] > 0.5
