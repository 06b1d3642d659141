"""`fusion-model evaluate`: the report of a model on an external cohort, prediction files, bad input."""

import json

import numpy as np
import pandas as pd
import pytest

from fusion_model.errors import UserInputError
from fusion_model.evaluate.metrics import METRICS_FORMAT_VERSION, EvaluationSettings
from fusion_model.evaluate.run import evaluate_model
from fusion_model.imaging.cache import ImageCache
from tests.browser import check_page
from tests.test_cli import run_cli

FAST = EvaluationSettings(bootstrap_resamples=400)


@pytest.fixture(scope="module")
def report(trained_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate") / "report"
    result = evaluate_model(trained_model["model"], trained_model["test_cohort"], out,
                            ImageCache(trained_model["cache"]), EvaluationSettings(), progress=False)
    return result


def test_report_files_and_metrics_layout(report):
    out = report.out
    for name in ("report.html", "metrics.json", "predictions.csv", "roc.png", "calibration.png",
                 "decision_curve.png", "subgroups.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not list(out.parent.glob(".*partial"))
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["format"] == "fusion-model-metrics" and metrics["format_version"] == METRICS_FORMAT_VERSION
    assert metrics["settings"]["bootstrap_resamples"] == 2000
    models = metrics["models"]
    assert set(models) == {"imaging", "imaging_radiological", "imaging_clinical", "all",
                           "hu_10", "size_40", "hu_10_and_size_40"}
    for name, m in models.items():
        if m["auc"] is None:
            continue
        auc = m["auc"]
        assert auc["delong_ci"][0] <= auc["value"] <= auc["delong_ci"][1]
        assert auc["bootstrap_ci"][0] <= auc["value"] <= auc["bootstrap_ci"][1]
        for point in m["operating_points"]:
            c = point["confusion"]
            assert c["tp"] + c["fp"] + c["tn"] + c["fn"] == m["n"]
            for key in ("sensitivity", "specificity", "accuracy", "ppv", "npv", "lr_positive", "lr_negative"):
                assert key in point
    all_ = models["all"]
    assert all_["auc"]["value"] > 0.7  # real learning on an unseen cohort
    assert [p["key"] for p in all_["operating_points"][:3]] == ["youden", "sensitivity_90", "sensitivity_95"]
    assert all_["calibration"]["brier"] < 0.25 and models["hu_10"]["calibration"] is None
    assert len(all_["decision_curve"]["net_benefit"]) == len(metrics["decision_curve_reference"]["treat_all"])
    pairs = {(c["a"], c["b"]) for c in metrics["comparisons"]}
    assert ("imaging", "all") in pairs and ("all", "hu_10") in pairs
    groups = {(s["by"], s["group"]) for s in metrics["subgroups"]}
    assert {("centre", "centre_a"), ("size", "<= 40 mm"), ("size", "> 40 mm"), ("unenhanced HU", "> 10 HU")} <= groups
    assert any(s["small"] and "flag" in s for s in metrics["subgroups"])
    one_class = [s for s in metrics["subgroups"] if s["by"] == "lesion type" and s["malignant"] == 0]
    assert one_class and one_class[0]["models"]["all"]["auc"] is None
    assert "only benign" in one_class[0]["models"]["all"]["note"]
    assert metrics["oracle"]["auc"]["value"] > 0.8
    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == metrics["cohort"]["lesions"] and predictions["p_all"].between(0, 1).all()


def test_report_html_is_self_contained_with_fingerprints(report):
    html = (report.out / "report.html").read_text(encoding="utf-8")
    metrics = report.metrics
    assert metrics["source"]["cohort_fingerprint"] in html and metrics["source"]["model_manifest_sha256"] in html
    assert "src=\"data:image/png;base64," in html and "http://" not in html and "https://" not in html
    for heading in ("Source of data and participants", "Outcome", "Predictors", "Analysis", "Model comparisons",
                    "Subgroups", "limitations", "DeLong", "Wilson"):
        assert heading in html


def test_report_opens_in_headless_chromium(report):
    result = check_page(report.out / "report.html", "evaluate-report.png")
    assert result["images"] >= 4 and result["broken"] == []
    assert result["problems"] == [] and result["console"] == []
    assert result["screenshot"].stat().st_size > 10_000


def _prediction_csvs(report, tmp_path):
    predictions = pd.read_csv(report.out / "predictions.csv", dtype={"lesion_id": str})
    a = predictions[["lesion_id", "label", "p_all"]].rename(columns={"p_all": "score"})
    b = predictions[["lesion_id", "label", "p_imaging"]].rename(columns={"p_imaging": "probability"})
    a.to_csv(tmp_path / "fused.csv", index=False)
    b.to_csv(tmp_path / "imaging.csv", index=False)
    return a, b


def test_evaluate_prediction_files_of_two_models(report, tmp_path):
    _prediction_csvs(report, tmp_path)
    out = tmp_path / "cmp"
    result = run_cli("evaluate", "--predictions", tmp_path / "fused.csv", tmp_path / "imaging.csv", "--out", out,
                     "--bootstrap", 500)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert set(metrics["models"]) == {"fused", "imaging"}
    assert metrics["models"]["fused"]["auc"]["value"] == pytest.approx(report.metrics["models"]["all"]["auc"]["value"])
    assert metrics["comparisons"][0]["a"] == "fused" and 0 <= metrics["comparisons"][0]["p_value"] <= 1
    assert (out / "report.html").is_file() and "fused" in result.stdout


@pytest.mark.parametrize("breakage, message", [
    ("missing_label", "no label"),
    ("unknown_lesion", "unknown lesion ids"),
    ("nan_score", "empty or NaN in rows"),
    ("text_score", "is not a number"),
    ("single_class", "only benign lesions"),
])
def test_bad_prediction_files_are_refused_clearly(report, tmp_path, breakage, message):
    a, b = _prediction_csvs(report, tmp_path)
    if breakage == "missing_label":
        a.loc[2, "label"] = np.nan
        b.loc[2, "label"] = np.nan
    elif breakage == "unknown_lesion":
        b = pd.concat([b, pd.DataFrame([{"lesion_id": "NOPE-1", "label": 1, "probability": 0.5}])])
    elif breakage == "nan_score":
        a.loc[3, "score"] = np.nan
    elif breakage == "text_score":
        a["score"] = a["score"].astype(object)
        a.loc[1, "score"] = "high"
    elif breakage == "single_class":
        a["label"] = 0
        b["label"] = 0
    a.to_csv(tmp_path / "fused.csv", index=False)
    b.to_csv(tmp_path / "imaging.csv", index=False)
    out = tmp_path / "bad"
    result = run_cli("evaluate", "--predictions", tmp_path / "fused.csv", tmp_path / "imaging.csv", "--out", out)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_model_evaluation_refuses_unlabelled_cohort(trained_model, tmp_path):
    import shutil

    cohort = tmp_path / "unlabelled"
    shutil.copytree(trained_model["test_cohort"], cohort)
    table = pd.read_csv(cohort / "clinical.csv")
    table.loc[0, "label"] = np.nan
    table.to_csv(cohort / "clinical.csv", index=False)
    with pytest.raises(UserInputError, match="label"):
        evaluate_model(trained_model["model"], cohort, tmp_path / "r", ImageCache(trained_model["cache"]), FAST,
                       progress=False)
    assert not (tmp_path / "r").exists()


def test_evaluate_one_centre_and_refuse_an_unknown_one(trained_model, tmp_path):
    result = evaluate_model(trained_model["model"], trained_model["test_cohort"], tmp_path / "a",
                            ImageCache(trained_model["cache"]), FAST, progress=False, centre="centre_a")
    assert list(result.metrics["cohort"]["centres"]) == ["centre_a"]
    assert "centre centre_a" in result.metrics["source"]["cohort_name"]
    with pytest.raises(UserInputError, match="centre 'centre_x' is not in .*centres: \\['centre_a'"):
        evaluate_model(trained_model["model"], trained_model["test_cohort"], tmp_path / "x",
                       ImageCache(trained_model["cache"]), FAST, progress=False, centre="centre_x")
    assert not (tmp_path / "x").exists()


def test_degenerate_models_get_null_figures_with_notes_in_metrics_and_report(tmp_path):
    """Perfect separation, a constant score and two perfect models: no zero-width interval, no p = 1."""
    from fusion_model.evaluate.run import evaluate_predictions

    labels = np.repeat([0, 1], 20)
    frame = pd.DataFrame({"lesion_id": [f"L{i}" for i in range(40)], "label": labels,
                          "p_perfect": np.where(labels == 1, 0.8, 0.2) + np.linspace(0, 0.1, 40),
                          "p_perfect_too": np.where(labels == 1, 0.9, 0.1),
                          "p_constant": 0.3,
                          "p_ordinary": np.clip(0.3 + 0.35 * labels + np.sin(np.arange(40)) * 0.3, 0.01, 0.99)})
    frame.to_csv(tmp_path / "scores.csv", index=False)
    result = evaluate_predictions([tmp_path / "scores.csv"], tmp_path / "report", settings=FAST, progress=False)
    models = result.metrics["models"]
    for name in ("perfect", "perfect_too", "constant"):
        auc = models[name]["auc"]
        assert auc["ci"] is None and auc["delong_ci"] is None and auc["bootstrap_ci"] is None and auc["note"]
    assert models["perfect"]["calibration"]["slope"] is None and "separate" in models["perfect"]["calibration"]["note"]
    assert models["constant"]["calibration"]["slope"] is None
    ordinary = models["ordinary"]
    assert ordinary["auc"]["ci"] == ordinary["auc"]["delong_logit_ci"] and ordinary["calibration"]["slope_ci"]
    assert len(ordinary["decision_curve"]["net_benefit_ci"]["low"]) == len(ordinary["decision_curve"]["thresholds"])
    pair = next(c for c in result.metrics["comparisons"] if {c["a"], c["b"]} == {"perfect", "perfect_too"})
    assert pair["p_value"] is None and pair["ci"] is None and "perfectly" in pair["note"]
    assert "no subgroups by centre, size" in result.metrics["subgroups_note"]
    html = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert "separate the classes perfectly" in html and "no subgroups by" in html.lower()
    assert "logit-transformed" in html and "statsmodels" in html


def _predict_like_file(path, lesion_types=True, variant="all"):
    """A file shaped like predict's CSV for a model with lesion-type heads: every variant's p_, the primary
    variant's p_type_CLASS columns (an informative softmax), most_likely_type."""
    rng = np.random.default_rng(2)
    classes = ["adenoma", "metastasis", "pheochromocytoma", "rare"]
    truth = rng.choice(["adenoma", "metastasis", "pheochromocytoma", "ACC", "cyst"], 90,
                       p=[0.4, 0.25, 0.2, 0.1, 0.05])
    label = np.isin(truth, ["metastasis", "ACC"]).astype(int)
    index = {c: k for k, c in enumerate(classes)}
    margins = rng.normal(0, 1, (90, 4))
    margins[np.arange(90), [index.get(t, 3) for t in truth]] += 2.5
    p_type = np.exp(margins) / np.exp(margins).sum(axis=1, keepdims=True)
    frame = pd.DataFrame({"lesion_id": [f"P{i:03d}-L1" for i in range(90)], "patient_id": [f"P{i:03d}" for i in
                                                                                          range(90)],
                          "label": label, "probability": np.clip(0.2 + 0.5 * label + rng.normal(0, 0.2, 90), 0.01,
                                                                 0.99), "variant": variant})
    frame["p_imaging"] = np.clip(0.3 + 0.3 * label + rng.normal(0, 0.25, 90), 0.01, 0.99)
    frame["p_all"] = frame["probability"]
    if lesion_types:
        frame["lesion_type"] = truth
    for k, c in enumerate(classes):
        frame[f"p_type_{c}"] = p_type[:, k]
    frame["most_likely_type"] = [classes[k] for k in p_type.argmax(axis=1)]
    frame.to_csv(path, index=False)
    return frame


def test_lesion_type_columns_get_the_lesion_type_section_never_a_malignancy_row(tmp_path):
    from fusion_model.evaluate.run import evaluate_predictions

    _predict_like_file(tmp_path / "predictions.csv")
    result = evaluate_predictions([tmp_path / "predictions.csv"], tmp_path / "report", settings=FAST,
                                  progress=False)
    assert sorted(result.metrics["models"]) == ["all", "imaging"]  # no p_type_* scored as a risk
    assert result.metrics["primary_model"] == "all"  # the file's 'variant' column
    subtype = result.metrics["subtype"]
    assert subtype["classes"] == ["adenoma", "metastasis", "pheochromocytoma", "rare"]
    assert subtype["merged_into_rare"] and "adrenocortical_carcinoma" in subtype["merged_into_rare"]
    assert list(subtype["variants"]) == ["all"] and subtype["variants"]["all"]["macro_auc"] > 0.8
    assert subtype["lesions"] == 90 and sum(subtype["left_out"].values()) == 0  # ACC and cyst count as 'rare'
    html = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert "Lesion type" in html and "confusion.png" in result.files


def test_lesion_type_columns_without_types_are_refused_in_one_line(tmp_path):
    _predict_like_file(tmp_path / "predictions.csv", lesion_types=False)
    out = tmp_path / "report"
    result = run_cli("evaluate", "--predictions", tmp_path / "predictions.csv", "--out", out)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "lesion-type probabilities, not malignancy risks" in result.stderr and "lesion_type" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
    frame = _predict_like_file(tmp_path / "broken.csv")
    frame["p_type_adenoma"] = frame["p_type_adenoma"] * 0.5
    frame.to_csv(tmp_path / "broken.csv", index=False)
    result = run_cli("evaluate", "--predictions", tmp_path / "broken.csv", "--out", out)
    assert result.returncode == 2 and "row 2 (lesion P000-L1)" in result.stderr and "not 1" in result.stderr


def test_small_lesion_types_are_flagged_and_the_macro_auc_has_its_interval(tmp_path):
    """A type with 3 evaluated lesions is named wherever its AUC is shown; the macro AUC carries a bootstrap CI
    in metrics.json, the report, the limitations and the CLI line."""
    from fusion_model.evaluate.run import evaluate_predictions

    frame = _predict_like_file(tmp_path / "predictions.csv")
    pheo = np.flatnonzero(frame["lesion_type"] == "pheochromocytoma")
    frame.loc[pheo[3:], "lesion_type"] = "adenoma"  # 3 pheochromocytomas left
    frame.to_csv(tmp_path / "predictions.csv", index=False)
    result = evaluate_predictions([tmp_path / "predictions.csv"], tmp_path / "report", settings=FAST,
                                  progress=False)
    block = result.metrics["subtype"]["variants"]["all"]
    assert block["small_classes"] == {"pheochromocytoma": 3}
    assert block["per_class"]["pheochromocytoma"]["small"] and not block["per_class"]["adenoma"]["small"]
    low, high = block["macro_auc_ci95"]
    assert low < block["macro_auc"] < high and high - low > 0.02
    html = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert "pheochromocytoma <span class=\"muted\">(small)</span>" in html
    assert "fewer than 10 evaluated lesions (pheochromocytoma 3)" in html
    cli = run_cli("evaluate", "--predictions", tmp_path / "predictions.csv", "--out", tmp_path / "cli")
    assert cli.returncode == 0, cli.stderr
    assert f"all {block['macro_auc']:.3f} ({low:.3f}-{high:.3f})" in cli.stdout
    assert "fewer than 10 lesions, one lesion moves the AUC): pheochromocytoma (3)" in cli.stdout


def test_an_existing_report_folder_is_refused_before_the_work(tmp_path, monkeypatch):
    from fusion_model.evaluate import run as evaluate_run

    _predict_like_file(tmp_path / "predictions.csv")
    out = tmp_path / "report"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    def no_work(*args, **kwargs):
        raise AssertionError("the metrics were computed before the refusal")

    monkeypatch.setattr(evaluate_run, "compute_metrics", no_work)
    with pytest.raises(UserInputError, match="already exists and is not empty"):
        evaluate_run.evaluate_predictions([tmp_path / "predictions.csv"], out, settings=FAST, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_lesions_without_a_mask_are_counted_and_scored_as_missed(trained_model, tmp_path):
    """An automatic-mask cohort where segment predict found nothing for some lesions: the report counts them by
    label and type and gives each model's AUC with them counted as missed."""
    import shutil

    from fusion_model.stats import auc_mann_whitney

    cohort = tmp_path / "auto"
    shutil.copytree(trained_model["test_cohort"], cohort)
    table = pd.read_csv(cohort / "clinical.csv")
    malignant = table.index[table["label"] == 1][:2]
    benign = table.index[table["label"] == 0][:1]
    unscored = table.loc[[*malignant, *benign], "lesion_id"].tolist()
    table.loc[[*malignant, *benign], ["mask_path", "mask_label"]] = None
    table["mask_source"] = np.where(table["mask_path"].isna(), None, "auto")
    table.to_csv(cohort / "clinical.csv", index=False)
    result = evaluate_model(trained_model["model"], cohort, tmp_path / "r", ImageCache(trained_model["cache"]), FAST,
                            progress=False)
    block = result.metrics["unscored"]
    assert block["count"] == 3 and block["without_automatic_mask"] == 3
    assert block["by_label"] == {"benign": 1, "malignant": 2}
    types = table.set_index("lesion_id").loc[unscored, "lesion_type"].value_counts()
    assert block["by_lesion_type"] == {k: int(v) for k, v in sorted(types.items())}
    predictions = pd.read_csv(tmp_path / "r/predictions.csv")
    assert len(predictions) == len(table) - 3
    for name, figures in block["as_missed"].items():
        scores = predictions[f"p_{name}"].to_numpy()
        labels = np.concatenate([predictions["label"].to_numpy(), [1, 1, 0]])
        expected = auc_mann_whitney(labels, np.concatenate([scores, [-1.0, -1.0, -1.0]]))
        assert figures["auc_all_unscored_missed"] == pytest.approx(expected)
        assert figures["auc_scored"] == pytest.approx(auc_mann_whitney(predictions["label"], scores))
        assert figures["lesions_all"] == len(table)
    html = " ".join((tmp_path / "r/report.html").read_text(encoding="utf-8").split())
    assert "3 lesion(s) have no score</b> (3 without a mask" in html and "Counted as missed" in html
