"""Which masks a model never saw a human draw: the cohort's mask_source column reaches every output."""

import shutil

import numpy as np
import pandas as pd
import pytest

from clinical_schema import validate_clinical_table
from fusion_model.catalogue import mask_source_counts
from fusion_model.cohort import validate_cohort
from fusion_model.evaluate.metrics import EvaluationSettings
from fusion_model.evaluate.run import evaluate_model
from fusion_model.imaging.cache import ImageCache
from tests.helpers import write_cohort


def test_mask_source_spellings_are_coerced_and_unknown_ones_refused():
    table = pd.DataFrame({"patient_id": ["P1", "P2", "P3"], "lesion_id": ["a", "b", "c"], "centre": ["A"] * 3,
                          "mask_path": ["m.nii.gz"] * 3, "mask_source": ["Automatic", "reader", None]}, dtype=object)
    result = validate_clinical_table(table, ())
    assert result.ok and result.table["mask_source"].tolist()[:2] == ["auto", "manual"]
    table.loc[0, "mask_source"] = "robot"
    problems = validate_clinical_table(table, ()).problems
    assert len(problems) == 1 and "mask_source" in problems[0].message("clinical.csv")
    assert mask_source_counts(["auto", None, float("nan"), "manual"]) == {"manual": 3, "auto": 1}


def test_validate_summary_counts_mask_sources(tmp_path):
    root = write_cohort(tmp_path / "c", n_lesions=3)
    table = pd.read_csv(root / "clinical.csv")
    table["mask_source"] = ["auto", "", "manual"]
    table.to_csv(root / "clinical.csv", index=False)
    report = validate_cohort(root, progress=False)
    assert report.ok and report.summary["mask_sources"] == {"manual": 2, "auto": 1}


@pytest.fixture(scope="module")
def auto_cohort(trained_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("auto") / "cohort"
    shutil.copytree(trained_model["test_cohort"], root)
    table = pd.read_csv(root / "clinical.csv")
    table["mask_source"] = np.where(np.arange(len(table)) % 2 == 0, "auto", "manual")
    table.to_csv(root / "clinical.csv", index=False)
    return root, table


def test_evaluate_states_the_mask_source_and_compares_the_two(trained_model, auto_cohort, tmp_path):
    root, table = auto_cohort
    result = evaluate_model(trained_model["model"], root, tmp_path / "report", ImageCache(trained_model["cache"]),
                            EvaluationSettings(bootstrap_resamples=200), progress=False)
    automatic = int((table["mask_source"] == "auto").sum())
    assert result.metrics["cohort"]["mask_sources"] == {"manual": len(table) - automatic, "auto": automatic}
    assert {r["group"] for r in result.metrics["subgroups"] if r["by"] == "mask"} == {"manual", "auto"}
    html = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert f"{automatic} automatic (a segmentation model)" in html and "outlined by a segmentation model" in html
    predictions = pd.read_csv(tmp_path / "report" / "predictions.csv")
    assert set(predictions["mask_source"]) == {"manual", "auto"}


def test_predict_and_the_case_card_name_the_mask_source(trained_model, auto_cohort, tmp_path):
    from fusion_model import pipeline
    from fusion_model.explain.run import explain_cohort

    root, table = auto_cohort
    predictions, _ = pipeline.predict(trained_model["model"], root, tmp_path / "p.csv",
                                      ImageCache(trained_model["cache"]), progress=False)
    assert (predictions["mask_source"] == table.set_index("lesion_id").loc[predictions.index, "mask_source"]).all()
    lesion = table.loc[0, "lesion_id"]
    result = explain_cohort(trained_model["model"], root, tmp_path / "explain", ImageCache(trained_model["cache"]),
                            lesion_ids=[lesion], progress=False)
    card = next((result.out / "cases").glob("*.html")).read_text(encoding="utf-8")
    assert 'id="mask-source">automatic (a segmentation model)' in card
