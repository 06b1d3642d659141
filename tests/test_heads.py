"""Heads on tiny arrays: guideline rules at their boundaries, calibrators, the late-fusion weight, a fitted
variant's margin and its manifest round trip, and the patient-grouped splits."""

import numpy as np
import pandas as pd
import pytest

from fusion_model.catalogue import GUIDELINE_RULES, VARIANTS
from fusion_model.config import ExperimentConfig
from fusion_model.errors import UserInputError
from fusion_model.heads.baselines import rule_scores
from fusion_model.heads.calibration import Calibrator
from fusion_model.heads.methods import best_late_weight, late_fusion_margin
from fusion_model.heads.variant import VariantFit, VariantFitter
from fusion_model.splits import inner_validation_split, patient_grouped_folds
from fusion_model.stats import calibration


# ------------------------------------------------------------------------------ guideline rules
def test_rules_at_their_boundaries_and_with_missing_inputs():
    table = pd.DataFrame({
        "unenhanced_hu": [10.0, 10.01, 9.99, np.nan, 35.0, -20.0, 35.0],
        "size_mm": [40.0, 40.01, 80.0, 50.0, np.nan, 60.0, 41.0],
    }, index=[f"L{i}" for i in range(7)])
    scores = rule_scores(table, list(GUIDELINE_RULES))
    # <= 10 HU is benign (10 exactly too); > 40 mm suspicious (40 exactly is not)
    assert scores["hu_10"].tolist()[:3] == [0.0, 1.0, 0.0]
    assert scores["size_40"].tolist()[:3] == [0.0, 1.0, 1.0]
    assert scores["hu_10_and_size_40"].tolist()[:3] == [0.0, 1.0, 0.0]
    # a missing input gives a missing call, never benign
    assert np.isnan(scores.loc["L3", "hu_10"]) and scores.loc["L3", "size_40"] == 1.0
    assert np.isnan(scores.loc["L3", "hu_10_and_size_40"]) and np.isnan(scores.loc["L4", "hu_10_and_size_40"])
    assert scores.loc["L5"].tolist() == [0.0, 1.0, 0.0]
    assert scores.loc["L6"].tolist() == [1.0, 1.0, 1.0]
    assert list(scores.index) == list(table.index)


def test_rules_without_their_columns_are_missing_and_unknown_rules_are_refused():
    scores = rule_scores(pd.DataFrame(index=["a", "b"]), ["hu_10", "size_40"])
    assert scores.isna().all().all()
    with pytest.raises(ValueError, match="unknown rule"):
        rule_scores(pd.DataFrame(index=["a"]), ["hu_20"])


# ---------------------------------------------------------------------------------- calibrators
def _miscalibrated_sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Margins whose true log-odds are 0.5 * margin - 1 (too confident and shifted)."""
    rng = np.random.default_rng(seed)
    margins = rng.normal(0, 3, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-(0.5 * margins - 1)))).astype(int)
    return margins, labels


@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
def test_calibrated_probabilities_are_calibrated_on_new_data(method):
    margins, labels = _miscalibrated_sample(20000, seed=1)
    raw = calibration(labels, 1 / (1 + np.exp(-margins)))
    assert raw["slope"] == pytest.approx(0.5, abs=0.05) and raw["intercept"] < -0.5
    calibrator = Calibrator.fit(method, margins, labels)
    new_margins, new_labels = _miscalibrated_sample(20000, seed=2)
    result = calibration(new_labels, np.clip(calibrator(new_margins), 1e-4, 1 - 1e-4))
    assert result["slope"] == pytest.approx(1.0, abs=0.08)
    assert result["intercept"] == pytest.approx(0.0, abs=0.05)


def test_sigmoid_calibrator_recovers_the_true_mapping_and_round_trips():
    margins, labels = _miscalibrated_sample(50000, seed=3)
    calibrator = Calibrator.fit("sigmoid", margins, labels)
    assert calibrator.params["slope"] == pytest.approx(0.5, abs=0.03)
    assert calibrator.params["intercept"] == pytest.approx(-1.0, abs=0.05)
    again = Calibrator.from_dict(calibrator.to_dict())
    np.testing.assert_array_equal(again(margins[:100]), calibrator(margins[:100]))


def test_isotonic_calibrator_is_monotone_and_bounded():
    margins, labels = _miscalibrated_sample(2000, seed=4)
    calibrator = Calibrator.from_dict(Calibrator.fit("isotonic", margins, labels).to_dict())
    grid = np.linspace(-50, 50, 1001)  # far beyond the training margins: clipped, never extrapolated
    p = calibrator(grid)
    assert (np.diff(p) >= 0).all() and p.min() >= 0 and p.max() <= 1


def test_calibrator_refuses_unknown_methods_and_malformed_parameters():
    with pytest.raises(ValueError, match="unknown calibration method"):
        Calibrator.fit("beta", np.zeros(4), np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="not a calibrator"):
        Calibrator.from_dict({"method": "sigmoid", "slope": 1.0})


# ---------------------------------------------------------------------------- late fusion
def test_late_fusion_weight_follows_the_informative_score():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    informative = labels * 2.0 + rng.normal(0, 1, 400)
    noise = rng.normal(0, 1, 400)
    weights = [i / 10 for i in range(11)]
    assert best_late_weight(labels, informative, noise, weights) >= 0.8
    assert best_late_weight(labels, noise, informative, weights) <= 0.2
    assert best_late_weight(labels, informative, informative, weights) == 0.0  # ties: the first candidate
    np.testing.assert_allclose(late_fusion_margin(np.array([2.0]), np.array([-1.0]), 0.25), [0.25 * 2 - 0.75])


def _tabular_problem(n: int = 160, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    groups = np.arange(n) // 2  # two lesions per patient
    y = y[groups * 2]  # both lesions of a patient share the label
    X_img = pd.DataFrame({"image_logit": y + rng.normal(0, 1.2, n), "image_pc1": rng.normal(0, 1, n)},
                         index=[f"L{i}" for i in range(n)])
    X_tab = pd.DataFrame({"size_mm": 20 + 25 * y + rng.normal(0, 10, n), "age_years": rng.normal(60, 10, n)},
                         index=X_img.index)
    return X_img, X_tab, y, groups


@pytest.mark.parametrize("method", ["fusion_head", "late_fusion"])
def test_fitted_variant_scores_round_trips_and_uses_one_mix(method, tmp_path):
    X_img, X_tab, y, groups = _tabular_problem()
    config = ExperimentConfig(xgboost={"n_estimators": 40}, fusion={"method": method})
    folds = patient_grouped_folds(y, groups, 4, 0)
    fit, oof_probability = VariantFitter(config).fit("imaging_radiological", X_img, X_tab, y, groups, folds)
    assert fit.method == method and set(fit.heads) == {"fusion", "tabular"}
    assert fit.score_oof_auc > 0.8 and len(oof_probability) == len(y)
    margin = fit.margin(X_img, X_tab)
    if method == "late_fusion":
        tabular = fit.heads["tabular"].decision_function(X_tab.to_numpy())
        np.testing.assert_allclose(margin, fit.late_fusion_weight * X_img["image_logit"].to_numpy()
                                   + (1 - fit.late_fusion_weight) * tabular, rtol=1e-6)
    np.testing.assert_allclose(fit.probability(X_img, X_tab), fit.calibrator(margin))

    def save_head(key, head):
        head.save(tmp_path / f"{key}.json")
        return f"{key}.json"

    entry = fit.to_manifest(save_head)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imaging_radiological_fusion.json",
                                                           "imaging_radiological_tabular.json"]
    loaded = VariantFit.from_manifest("imaging_radiological", entry, tmp_path, config)
    np.testing.assert_array_equal(loaded.margin(X_img, X_tab), margin)
    assert loaded.thresholds == fit.thresholds and loaded.oof_auc == fit.oof_auc


def test_logistic_head_learns_imputes_missing_values_and_explains_itself_exactly(tmp_path):
    from fusion_model.heads.logistic import LogisticHead

    X_img, X_tab, y, _ = _tabular_problem(n=300)
    X = X_tab.copy()
    X.iloc[::7, 0] = np.nan  # missing sizes
    head = LogisticHead(list(X.columns), c=1.0).fit(X.to_numpy(), y)
    margin = head.decision_function(X.to_numpy())
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, margin) > 0.85 and np.isfinite(margin).all()
    shap_values, base = head.shap_values(X)
    np.testing.assert_allclose(base + shap_values.sum(axis=1).to_numpy(), margin, atol=1e-9)
    assert (shap_values.iloc[::7, 0] == 0).all()  # a missing value contributes nothing
    head.save(tmp_path / "h.json")
    loaded = LogisticHead.load(tmp_path / "h.json", list(X.columns))
    np.testing.assert_array_equal(loaded.decision_function(X.to_numpy()), margin)
    with pytest.raises(UserInputError, match="differ from the manifest"):
        LogisticHead.load(tmp_path / "h.json", ["size_mm"])
    (tmp_path / "bad.json").write_text('{"kind": "something else"}')
    with pytest.raises(UserInputError, match="not a logistic head"):
        LogisticHead.load(tmp_path / "bad.json", list(X.columns))


def test_automatic_choice_is_nested_and_names_what_it_chose(tmp_path):
    X_img, X_tab, y, groups = _tabular_problem(n=240, seed=2)
    X_img["image_logit"] = np.random.default_rng(5).normal(0, 1, len(y))  # an image logit that knows nothing
    config = ExperimentConfig(xgboost={"n_estimators": 40}, fusion={"method": "auto", "head": "auto"})
    folds = patient_grouped_folds(y, groups, 4, 0)
    fitter = VariantFitter(config)
    assert len(fitter.candidates()) == 6
    fit, probability = fitter.fit("imaging_radiological", X_img, X_tab, y, groups, folds)
    selection = fit.selection
    assert selection["chosen"] == f"{fit.method}/{fit.learner}" and len(selection["fold_choices"]) == 4
    best = max(selection["candidates_oof_auc"].values())
    assert selection["candidates_oof_auc"][selection["chosen"]] == best
    assert fit.score_oof_auc == selection["nested_oof_auc"] and selection["nested_oof_auc"] > 0.8
    assert fit.method != "fusion_head" or fit.learner == "logistic"  # noise-only image: tabular-only or linear
    np.testing.assert_allclose(fitter.selected_margins(X_img, X_tab, y, groups, folds).shape, (len(y),))
    entry = fit.to_manifest(lambda key, head: (head.save(tmp_path / f"{key}.json"), f"{key}.json")[1])
    assert entry["selection"] == selection and {h["learner"] for h in entry["heads"].values()} == {fit.learner}
    loaded = VariantFit.from_manifest("imaging_radiological", entry, tmp_path, config)
    np.testing.assert_array_equal(loaded.margin(X_img, X_tab), fit.margin(X_img, X_tab))
    tabular = VariantFitter(ExperimentConfig(xgboost={"n_estimators": 40}, fusion={"method": "tabular_head"})).fit(
        "imaging_radiological", X_img, X_tab, y, groups, folds)[0]
    np.testing.assert_allclose(tabular.margin(X_img, X_tab), tabular.heads["tabular"].decision_function(
        X_tab.to_numpy()))


def _typed_problem(n: int = 360, seed: int = 0):
    """Lesions of four types (two benign, one malignant, one malignant in half its lesions) and some untyped;
    the type shows in two features, malignancy only through the type."""
    from fusion_model.heads.subtype import LesionTypes

    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 4, n)
    centres = np.array([[0, 0], [2, 0], [0, 2], [2, 2]], dtype=float)
    X = centres[codes] + rng.normal(0, 0.6, (n, 2))
    y = np.where(codes == 2, 1, np.where(codes == 3, rng.integers(0, 2, n), 0))
    known = codes.copy()
    known[::9] = -1  # lesion_type 'other' or missing: scored, never learnt from
    index = [f"L{i}" for i in range(n)]
    X_img = pd.DataFrame({"image_logit": rng.normal(0, 1, n)}, index=index)
    X_tab = pd.DataFrame({"size_mm": X[:, 0], "unenhanced_hu": X[:, 1]}, index=index)
    return X_img, X_tab, y, np.arange(n), LesionTypes(known, ["a", "b", "c", "d"])


def test_type_mixture_scores_malignancy_through_the_type_round_trips_and_explains_exactly(tmp_path):
    from scipy.special import softmax
    from sklearn.metrics import roc_auc_score

    from fusion_model.heads.methods import type_mixture_contributions

    X_img, X_tab, y, groups, types = _typed_problem()
    config = ExperimentConfig(xgboost={"n_estimators": 40}, fusion={"method": "type_mixture"},
                              targets=["malignancy", "lesion_type"])
    folds = patient_grouped_folds(y, groups, 4, 0)
    fitter = VariantFitter(config)
    assert fitter.candidates(types) == [("type_mixture", "xgboost")]
    fit, probability = fitter.fit("imaging_radiological", X_img, X_tab, y, groups, folds, types)
    assert fit.method == "type_mixture" and fit.learner == "xgboost_multiclass"
    assert np.isfinite(probability).all()  # untyped lesions are scored out of fold too
    assert fit.score_oof_auc > 0.85 and fit.oof_auc["type_mixture"] == fit.score_oof_auc
    rates = fit.type_mixture.rates
    assert rates[:3] == [0.0, 0.0, 1.0] and 0.3 < rates[3] < 0.7  # the training lesions' shares of malignancy
    mixed = (softmax(fit.type_margins(X_img, X_tab) / fit.type_mixture.temperature, axis=1) * rates).sum(1)
    margin = fit.margin(X_img, X_tab)
    np.testing.assert_allclose(1 / (1 + np.exp(-margin)), np.clip(mixed, 1e-6, 1 - 1e-6), rtol=1e-9)
    assert roc_auc_score(y, margin) > 0.85

    entry = fit.to_manifest(lambda key, head: (head.save(tmp_path / f"{key}.json"), f"{key}.json")[1])
    assert entry["heads"]["types"]["learner"] == "xgboost_multiclass"

    loaded = VariantFit.from_manifest("imaging_radiological", entry, tmp_path, config)
    np.testing.assert_array_equal(loaded.margin(X_img, X_tab), margin)

    X = fit.scoring_frame(X_img, X_tab)
    contributions, base = type_mixture_contributions(fit, X, margin)
    np.testing.assert_allclose(base + contributions.sum(axis=1).to_numpy(), margin, atol=1e-9)
    assert list(contributions.columns) == list(X.columns)
    # the image logit here is noise, the two features carry the type
    assert float(contributions["image_logit"].abs().mean()) < 0.2 * float(contributions["size_mm"].abs().mean())


def test_type_mixture_needs_the_lesion_types():
    with pytest.raises(ValueError, match="add lesion_type to targets"):
        ExperimentConfig(fusion={"method": "type_mixture"})
    X_img, X_tab, y, groups, types = _typed_problem(n=120)
    config = ExperimentConfig(xgboost={"n_estimators": 20}, fusion={"method": "auto", "fixed_weight": 0.5},
                              targets=["malignancy", "lesion_type"])  # a fixed late-fusion weight: one CV level less
    fitter = VariantFitter(config)
    assert ("type_mixture", "xgboost") not in fitter.candidates()
    assert fitter.candidates(types)[-1] == ("type_mixture", "xgboost")
    folds = patient_grouped_folds(y, groups, 3, 0)
    fit, _ = fitter.fit("imaging_radiological", X_img, X_tab, y, groups, folds, types)
    assert "type_mixture/xgboost" in fit.selection["candidates_oof_auc"]
    assert len(fitter.selected_margins(X_img, X_tab, y, groups, folds, types)) == len(y)


def test_imaging_only_variant_is_the_calibrated_image_logit():
    X_img, X_tab, y, groups = _tabular_problem()
    config = ExperimentConfig()
    fit, _ = VariantFitter(config).fit("imaging", X_img, X_tab[[]], y, groups, patient_grouped_folds(y, groups, 4, 0))
    assert fit.method == "image_logit" and fit.heads == {} and fit.scoring_head is None
    np.testing.assert_array_equal(fit.margin(X_img, X_tab), X_img["image_logit"].to_numpy())


def test_a_variant_without_its_head_is_refused():
    with pytest.raises(ValueError, match="needs its fusion head"):
        VariantFit("all", "fusion_head", ["image_logit"], ["size_mm"], Calibrator("sigmoid", {"slope": 1.0,
                   "intercept": 0.0}), {}, {})


def test_every_variant_draws_on_known_feature_groups():
    from fusion_model.catalogue import FEATURE_GROUPS

    for spec in VARIANTS.values():
        assert spec.groups[0] == "imaging" and set(spec.groups) <= set(FEATURE_GROUPS)


# -------------------------------------------------------------------------------------- splits
def test_patient_grouped_folds_keep_patients_whole_and_classes_balanced():
    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(60), rng.integers(1, 3, 60))
    labels = (groups % 3 == 0).astype(int)
    folds = patient_grouped_folds(labels, groups, 5, seed=0)
    assert len(folds) == 5
    seen = np.concatenate([test for _, test in folds])
    assert sorted(seen) == list(range(len(labels)))  # every lesion tested exactly once
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert 0 < labels[test].mean() < 1
    again = patient_grouped_folds(labels, groups, 5, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))


def test_splits_refuse_what_cannot_be_split():
    labels = np.array([0, 0, 0, 1, 1, 1])
    groups = np.arange(6)
    with pytest.raises(UserInputError, match="3 patients"):
        patient_grouped_folds(labels, groups, 4, 0)
    with pytest.raises(UserInputError, match="both benign and malignant"):
        patient_grouped_folds(np.zeros(6), groups, 2, 0)
    train, val = inner_validation_split(labels, groups, 0.3, 0)
    assert not set(groups[train]) & set(groups[val]) and len(val) > 0
