"""Lesion-type heads: the generator's exact type posterior, classes (rare types refused or merged), the
multi-class head, its scoring against independent computations, and train / predict / evaluate end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score


def test_the_generator_writes_the_exact_type_posterior(synthetic_cohort):
    from fusion_model.heads.subtype import SUBTYPES

    truth = pd.read_csv(synthetic_cohort / "truth.csv")
    columns = [f"oracle_type_{t}" for t in SUBTYPES]
    assert np.allclose(truth[columns].sum(axis=1), 1.0)
    table = pd.read_csv(synthetic_cohort / "clinical.csv").set_index("lesion_id")
    named = truth[truth["lesion_id"].map(table["lesion_type"]).isin(SUBTYPES)]
    guessed = named[columns].to_numpy().argmax(axis=1)
    actual = named["lesion_id"].map(table["lesion_type"]).map({t: i for i, t in enumerate(SUBTYPES)})
    assert np.mean(guessed == actual.to_numpy()) > 0.6


def test_rare_types_are_refused_naming_them_or_merged():
    from fusion_model.errors import UserInputError
    from fusion_model.heads.subtype import RARE, subtype_classes

    types = pd.Series(["adenoma"] * 20 + ["metastasis"] * 12 + ["cyst"] + ["myelolipoma"] * 2 + ["other", None])
    with pytest.raises(UserInputError, match=r"cyst \(1 lesion\), myelolipoma \(2 lesions\).*merge_rare"):
        subtype_classes(types, 10, merge_rare=False)
    classes = subtype_classes(types, 10, merge_rare=True)
    assert classes.classes == ["adenoma", "metastasis", RARE] and classes.merged == ["cyst", "myelolipoma"]
    assert classes.left_out == {"type missing": 1, "type other": 1}
    assert classes.encode(types).tolist()[-5:] == [2, 2, 2, -1, -1]
    with pytest.raises(UserInputError, match="at least two"):
        subtype_classes(pd.Series(["adenoma"] * 30 + ["other"] * 5), 10, merge_rare=True)


def test_targets_are_checked():
    from fusion_model.config import ExperimentConfig

    assert ExperimentConfig().targets == ["malignancy"]
    assert ExperimentConfig(targets=["lesion_type", "malignancy"]).targets == ["malignancy", "lesion_type"]
    with pytest.raises(ValueError, match="malignancy is the primary target"):
        ExperimentConfig(targets=["lesion_type"])
    with pytest.raises(ValueError, match="unknown target"):
        ExperimentConfig(targets=["malignancy", "grade"])


def test_the_multiclass_head_learns_and_is_calibrated():
    from fusion_model.config import ExperimentConfig
    from fusion_model.heads.subtype import fit_subtype, one_vs_rest_auc
    from fusion_model.splits import patient_grouped_folds

    rng = np.random.default_rng(0)
    n = 400
    y = rng.choice(4, n, p=[0.4, 0.3, 0.2, 0.1])
    y[:20] = -1  # not a subtype lesion
    centres = np.array([[0, 0], [2, 0], [0, 2], [2, 2]])
    X = pd.DataFrame(centres[np.maximum(y, 0)] + rng.normal(0, 0.9, (n, 2)), columns=["image_logit", "size"])
    folds = patient_grouped_folds((y == 1).astype(int), np.arange(n), 5, 0)
    fit, oof = fit_subtype(ExperimentConfig(), "all", X, y, folds, ["a", "b", "c", "d"])
    assert np.isnan(oof[:20]).all() and np.allclose(oof[20:].sum(axis=1), 1.0)
    auc = one_vs_rest_auc(y, oof, ["a", "b", "c", "d"])
    assert auc["macro"] > 0.85
    assert auc["per_class"]["b"] == pytest.approx(roc_auc_score(y[20:] == 1, oof[20:, 1]))
    assert 0.05 <= fit.temperature <= 20
    # calibrated: the mean probability of each class is near its frequency
    assert np.allclose(oof[20:].mean(axis=0), np.bincount(y[20:]) / (n - 20), atol=0.05)
    new = fit.probabilities(X[["image_logit"]], X[["size"]])
    assert list(new.columns) == ["p_type_a", "p_type_b", "p_type_c", "p_type_d"]


def test_subtype_scores_match_hand_computation():
    from fusion_model.evaluate.subtype import score_types

    y = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    p = np.array([[.7, .2, .1], [.4, .5, .1], [.2, .7, .1], [.3, .3, .4], [.1, .1, .8], [.2, .2, .6], [.5, .2, .3],
                  [.6, .3, .1]])
    s = score_types(y, p, ["a", "b", "c"])
    predicted = p.argmax(axis=1)
    assert s["top1_accuracy"] == pytest.approx(np.mean(predicted == y))
    assert s["brier"] == pytest.approx(np.mean(((p - np.eye(3)[y]) ** 2).sum(axis=1)))
    expected = np.zeros((3, 3), int)
    for t, q in zip(y, predicted):
        expected[t, q] += 1
    assert s["confusion"]["counts"] == expected.tolist()
    for k, c in enumerate("abc"):
        assert s["per_class"][c]["auc"] == pytest.approx(roc_auc_score(y == k, p[:, k]))
        assert s["per_class"][c]["sensitivity"] == pytest.approx(expected[k, k] / expected[k].sum())
        assert s["per_class"][c]["ppv"] == pytest.approx(expected[k, k] / expected[:, k].sum())
    assert s["balanced_accuracy"] == pytest.approx(np.mean([expected[k, k] / expected[k].sum() for k in range(3)]))
    assert s["macro_auc"] == pytest.approx(np.mean([roc_auc_score(y == k, p[:, k]) for k in range(3)]))


def test_subtype_heads_through_train_predict_and_evaluate(tmp_path):
    import yaml

    from fusion_model import pipeline
    from fusion_model.artifact import load_model
    from fusion_model.config import SynthConfig, load_experiment
    from fusion_model.evaluate.run import evaluate_model
    from fusion_model.imaging.cache import ImageCache
    from fusion_model.synthetic.generate import synthesize_cohort
    from tests.conftest import TINY_EXPERIMENT
    from tests.test_cli import run_cli

    cohort = synthesize_cohort(tmp_path / "c", SynthConfig(patients=90, seed=41), progress=False)
    external = synthesize_cohort(tmp_path / "e", SynthConfig(patients=40, seed=42), progress=False)
    config = tmp_path / "x.yaml"
    config.write_text(yaml.safe_dump({**TINY_EXPERIMENT, "targets": ["malignancy", "lesion_type"],
                                      "subtype": {"min_lesions": 6, "merge_rare": True}, "compare_phases": True}))
    cache = ImageCache(tmp_path / "cache")
    run = pipeline.train(load_experiment(config), cohort, tmp_path / "m", cache, progress=False)
    info = run.model.subtype_info_
    assert "adenoma" in info.classes and info.lesion_types.left_out["type other"] >= 0
    assert set(info.oof_auc) == set(run.model.variants_)
    assert info.oof_auc["all"]["macro"] > 0.7  # real learning: size, attenuation, labs tell types apart
    manifest = json.loads((tmp_path / "m/manifest.json").read_text())
    assert set(manifest["subtypes"]) == set(run.model.variants_)

    result = run_cli("predict", "--model", tmp_path / "m", "--cohort", external, "--out", tmp_path / "p.csv",
                     "--all-variants")
    assert result.returncode == 0, result.stderr
    predictions = pd.read_csv(tmp_path / "p.csv").set_index("lesion_id")
    type_columns = [f"p_type_{c}" for c in info.classes]
    assert np.allclose(predictions[type_columns].sum(axis=1), 1.0)
    assert (predictions["most_likely_type"] == predictions[type_columns].idxmax(axis=1).str[7:]).all()
    assert np.allclose(predictions["most_likely_type_probability"], predictions[type_columns].max(axis=1))
    assert f"imaging_{type_columns[0]}" in predictions
    # the reloaded artifact gives the probabilities the fitted model gives
    reloaded = load_model(tmp_path / "m")
    data, _, _ = pipeline.lesion_data(pipeline.load_cohort(external), reloaded.config, cache, progress=False)
    fresh = run.model.predict_types(data)["all"]
    assert np.allclose(reloaded.predict_types(data)["all"].to_numpy(), fresh.to_numpy())
    assert np.allclose(predictions.loc[fresh.index, type_columns].to_numpy(), fresh.to_numpy(), atol=1e-6)

    evaluation = evaluate_model(tmp_path / "m", external, tmp_path / "ev", cache, progress=False)
    subtype = json.loads((tmp_path / "ev/metrics.json").read_text())["subtype"]
    assert subtype["classes"] == info.classes and set(subtype["variants"]) == set(run.model.variants_)
    assert subtype["oracle"]["macro_auc"] > 0.8
    primary = subtype["variants"]["all"]
    assert sum(map(sum, primary["confusion"]["counts"])) == subtype["lesions"]
    assert "Lesion type" in (tmp_path / "ev/report.html").read_text()
    assert "confusion.png" in evaluation.files

    # per phase: the same experiment on each phase alone, against all phases, on the same lesions
    from fusion_model.artifact import load_phase_models

    phase_models = load_phase_models(tmp_path / "m")
    assert set(phase_models) == {"unenhanced", "venous"}
    assert phase_models["venous"].channels_ == ["venous", "mask"] and reloaded.channels_ == ["unenhanced", "venous", "mask"]
    assert "unenhanced_mean_hu" not in phase_models["venous"].tabular_groups_["radiological"]
    assert "venous_enhancement_hu" not in phase_models["venous"].tabular_groups_["radiological"]
    assert "unenhanced_mean_hu" in phase_models["unenhanced"].tabular_groups_["radiological"]
    comparison = evaluation.metrics["phase_comparison"]
    assert comparison["reference"] == "unenhanced+venous" and comparison["variant"] == "all"
    rows = {r["name"]: r for r in comparison["sets"]}
    assert set(rows) == {"unenhanced", "venous", "unenhanced+venous"}
    assert rows["unenhanced+venous"]["malignancy"]["auc"] == pytest.approx(
        evaluation.metrics["models"]["all"]["auc"]["value"])
    assert rows["unenhanced+venous"]["subtype"]["macro_auc"] == pytest.approx(primary["macro_auc"])
    for name in ("unenhanced", "venous"):
        test = rows[name]["malignancy"]["vs_reference"]
        assert 0 <= test["p_value"] <= 1 and test["difference_ci95"][0] < test["difference"] < test["difference_ci95"][1]
        macro = rows[name]["subtype"]
        low, high = macro["macro_auc_ci95"]
        assert low <= macro["macro_auc"] <= high and set(macro["per_class"]) == set(info.classes)
        # the phase model scores what it scores on its own phase view of the same lesions
        view = data.with_phases([name])
        expected = phase_models[name].predict_variants(view)["p_all"]
        labels = data.table.loc[expected.index, "label"].astype(int)
        assert roc_auc_score(labels, expected) == pytest.approx(rows[name]["malignancy"]["auc"])
    assert "Per phase" in (tmp_path / "ev/report.html").read_text()

    # the type heads on segmenter components (segment evaluate --risk-model): with the true outlines as the
    # components, each scored as a lesion whose size and attenuation are measured on its mask
    import SimpleITK as sitk

    from fusion_model.segment.classify import ALL_PHASES, ComponentCohort, component_id
    from fusion_model.segment.matching import Component
    from fusion_model.segment.scans import cohort_scans

    external_cohort = pipeline.load_cohort(external)
    components = ComponentCohort(external_cohort, tmp_path / "components")
    expected_ids = {}
    for scan in cohort_scans(external_cohort)[:12]:
        reference = sitk.ReadImage(str(scan.lesions[0].mask_path))
        labels = sitk.GetArrayFromImage(reference).astype(np.uint16)
        found = [Component(int(k), 1.0, 1.0, (0.0, 0.0, 0.0), "left") for k in np.unique(labels) if k]
        components.add_scan(scan, labels, reference, found)
        for k, lesion in enumerate(scan.lesions, start=1):
            expected_ids[component_id(scan.key, lesion.mask_label or k)] = lesion.lesion_id
    by_set, unreadable = components.type_probabilities(tmp_path / "m", cache)
    assert unreadable == 0 and set(by_set) == {ALL_PHASES, "unenhanced", "venous"}
    scored = by_set[ALL_PHASES].loc[list(expected_ids)]
    truth = fresh.loc[list(expected_ids.values())]
    assert list(scored.columns) == [c.removeprefix("p_type_") for c in truth.columns]
    assert np.allclose(scored.sum(axis=1), 1.0)
    # the same lesions: the most likely type agrees for nearly all (size / HU measured, not read from the table)
    assert (scored.to_numpy().argmax(axis=1) == truth.to_numpy().argmax(axis=1)).mean() >= 0.8

    # explain: type probabilities on the card, SHAP of the most likely type, additive per class
    from fusion_model.explain.contributions import SubtypeExplainer
    from fusion_model.explain.run import explain_cohort

    frames = reloaded.feature_frames(data)
    types = SubtypeExplainer(reloaded, "all")(*frames)
    for k, c in enumerate(types.classes):
        assert np.allclose(types.base[c] + types.shap[c].sum(axis=1).to_numpy(), types.margins[:, k], atol=1e-4)
    assert np.allclose(types.probabilities, fresh.to_numpy(), atol=1e-6)
    first = data.lesion_ids[0]
    explained = explain_cohort(tmp_path / "m", external, tmp_path / "ex", cache, lesion_ids=[first], progress=False)
    card = (tmp_path / "ex" / next(f for f in explained.files if f.startswith("cases/"))).read_text()
    best = types.classes[int(types.probabilities[0].argmax())].replace("_", " ")
    assert "Which kind of lesion" in card and f"Most likely <b>{best}</b>" in card
    assert f"made {best} " in card


def test_predict_without_subtype_heads_says_why(trained_model, tmp_path):
    from tests.test_cli import run_cli

    result = run_cli("predict", "--model", trained_model["model"], "--cohort", trained_model["test_cohort"],
                     "--out", tmp_path / "p.csv")
    assert result.returncode == 0, result.stderr
    assert "no subtype heads" in result.stdout
    assert not any(c.startswith("p_type_") for c in pd.read_csv(tmp_path / "p.csv").columns)
