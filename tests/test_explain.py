"""`fusion-model explain`: faithful SHAP values and saliency, case cards, the case review page."""

import copy
import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest

from fusion_model.artifact import load_model
from fusion_model.cohort import load_cohort
from fusion_model.explain.contributions import VariantExplainer
from fusion_model.explain.names import factor_sentence, format_value
from fusion_model.explain.run import explain_cohort
from fusion_model.explain.saliency import GradCAM
from fusion_model.imaging.cache import ImageCache
from fusion_model.pipeline import lesion_data
from tests.browser import check_page
from tests.test_cli import run_cli


@pytest.fixture(scope="module")
def loaded(trained_model):
    model = load_model(trained_model["model"])
    data, errors, _ = lesion_data(load_cohort(trained_model["test_cohort"]), model.config,
                                  ImageCache(trained_model["cache"]), progress=False)
    assert errors == []
    return model, data


@pytest.mark.parametrize("method", ["fusion_head", "late_fusion"])
def test_shap_values_plus_base_equal_the_heads_margin(loaded, method):
    model, data = loaded
    model = copy.copy(model)
    model.variants_ = {name: fit if fit.method == "image_logit" else dataclasses.replace(fit, method=method)
                       for name, fit in model.variants_.items()}
    frames = model.feature_frames(data)
    margins = model.decision_variants(data, frames)
    probabilities = model.predict_variants(data, frames)
    for variant in model.variants_:
        c = VariantExplainer(model, variant)(*frames)
        total = c.base + c.shap.to_numpy().sum(axis=1)
        np.testing.assert_allclose(total, margins[variant].to_numpy(), atol=1e-4)
        np.testing.assert_allclose(c.probability, probabilities[f"p_{variant}"].to_numpy(), atol=1e-6)
        np.testing.assert_allclose(c.group_contributions().to_numpy().sum(axis=1), c.shap.to_numpy().sum(axis=1),
                                   atol=1e-9)


def test_saliency_uses_the_models_own_preprocessing(loaded):
    model, data = loaded
    gradcam = GradCAM(model.encoder_)
    logits, _ = model.encoder_.predict_outputs(data.crops[:3], tta_views=1)
    for i in range(3):
        saliency, logit = gradcam(data.crops[i])
        assert saliency.shape == data.crops.shape[2:]
        assert 0 <= saliency.min() and saliency.max() <= 1
        assert logit == pytest.approx(float(logits[i]), abs=1e-4)


def test_values_and_sentences_in_plain_language():
    assert format_value("cortisol_post_dst_ug_dl", np.nan) == "missing"
    assert format_value("hypertension", 1.0) == "yes" and format_value("sex_female", 0.0) == "male"
    sentence = factor_sentence("unenhanced_hu", 34.0, 0.8)
    assert sentence.startswith("unenhanced attenuation 34.0 HU (above 10 HU") and sentence.endswith("raised the risk")
    assert factor_sentence("size_mm", 25.0, -0.3) == "maximal diameter 25.0 mm (at or below 40 mm) lowered the risk"
    assert "not available (missing)" in factor_sentence("dhea_s_umol_l", np.nan, -0.1)


@pytest.fixture(scope="module")
def explained(trained_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    cohort = root / "cohort"
    shutil.copytree(trained_model["test_cohort"], cohort)
    table = pd.read_csv(cohort / "clinical.csv", dtype={"lesion_id": str})
    labs = ["cortisol_post_dst_ug_dl", "plasma_metanephrines_xuln", "dhea_s_umol_l", "aldosterone_renin_ratio",
            "potassium_mmol_l"]
    table.loc[0, labs] = np.nan
    table.to_csv(cohort / "clinical.csv", index=False)
    result = explain_cohort(trained_model["model"], cohort, root / "out", ImageCache(trained_model["cache"]),
                            progress=False)
    return result, table.loc[0, "lesion_id"]


def test_case_review_page_and_case_cards(explained):
    result, _ = explained
    out = result.out
    assert (out / "index.html").is_file() and (out / "shap_values.csv").is_file()
    cards = sorted((out / "cases").glob("*.html"))
    assert len(cards) == len(result.lesion_ids)
    for name in ("beeswarm.png", "mean_abs_shap.png", "beeswarm_tabular_head.png", "groups.png"):
        assert (out / "global" / name).stat().st_size > 1000
    index = (out / "index.html").read_text(encoding="utf-8")
    probabilities = [float(p) for p in pd.read_csv(out / "shap_values.csv")["probability"]]
    assert index.count('class="case"') == len(probabilities)
    shown = [int(v) for v in __import__("re").findall(r'<span class="pill \w+">(\d+)%</span>', index)]
    assert shown == sorted(shown, reverse=True)  # sorted by risk
    assert 'id="centre-filter"' in index and 'id="disagree-filter"' in index


def test_case_card_shows_missing_labs_as_missing(explained):
    result, lesion_id = explained
    card = (result.out / "cases" / f"{lesion_id}.html").read_text(encoding="utf-8")
    assert "calibrated probability" in card and "Why" in card
    assert card.count('src="data:image/png;base64,') == 2
    for label in ("cortisol after 1 mg dexamethasone", "DHEA-S", "potassium"):
        row = card[card.index(f"<td class=\"l\">{label}"):][:200]
        assert "missing" in row and ">0<" not in row and "0.00" not in row.split("</td>")[1]
    values = pd.read_csv(result.out / "shap_values.csv", dtype={"lesion_id": str}).set_index("lesion_id")
    assert np.isnan(values.loc[lesion_id, "value:potassium_mmol_l"])


def test_review_page_and_a_case_card_load_in_chromium(explained):
    result, lesion_id = explained
    page = check_page(result.out / "index.html", "explain-review.png", height=1800)
    assert page["images"] >= 4 and page["broken"] == [] and page["problems"] == [] and page["console"] == []
    card = check_page(result.out / "cases" / f"{lesion_id}.html", "explain-case.png", height=2000)
    assert card["images"] == 2 and card["broken"] == [] and card["problems"] == [] and card["console"] == []
    # the interactive viewer: every phase of the crop, the contour and the saliency, loaded from the card itself
    (viewer,) = card["viewers"]
    assert viewer["ready"] and viewer["error"] is None, viewer
    assert viewer["volumes"][-2:] == ["outline.nii.gz", "saliency.nii.gz"] and len(viewer["volumes"]) >= 3


def test_one_lesion_and_unknown_lesion_ids(trained_model, tmp_path):
    cohort = load_cohort(trained_model["test_cohort"])
    lesion_id = cohort.table["lesion_id"].iloc[3]
    ok = run_cli("explain", "--model", trained_model["model"], "--cohort", trained_model["test_cohort"],
                 "--out", tmp_path / "one", "--lesion", lesion_id, "--cache", trained_model["cache"])
    assert ok.returncode == 0, ok.stderr
    assert [p.stem for p in (tmp_path / "one" / "cases").glob("*.html")] == [lesion_id]
    bad = run_cli("explain", "--model", trained_model["model"], "--cohort", trained_model["test_cohort"],
                  "--out", tmp_path / "bad", "--lesion", lesion_id[:-1] + "9", "--cache", trained_model["cache"])
    assert bad.returncode == 2 and "unknown lesion id" in bad.stderr and "did you mean" in bad.stderr
    assert not (tmp_path / "bad").exists()
