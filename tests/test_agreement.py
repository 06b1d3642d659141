"""`fusion-model agreement`: ICC and Bland-Altman against independent computations, perturbations, the
synthetic second reader, the analysis end to end (with and without a model) and its bad input."""

from __future__ import annotations

import json

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import stats as sps

from tests.browser import check_page
from tests.helpers import edit_table, sphere_mask, to_image, write_cohort

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], float)


def _mean_squares(x: np.ndarray) -> tuple[float, float, float, int, int]:
    """Two-way ANOVA without replication, by hand: MS between targets, between raters, residual."""
    n, k = x.shape
    grand = x.mean()
    ss_targets = k * ((x.mean(axis=1) - grand) ** 2).sum()
    ss_raters = n * ((x.mean(axis=0) - grand) ** 2).sum()
    ss_error = ((x - grand) ** 2).sum() - ss_targets - ss_raters
    return ss_targets / (n - 1), ss_raters / (k - 1), ss_error / ((n - 1) * (k - 1)), n, k


def _icc_by_hand(x: np.ndarray) -> dict:
    msr, msc, mse, n, k = _mean_squares(x)
    icc2 = (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)
    icc3 = (msr - mse) / (msr + (k - 1) * mse)
    f = msr / mse
    df1, df2 = n - 1, (n - 1) * (k - 1)
    fl, fu = f / sps.f.ppf(0.975, df1, df2), f * sps.f.ppf(0.975, df2, df1)
    return {"icc2": icc2, "icc3": icc3, "icc3_ci": ((fl - 1) / (fl + k - 1), (fu - 1) / (fu + k - 1))}


def test_icc_reproduces_the_shrout_fleiss_example():
    from fusion_model.agreement.stats import intraclass_correlation

    icc = intraclass_correlation(SHROUT_FLEISS)
    assert icc["n"] == 6 and icc["raters"] == 4
    assert round(icc["icc2_1"]["icc"], 2) == 0.29
    assert round(icc["icc3_1"]["icc"], 2) == 0.71
    assert icc["icc2_1"]["band"] == "poor" and icc["icc3_1"]["band"] == "moderate"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_icc_of_two_readers_matches_an_independent_anova(seed):
    from fusion_model.agreement.stats import intraclass_correlation

    rng = np.random.default_rng(seed)
    truth = rng.normal(30, 10, 40)
    readings = np.column_stack([truth + rng.normal(0, 3, 40), truth + 2.0 + rng.normal(0, 3, 40)])
    icc = intraclass_correlation(readings)
    by_hand = _icc_by_hand(readings)
    assert icc["icc2_1"]["icc"] == pytest.approx(by_hand["icc2"], abs=1e-10)
    assert icc["icc3_1"]["icc"] == pytest.approx(by_hand["icc3"], abs=1e-10)
    assert icc["icc3_1"]["ci95"] == pytest.approx(by_hand["icc3_ci"], abs=1e-10)
    lo, hi = icc["icc2_1"]["ci95"]
    assert lo < icc["icc2_1"]["icc"] < hi
    # absolute agreement is penalised by the readers' 2-unit offset, consistency is not
    assert icc["icc2_1"]["icc"] < icc["icc3_1"]["icc"]


def test_icc_without_variance_or_lesions_says_why():
    from fusion_model.agreement.stats import icc_band, intraclass_correlation

    constant = intraclass_correlation(np.ones((10, 2)))
    assert constant["icc2_1"] is None and "no variance" in constant["note"]
    few = intraclass_correlation(np.array([[1.0, 2.0], [3.0, np.nan], [2.0, 2.5]]))
    assert few["n"] == 2 and few["icc2_1"] is None and "at least 3" in few["note"]
    assert [icc_band(v) for v in (0.95, 0.8, 0.6, 0.2, None)] == ["excellent", "good", "moderate", "poor", None]


def test_bland_altman_matches_hand_computation():
    from fusion_model.agreement.stats import bland_altman

    a = np.array([10.0, 12.0, 15.0, 20.0, 30.0, np.nan])
    b = np.array([11.0, 12.5, 14.0, 22.0, 31.0, 5.0])
    ba = bland_altman(a, b)
    diff = np.array([1.0, 0.5, -1.0, 2.0, 1.0])
    assert ba["n"] == 5
    assert ba["bias"] == pytest.approx(diff.mean())
    assert ba["sd"] == pytest.approx(diff.std(ddof=1))
    assert ba["limits"] == pytest.approx([diff.mean() - 1.96 * diff.std(ddof=1), diff.mean() + 1.96 * diff.std(ddof=1)])
    t = sps.t.ppf(0.975, 4)
    assert ba["bias_ci95"][1] - ba["bias"] == pytest.approx(t * diff.std(ddof=1) / np.sqrt(5))
    assert ba["mean_absolute_difference"] == pytest.approx(np.abs(diff).mean())


# ---------------------------------------------------------------------------------------------- perturbations
def test_erosion_dilation_and_islands():
    from fusion_model.imaging.perturb import connected_to, dice, dilate, erode

    mask = sphere_mask((30, 30, 30), (15, 15, 15), 6.0).astype(bool)
    assert erode(mask, 1).sum() < mask.sum() < dilate(mask, 1).sum() < dilate(mask, 2).sum()
    assert (erode(mask, 1) <= mask).all() and (mask <= dilate(mask, 1)).all()
    assert not erode(sphere_mask((12, 12, 12), (6, 6, 6), 1.0).astype(bool), 2).any()
    assert dice(mask, mask) == 1.0 and dice(mask, np.zeros_like(mask)) == 0.0
    island = mask.copy()
    island[0:2, 0:2, 0:2] = True
    assert (connected_to(island, mask) == mask).all()


def test_contour_perturbation_hits_its_dice_and_repeats_with_the_seed():
    from fusion_model.imaging.perturb import dice, perturb_to_dice

    mask = sphere_mask((40, 40, 40), (20, 20, 20), 10.0).astype(bool)
    spacing = (2.0, 0.8, 0.8)
    outline, amplitude = perturb_to_dice(mask, spacing, 0.85, np.random.default_rng(3))
    assert dice(outline, mask) == pytest.approx(0.85, abs=0.01) and amplitude > 0
    again, _ = perturb_to_dice(mask, spacing, 0.85, np.random.default_rng(3))
    assert (again == outline).all()
    other, _ = perturb_to_dice(mask, spacing, 0.85, np.random.default_rng(4))
    assert (other != outline).any()


def test_second_reader_disagrees_more_on_small_and_irregular_lesions():
    from fusion_model.imaging.perturb import dice, second_reader_outline

    spacing = (2.5, 0.9, 0.9)

    def mean_dice(radius_vox, irregularity):
        mask = sphere_mask((48, 64, 64), (24, 32, 32), radius_vox).astype(bool)
        return np.mean([dice(mask, second_reader_outline(mask, spacing, irregularity, np.random.default_rng(s)))
                        for s in range(12)])

    small, large, irregular = mean_dice(7, 0.05), mean_dice(20, 0.05), mean_dice(7, 0.25)
    assert 0.75 < small < large < 0.99
    assert irregular < small


def test_synth_second_reader_writes_masks_that_validate(tmp_path):
    from fusion_model.cohort import validate_cohort
    from fusion_model.config import SynthConfig
    from fusion_model.synthetic.generate import synthesize_cohort

    with_b = synthesize_cohort(tmp_path / "b", SynthConfig(patients=16, seed=4, two_lesion_fraction=0.3,
                                                           second_reader=True), progress=False)
    without = synthesize_cohort(tmp_path / "a", SynthConfig(patients=16, seed=4, two_lesion_fraction=0.3),
                                progress=False)
    table = pd.read_csv(with_b / "clinical.csv")
    plain = pd.read_csv(without / "clinical.csv")
    # the second reader is drawn on its own: the cohort is otherwise the same
    pd.testing.assert_frame_equal(table.drop(columns=["mask_path_b", "mask_label_b"]), plain)
    assert (with_b / "images/P00001_unenhanced.nii.gz").read_bytes() == \
        (without / "images/P00001_unenhanced.nii.gz").read_bytes()
    report = validate_cohort(with_b, progress=False)
    assert report.ok, report.errors
    assert report.summary["second_reader_masks"] == len(table)
    dices = []
    for row in table.itertuples():
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(with_b / row.mask_path)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(with_b / row.mask_path_b)))
        label = 1 if pd.isna(row.mask_label) else int(row.mask_label)
        assert (1 if pd.isna(row.mask_label_b) else int(row.mask_label_b)) == label
        a, b = a == label, b == label
        dices.append(2 * (a & b).sum() / (a.sum() + b.sum()))
    assert 0.85 < np.mean(dices) < 0.97 and min(dices) > 0.4 and max(dices) < 1.0


# ------------------------------------------------------------------------------------------- tiny cohorts
def _two_reader_cohort(root, n_lesions=5, shift=1):
    """Spheres of radius 4..8 voxels, a second reader's sphere shifted by ``shift`` voxels along x."""
    root = write_cohort(root, n_lesions=n_lesions)
    (root / "masks_b").mkdir()
    paths = {}
    for i in range(n_lesions):
        mask = sphere_mask(radius_vox=4 + i % 5)
        moved = np.roll(mask, shift, axis=2)
        sitk.WriteImage(to_image(moved, (1.0, 1.0, 2.0)), str(root / f"masks_b/P{i + 1}.nii.gz"))
        paths[i] = f"masks_b/P{i + 1}.nii.gz"
    edit_table(root, mask_path_b=paths)
    return root


def test_agreement_of_two_readers_end_to_end(tmp_path):
    from fusion_model.agreement.run import AgreementSettings, run_agreement

    root = _two_reader_cohort(tmp_path / "c")
    edit_table(root, mask_path_b={4: ""})  # lesion 5 was read once
    result = run_agreement(root, tmp_path / "report", AgreementSettings(), progress=False)
    m = json.loads((tmp_path / "report/metrics.json").read_text())
    assert m["mode"] == "second reader" and m["lesions_compared"] == 4
    assert [r["lesion_id"] for r in m["read_once"]] == ["P5-L1"] and "first reader only" in m["read_once"][0]["reader"]
    block = m["comparisons"][0]
    # Dice of each lesion against an independent computation on the files
    lesions = pd.read_csv(tmp_path / "report/lesions.csv").set_index("lesion_id")
    for i in range(4):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(root / f"masks/P{i + 1}.nii.gz"))) > 0
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(root / f"masks_b/P{i + 1}.nii.gz"))) > 0
        assert lesions.loc[f"P{i + 1}-L1", "dice"] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()), abs=1e-6)
    assert block["segmentation"]["dice"]["n"] == 4
    names = {f["feature"] for f in block["features"]}
    assert {"volume_ml", "max_axial_diameter_mm", "unenhanced_mean_hu"} <= names
    volume = next(f for f in block["features"] if f["feature"] == "volume_ml")
    assert volume["icc2_1"]["icc"] > 0.9  # a one-voxel shift keeps the volume
    assert set(block["bland_altman"]) == {"max_axial_diameter_mm", "unenhanced_mean_hu"}
    icc_table = pd.read_csv(tmp_path / "report/feature_icc.csv")
    assert set(icc_table["feature"]) == names
    html = (tmp_path / "report/report.html").read_text()
    assert "Lesions with one outline" in html and "P5-L1" in html and "ICC(2,1)" in html
    assert (tmp_path / "report/figures/reader_b/contours_1.png").stat().st_size > 1000
    assert (tmp_path / "report/figures/reader_b/bland_altman_features.png").exists()
    assert "model" not in block and result.predictions is None


def test_masks_b_folder_with_the_first_readers_names(tmp_path):
    from fusion_model.agreement.run import AgreementSettings, run_agreement
    from fusion_model.cohort import validate_cohort

    root = _two_reader_cohort(tmp_path / "c", n_lesions=4)
    table = pd.read_csv(root / "clinical.csv").drop(columns=["mask_path_b"])
    table.to_csv(root / "clinical.csv", index=False)
    second = tmp_path / "reader2"
    second.mkdir()
    for i in range(3):  # the fourth lesion has no file there: read once
        (second / f"P{i + 1}.nii.gz").write_bytes((root / f"masks_b/P{i + 1}.nii.gz").read_bytes())
    report = validate_cohort(root, masks_b_dir=second, progress=False)
    assert report.ok and report.summary["second_reader_masks"] == 3
    result = run_agreement(root, tmp_path / "r", AgreementSettings(masks_b_dir=second), progress=False)
    assert result.metrics["lesions_compared"] == 3 and result.metrics["second_reader_source"] == str(second)
    assert result.metrics["read_once"][0]["lesion_id"] == "P4-L1"


def test_perturbations_without_a_second_reader(local_cluster, tmp_path):
    from fusion_model.agreement.run import AgreementSettings, run_agreement

    root = write_cohort(tmp_path / "c", n_lesions=4)
    result = run_agreement(root, tmp_path / "r", AgreementSettings(perturb=True, contour_dice=0.85, seed=2),
                           progress=False)
    blocks = {b["name"]: b for b in result.metrics["comparisons"]}
    assert list(blocks) == ["erode_1", "erode_2", "dilate_1", "dilate_2", "contour_dice_0.85"]
    dice = {name: b["segmentation"]["dice"]["mean"] for name, b in blocks.items()}
    assert dice["erode_2"] < dice["erode_1"] < 1 and dice["dilate_2"] < dice["dilate_1"] < 1
    assert dice["contour_dice_0.85"] == pytest.approx(0.85, abs=0.02)
    volumes = blocks["dilate_1"]["segmentation"]["volume_difference_ml"]
    assert volumes["min"] > 0 and blocks["erode_1"]["segmentation"]["volume_difference_ml"]["max"] < 0
    again = run_agreement(root, tmp_path / "r2", AgreementSettings(perturb=True, contour_dice=0.85, seed=2),
                          progress=False)
    pd.testing.assert_frame_equal(result.lesions, again.lesions)
    # the same perturbations on a local Dask cluster
    on_workers = run_agreement(root, tmp_path / "r3", AgreementSettings(perturb=True, contour_dice=0.85, seed=2),
                               progress=False, engine=local_cluster)
    pd.testing.assert_frame_equal(result.lesions, on_workers.lesions)
    assert on_workers.metrics["comparisons"] == result.metrics["comparisons"]


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_second_masks_are_refused_naming_file_and_row(tmp_path):
    from fusion_model.agreement.run import AgreementSettings, run_agreement
    from fusion_model.cohort import validate_cohort
    from fusion_model.errors import UserInputError

    root = _two_reader_cohort(tmp_path / "grid", n_lesions=3)
    sitk.WriteImage(to_image(sphere_mask(radius_vox=5), (1.0, 1.0, 1.0)), str(root / "masks_b/P2.nii.gz"))
    with pytest.raises(UserInputError, match=r"P2-L1 \(clinical.csv row 3\).*masks_b/P2.nii.gz.*--resample"):
        run_agreement(root, tmp_path / "out", AgreementSettings(), progress=False)
    assert not (tmp_path / "out").exists()
    report = validate_cohort(root, progress=False)
    assert any("second reader" in p.message and "row 3" in p.where for p in report.errors)
    resampled = run_agreement(root, tmp_path / "out", AgreementSettings(resample=True), progress=False)
    assert resampled.metrics["lesions_compared"] == 3

    root = _two_reader_cohort(tmp_path / "empty", n_lesions=3)
    sitk.WriteImage(to_image(np.zeros((24, 24, 24), np.uint8), (1.0, 1.0, 2.0)), str(root / "masks_b/P3.nii.gz"))
    with pytest.raises(UserInputError, match=r"P3-L1 \(clinical.csv row 4\).*masks_b/P3.nii.gz.*no non-zero voxel"):
        run_agreement(root, tmp_path / "out2", AgreementSettings(), progress=False)
    assert not (tmp_path / "out2").exists()
    assert any("is empty" in p.message for p in validate_cohort(root, progress=False).errors)

    root = _two_reader_cohort(tmp_path / "label", n_lesions=3)
    edit_table(root, mask_label_b={0: "2"})
    with pytest.raises(UserInputError, match=r"P1-L1 \(clinical.csv row 2\).*no voxel with label 2"):
        run_agreement(root, tmp_path / "out3", AgreementSettings(), progress=False)
    problems = validate_cohort(root, progress=False).errors
    assert any("label 2" in p.message and "mask_label_b" in p.message for p in problems)


def test_no_second_reader_is_a_clear_error(tmp_path):
    from tests.test_cli import run_cli

    root = write_cohort(tmp_path / "c", n_lesions=3)
    result = run_cli("agreement", "--cohort", root, "--out", tmp_path / "r")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "mask_path_b" in result.stderr and "--perturb" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_cli("agreement", "--cohort", root, "--out", tmp_path / "r", "--masks-b", tmp_path / "nowhere")
    assert result.returncode == 2 and "not a folder" in result.stderr
    result = run_cli("agreement", "--cohort", root, "--out", tmp_path / "r", "--perturb", "--contour-dice", "1.2")
    assert result.returncode == 2 and "between 0.5 and 1" in result.stderr
    assert not (tmp_path / "r").exists()
    ok = run_cli("agreement", "--cohort", root, "--out", tmp_path / "r", "--perturb")
    assert ok.returncode == 0, ok.stderr
    assert "dilated by 2 voxels" in ok.stdout and (tmp_path / "r/report.html").exists()


def test_the_agreement_command_loads_no_network_library_before_it_needs_one():
    """A bad argument is answered at once (3 s, not the 7 s of importing torch and MONAI first)."""
    import subprocess
    import sys

    code = "import sys, fusion_model.agreement.run; print(sorted({'torch', 'monai'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# -------------------------------------------------------------------------------------------- with a model
def _first_patients(cohort: Path, patients: int, out: Path) -> Path:
    """The cohort's first ``patients`` patients as a cohort of their own (its files hard-linked, not copied: a
    cohort's paths may not lead outside it, as a symbolic link would)."""
    import os
    import shutil

    shutil.copytree(cohort, out, copy_function=os.link)
    table = pd.read_csv(cohort / "clinical.csv")
    (out / "clinical.csv").unlink()
    table[table["patient_id"].isin(table["patient_id"].unique()[:patients])].to_csv(out / "clinical.csv", index=False)
    return out


def test_agreement_with_a_model_scores_like_predict(trained_model, tmp_path):
    from fusion_model import pipeline
    from fusion_model.agreement.run import AgreementSettings, run_agreement
    from fusion_model.imaging.cache import ImageCache

    cohort = _first_patients(trained_model["test_cohort"], 16, tmp_path / "cohort")
    result = run_agreement(cohort, tmp_path / "r", AgreementSettings(perturb=True), model_dir=trained_model["model"],
                           progress=False)
    m = result.metrics
    predictions = pd.read_csv(tmp_path / "r/predictions.csv")
    reference, _ = pipeline.predict(trained_model["model"], cohort, tmp_path / "p.csv", ImageCache(tmp_path / "cache"),
                                    progress=False)
    # the first reader's probabilities are exactly what `predict` gives
    first = predictions[(predictions["comparison"] == "dilate_1") & (predictions["variant"] == "all")]
    first = first.set_index("lesion_id")["p_a"]
    assert np.allclose(first.to_numpy(), reference.loc[first.index, "p_all"].to_numpy(), atol=1e-5)
    for block in m["comparisons"]:
        assert set(block["model"]) == {"imaging", "imaging_radiological", "imaging_clinical", "all"}
        for variant, figures in block["model"].items():
            rows = predictions[(predictions["comparison"] == block["name"]) & (predictions["variant"] == variant)]
            assert figures["flips"] == int(rows["class_flips"].sum()) == len(figures["flipped_lesions"])
            assert figures["mean_absolute_difference"] == pytest.approx((rows["p_b"] - rows["p_a"]).abs().mean())
            assert 0 <= figures["auc"]["a"] <= 1 and figures["auc"]["p_value"] is None or \
                0 <= figures["auc"]["p_value"] <= 1
    # a larger change of the outline moves the answers more
    mad = {b["name"]: b["model"]["all"]["mean_absolute_difference"] for b in m["comparisons"]}
    assert mad["dilate_2"] > mad["dilate_1"]
    assert "The model's answer" in (tmp_path / "r/report.html").read_text()
    page = check_page(tmp_path / "r/report.html", "agreement-report.png")
    assert page["images"] >= 5 * 4 and page["broken"] == []
    assert page["problems"] == [] and page["console"] == []



# ------------------------------------------------------------------------------ second reader as augmentation
def test_training_batches_draw_the_second_readers_crop():
    from fusion_model.config import EncoderConfig
    from fusion_model.encoder.train import _training_batch
    from fusion_model.encoder.transforms import BatchAugmentation

    config = EncoderConfig(augmentation_strength=0.0)
    crops = np.zeros((4, 2, 8, 8, 8), np.float16)
    second = np.ones((4, 2, 8, 8, 8), np.float16)
    use = np.array([True, False, True, False])
    x, _ = _training_batch(crops, np.zeros(4), np.arange(4), BatchAugmentation(0.0), config,
                           np.random.default_rng(0), np.random.default_rng(1), second, use)
    assert x[:, 1].flatten(1).mean(1).tolist() == [1.0, 0.0, 1.0, 0.0]


def test_experiment_masks_option_is_checked():
    from fusion_model.config import ExperimentConfig

    assert ExperimentConfig().masks == ["a"]
    assert ExperimentConfig(masks=["a", "b"]).masks == ["a", "b"]
    with pytest.raises(ValueError, match=r"\[a\] .*\[a, b\]"):
        ExperimentConfig(masks=["b"])


def test_train_with_the_second_reader_as_augmentation(tmp_path):
    import yaml

    from fusion_model import pipeline
    from fusion_model.config import SynthConfig, load_experiment
    from fusion_model.errors import UserInputError
    from fusion_model.imaging.cache import ImageCache
    from fusion_model.synthetic.generate import synthesize_cohort
    from tests.conftest import TINY_EXPERIMENT

    cohort = synthesize_cohort(tmp_path / "c", SynthConfig(patients=30, seed=12, second_reader=True), progress=False)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY_EXPERIMENT, "masks": ["a", "b"]}))
    cache = ImageCache(tmp_path / "cache")
    run = pipeline.train(load_experiment(config), cohort, tmp_path / "m", cache, progress=False)
    manifest = json.loads((tmp_path / "m/manifest.json").read_text())
    assert manifest["cohort"]["masks"] == ["a", "b"] and manifest["cohort"]["second_reader_lesions"] > 30
    plain_config = tmp_path / "plain.yaml"
    plain_config.write_text(yaml.safe_dump(TINY_EXPERIMENT))
    plain = pipeline.train(load_experiment(plain_config), cohort, tmp_path / "p", cache, progress=False)
    # the encoder saw other crops: its out-of-fold outputs differ (the folds are the same)
    assert not np.allclose(run.model.encoder_.oof_logits_, plain.model.encoder_.oof_logits_)
    no_second = synthesize_cohort(tmp_path / "n", SynthConfig(patients=10, seed=12), progress=False)
    with pytest.raises(UserInputError, match="mask_path_b"):
        pipeline.train(load_experiment(config), no_second, tmp_path / "x", cache, progress=False)
