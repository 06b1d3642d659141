import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from clinical_schema import MALIGNANT_LESION_TYPES
from fusion_model.cohort import load_cohort, validate_cohort
from fusion_model.config import PreprocessConfig, SynthConfig
from fusion_model.errors import UserInputError
from fusion_model.imaging.cache import ImageCache
from fusion_model.synthetic.generate import synthesize_cohort, synthesize_patient
from fusion_model.synthetic.profiles import (
    PROFILES,
    draw_latents,
    draw_type,
    oracle_risk,
)


def test_synthetic_cohort_validates_clean(synthetic_cohort):
    report = validate_cohort(synthetic_cohort, require_label=True, progress=False)
    assert report.ok, [p.line() for p in report.errors]
    assert report.warnings == []
    assert set(report.summary["centres"]) == {"centre_a", "centre_b", "centre_c"}
    table = pd.read_csv(synthetic_cohort / "clinical.csv")
    assert (table.groupby("patient_id").size() == 2).any(), "some patients have two lesions"
    assert "oracle_risk" not in table and "generator_type" not in table


def test_truth_file_matches_table_and_labels(synthetic_cohort):
    table = pd.read_csv(synthetic_cohort / "clinical.csv")
    truth = pd.read_csv(synthetic_cohort / "truth.csv")
    merged = table.merge(truth, on="lesion_id", suffixes=("", "_truth"))
    assert len(merged) == len(table)
    assert (merged["label"] == merged["label_truth"]).all()
    assert (merged["label"] == merged["lesion_type"].isin(MALIGNANT_LESION_TYPES)).all()
    assert truth["oracle_risk"].between(0, 1).all()


def test_image_features_follow_the_table(synthetic_cohort):
    cohort = load_cohort(synthetic_cohort)
    images = cohort.images(PreprocessConfig(), ImageCache(None), crops=False, progress=False)
    assert images.errors == []
    table = cohort.table.set_index("lesion_id").loc[images.features.index]
    size_ratio = images.features["max_axial_diameter_mm"] / table["size_mm"]
    assert size_ratio.between(0.8, 1.25).mean() > 0.9
    hu_diff = images.features["unenhanced_mean_hu"] - table["unenhanced_hu"]
    assert hu_diff.abs().median() < 6  # table value = noise-free mean + reader noise; image adds CT noise


def test_same_seed_same_cohort(tmp_path):
    config = SynthConfig(patients=2, seed=3, workers=1)
    (tmp_path / "a" / "images").mkdir(parents=True), (tmp_path / "a" / "masks").mkdir()
    (tmp_path / "b" / "images").mkdir(parents=True), (tmp_path / "b" / "masks").mkdir()
    rows_a, truth_a = synthesize_patient(1, config, tmp_path / "a")
    rows_b, truth_b = synthesize_patient(1, config, tmp_path / "b")
    assert rows_a == rows_b and truth_a == truth_b


def test_published_distributions_hold_in_a_large_draw():
    rng = np.random.default_rng(0)
    draws = [(p, draw_latents(p, rng)) for p in (draw_type(rng) for _ in range(4000))]
    by = lambda name: [l for p, l in draws if p.name == name]  # noqa: E731
    malignant_share = np.mean([p.malignant for p, _ in draws])
    assert 0.22 < malignant_share < 0.30  # surgical series, about 26%
    assert all(l["unenhanced_hu"] <= 10 for l in by("adenoma_lipid_rich"))
    assert all(l["unenhanced_hu"] > 20 for l in by("adrenocortical_carcinoma"))
    acc_sizes = np.array([l["size_mm"] for l in by("adrenocortical_carcinoma")])
    assert np.mean(acc_sizes >= 40) > 0.95  # 96 of 98 ACC >= 4 cm (EURINE-ACT)
    pheo_mn = np.array([l["plasma_metanephrines_xuln"] for l in by("pheochromocytoma")])
    other_mn = np.array([l["plasma_metanephrines_xuln"] for p, l in draws if p.name != "pheochromocytoma"])
    assert 0.88 < np.mean(pheo_mn > 1) < 0.98 and 0.92 < np.mean(other_mn <= 1) < 0.99
    history = np.array([l["history_extra_adrenal_malignancy"] for _, l in draws]) > 0.5
    metastatic = np.array([p.name == "metastasis" for p, _ in draws])
    assert 0.25 < metastatic[history].mean() < 0.45  # mass in a cancer patient: metastatic in 30-40%


def test_oracle_is_the_bayes_posterior():
    """Empirical malignancy rate among lesions with a given oracle risk matches that risk."""
    rng = np.random.default_rng(1)
    observed = frozenset({"size_mm", "unenhanced_hu"})
    labels, risks = [], []
    for _ in range(6000):
        p = draw_type(rng)
        labels.append(p.malignant)
        risks.append(oracle_risk(draw_latents(p, rng), observed))
    labels, risks = np.array(labels), np.array(risks)
    for lo, hi in [(0, 0.1), (0.1, 0.5), (0.5, 0.9), (0.9, 1.0)]:
        sel = (risks >= lo) & (risks < hi)
        assert sel.sum() > 50
        assert abs(labels[sel].mean() - risks[sel].mean()) < 0.05
    assert roc_auc_score(labels[:2000], risks[:2000]) < 0.95  # size + HU alone leave room


def test_prevalences_sum_to_one():
    assert sum(p.prevalence for p in PROFILES) == pytest.approx(1.0)


def test_existing_output_is_not_overwritten(tmp_path):
    out = tmp_path / "cohort"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserInputError, match="already exists"):
        synthesize_cohort(out, SynthConfig(patients=1), progress=False)
    assert (out / "keep.txt").read_text() == "mine"


def test_patients_without_masks_and_any_phases(tmp_path):
    """--without-masks adds patients whose rows leave mask_path empty (their reference masks go to truth_masks/);
    any phases can be written, arterial included."""
    import SimpleITK as sitk

    config = SynthConfig(patients=3, seed=4, phases=["unenhanced", "arterial", "venous"], patients_without_masks=2,
                         two_lesion_fraction=0.0, workers=1)
    out = synthesize_cohort(tmp_path / "c", config, progress=False)
    table = pd.read_csv(out / "clinical.csv")
    assert list(table["mask_path"].isna()) == [False, False, False, True, True]
    assert table["arterial_path"].notna().all()
    truth = pd.read_csv(out / "truth.csv")
    unoutlined = truth[truth["patient_id"].isin(table.loc[table["mask_path"].isna(), "patient_id"])]
    for rel in unoutlined["truth_mask_path"]:
        assert rel.startswith("truth_masks/") and sitk.GetArrayFromImage(sitk.ReadImage(str(out / rel))).any()
    report = validate_cohort(out, progress=False)
    assert report.ok and report.summary["mask_sources"] == {"manual": 3, "none": 2}
    arterial = sitk.GetArrayFromImage(sitk.ReadImage(str(out / table["arterial_path"][0])))
    unenhanced = sitk.GetArrayFromImage(sitk.ReadImage(str(out / table["unenhanced_path"][0])))
    soft_tissue = (unenhanced > 20) & (unenhanced < 60)  # aorta, kidneys, spleen, liver enhance
    assert arterial[soft_tissue].mean() > unenhanced[soft_tissue].mean() + 20


def test_gland_outlines_are_written_as_totalsegmentator_writes_them(synthetic_cohort):
    import SimpleITK as sitk

    from fusion_model.segment.scans import GLAND_LEFT, GLAND_RIGHT, gland_map, read_regions

    table = pd.read_csv(synthetic_cohort / "clinical.csv")
    regions = read_regions(synthetic_cohort / "glands", synthetic_cohort)
    assert set(regions) == set(table["patient_id"])
    for row in table.drop_duplicates("patient_id").head(6).itertuples():
        reference = sitk.ReadImage(str(synthetic_cohort / row.unenhanced_path))
        glands = gland_map(regions[row.patient_id], reference, row.patient_id)
        lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(synthetic_cohort / row.mask_path))) > 0
        spacing = np.array(reference.GetSpacing()[::-1])
        for code, side in ((GLAND_RIGHT, "right"), (GLAND_LEFT, "left")):
            gland = np.argwhere(glands == code) * spacing
            assert 1000 < len(gland) * np.prod(spacing) < 10_000  # two limbs, 40 mm high: a few mL
            if side == row.side:  # the lesion sits on its gland
                centre = np.argwhere(lesion).mean(axis=0) * spacing
                assert np.min(np.linalg.norm(gland - centre, axis=1)) < 12
        # right gland at lower x (LPS: + is the patient's left)
        assert np.argwhere(glands == GLAND_RIGHT)[:, 2].mean() < np.argwhere(glands == GLAND_LEFT)[:, 2].mean()


def test_fat_lies_inside_a_pseudocapsule():
    """A fat-containing lesion (myelolipoma) keeps a soft-tissue rim: its outline can be drawn against the
    periadrenal fat, as a reader draws it."""
    from scipy import ndimage

    from fusion_model.synthetic import phantom

    grid = phantom.Grid(origin=(-40.0, -40.0, -30.0), spacing=(1.0, 1.0, 2.5), shape=(24, 80, 80))
    latents = {"irregularity": 0.1, "texture_sd_hu": 10.0, "unenhanced_hu": 30.0, "arterial_enhancement_hu": 25.0,
               "venous_enhancement_hu": 30.0, "washout_fraction": 0.4, "necrosis": 0.0, "macroscopic_fat": 1.0,
               "calcification": 0.0}
    for seed in range(5):
        drawing = phantom.draw_lesion(grid, (0.0, 0.0, 0.0), latents, (18.0, 15.0, 16.0), 0.3, False,
                                      np.random.default_rng(seed))
        fat = drawing.mask & (drawing.hu[0] < -50)
        depth = ndimage.distance_transform_edt(drawing.mask, sampling=(2.5, 1.0, 1.0))
        assert fat.sum() > 0.2 * drawing.mask.sum()  # it is a fat-containing lesion
        assert depth[fat].min() > phantom.PSEUDOCAPSULE_MM  # and no fat voxel touches its outline
        rim = drawing.mask & (depth <= 1.0)
        assert np.median(drawing.hu[0][rim]) > 0  # the rim is soft tissue


def test_both_glands_lie_in_periadrenal_fat():
    """A reader sees a normal gland because fat surrounds it: within 2.5 mm of either gland there is no liver
    and within 4 mm mostly fat (the right gland lies medial to the liver, not inside it; its limbs' tips may touch
    the liver's bare area), over random anatomies."""
    from scipy import ndimage

    from fusion_model.synthetic import phantom

    grid = phantom.Grid(origin=(-140.0, -100.0, -40.0), spacing=(1.5, 1.5, 2.5), shape=(32, 150, 190))
    x = grid.axes()[0][0, 0]
    for seed in range(4):
        labels = phantom.anatomy_labels(grid, phantom.Anatomy.draw(np.random.default_rng(seed)))
        gland = labels == phantom.LABEL["adrenal"]
        for side_of_body in (x < 0, x >= 0):  # the patient's right lies at lower x
            one = gland & side_of_body[None, None, :]
            assert one.sum() > 0
            distance_mm = ndimage.distance_transform_edt(~one, sampling=grid.spacing[::-1])
            assert not np.any(labels[(distance_mm <= 2.5) & ~one] == phantom.LABEL["liver"])
            assert np.mean(labels[(distance_mm <= 4.0) & ~one] == phantom.LABEL["fat"]) > 0.9
