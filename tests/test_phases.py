"""The per-phase comparison's parts: which features a phase alone shows, the phase view of lesion data, the
comparison table's statistics, and a single-phase cohort refused for compare_phases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from fusion_model.evaluate.phases import phase_comparison
from fusion_model.heads.subtype import bootstrap_macro_auc
from fusion_model.features.radiological import features_seen_with, phases_needed
from fusion_model.model import LesionData

FEATURES = ["max_axial_diameter_mm", "volume_ml", "unenhanced_mean_hu", "unenhanced_sd_hu", "arterial_mean_hu",
            "venous_mean_hu", "delayed_mean_hu", "arterial_enhancement_hu", "venous_enhancement_hu",
            "absolute_washout_percent", "relative_washout_percent"]


def test_features_computed_from_other_phases_are_not_seen():
    assert phases_needed("volume_ml") == set()
    assert phases_needed("venous_enhancement_hu") == {"venous", "unenhanced"}
    assert features_seen_with(FEATURES, ["venous"]) == ["max_axial_diameter_mm", "volume_ml", "venous_mean_hu"]
    assert features_seen_with(FEATURES, ["unenhanced", "venous"]) == [
        "max_axial_diameter_mm", "volume_ml", "unenhanced_mean_hu", "unenhanced_sd_hu", "venous_mean_hu",
        "venous_enhancement_hu"]
    assert features_seen_with(FEATURES, ["venous", "delayed"])[-1] == "relative_washout_percent"
    assert features_seen_with(FEATURES, ["unenhanced", "arterial", "venous", "delayed"]) == FEATURES


def _data(n=4):
    ids = [f"L{i}" for i in range(n)]
    crops = np.stack([np.full((3, 2, 2, 2), c, np.float16) for c in (0, 1, 2)], axis=1)[:1].repeat(n, axis=0)
    table = pd.DataFrame({"unenhanced_hu": np.arange(n, dtype=float), "size_mm": 20.0}, index=ids)
    features = pd.DataFrame({f: np.arange(n, dtype=float) for f in FEATURES}, index=ids)
    return LesionData(table, features, crops, ("unenhanced", "venous", "mask"))


def test_the_phase_view_keeps_that_phase_and_the_mask():
    data = _data()
    assert data.crops.shape == (4, 3, 2, 2, 2)  # unenhanced, venous, mask
    venous = data.with_phases(["venous"])
    assert venous.channels == ("venous", "mask") and venous.crops.shape[1] == 2 and (venous.crops[:, 0] == 1).all() and (venous.crops[:, 1] == 2).all()
    assert venous.table["unenhanced_hu"].isna().all() and (venous.table["size_mm"] == 20).all()
    assert list(venous.image_features.columns) == features_seen_with(FEATURES, ["venous"])
    unenhanced = data.with_phases(["unenhanced"])
    assert (unenhanced.crops[:, 0] == 0).all() and unenhanced.table["unenhanced_hu"].notna().all()
    assert data.table["unenhanced_hu"].notna().all()  # the original is untouched
    with pytest.raises(ValueError, match="not a subset"):
        data.with_phases(["arterial"])


def test_the_bootstrap_macro_auc_is_centred_on_the_macro_auc():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 300)
    p = rng.dirichlet(np.ones(3), 300) + 0.6 * np.eye(3)[y]
    direct = np.mean([roc_auc_score(y == k, p[:, k]) for k in range(3)])
    macro = bootstrap_macro_auc(y, [p, p[:, ::-1]], resamples=400)
    assert macro.shape == (400, 2)
    assert abs(np.median(macro[:, 0]) - direct) < 0.01
    assert np.quantile(macro[:, 0], 0.025) < direct < np.quantile(macro[:, 0], 0.975)


def test_the_comparison_pairs_each_phase_with_all_phases():
    rng = np.random.default_rng(4)
    n = 200
    ids = [f"L{i}" for i in range(n)]
    labels = pd.Series(rng.integers(0, 2, n), index=ids)
    types = pd.Series(np.where(labels == 1, "metastasis", rng.choice(["adenoma", "cyst"], n)), index=ids)
    good = pd.Series(labels + rng.normal(0, 0.5, n), index=ids)
    weak = pd.Series(labels + rng.normal(0, 2.0, n), index=ids)
    truth = pd.get_dummies(types).astype(float)
    frame = lambda noise: (truth + rng.normal(0, noise, truth.shape)).add_prefix("p_type_")  # noqa: E731
    from fusion_model.heads.subtype import SubtypeClasses

    info = SubtypeClasses(["adenoma", "cyst", "metastasis"])
    out = phase_comparison(labels, {"venous": weak, "unenhanced+venous": good}, types,
                           {"venous": frame(1.0), "unenhanced+venous": frame(0.2)}, info,
                           reference="unenhanced+venous", phases={"unenhanced+venous": ["unenhanced", "venous"]})
    rows = {r["name"]: r for r in out["sets"]}
    assert rows["venous"]["malignancy"]["auc"] == pytest.approx(roc_auc_score(labels, weak))
    test = rows["venous"]["malignancy"]["vs_reference"]
    assert test["difference"] < 0 and test["p_value"] < 0.001
    assert rows["unenhanced+venous"]["malignancy"]["vs_reference"] is None
    assert rows["unenhanced+venous"]["phases"] == ["unenhanced", "venous"] and rows["venous"]["phases"] == ["venous"]
    macro = rows["venous"]["subtype"]["macro_vs_reference"]
    assert macro["difference_ci95"][1] < 0 and not macro["reference_lower_beyond_ci"]
    assert rows["venous"]["subtype"]["per_class"]["cyst"]["vs_reference"]["p_value"] < 0.05


def test_compare_phases_refuses_a_single_phase_cohort(tmp_path):
    import yaml

    from fusion_model.config import SynthConfig
    from fusion_model.synthetic.generate import synthesize_cohort
    from tests.conftest import TINY_EXPERIMENT
    from tests.test_cli import run_cli

    cohort = synthesize_cohort(tmp_path / "c", SynthConfig(patients=8, seed=3, phases=["venous"]), progress=False)
    config = tmp_path / "x.yaml"
    config.write_text(yaml.safe_dump({**TINY_EXPERIMENT, "compare_phases": True}))
    result = run_cli("train", "--config", config, "--cohort", cohort, "--out", tmp_path / "m")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "compare_phases" in result.stderr and "['venous']" in result.stderr
    assert not (tmp_path / "m").exists()
