"""The extension points: a new head learner and a new fusion method are a class each plus one registration
line, and then train -> save -> load -> predict -> explain run with them, as with the built-ins."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fusion_model.config import ExperimentConfig
from fusion_model.errors import UserInputError
from fusion_model.heads.methods import Decomposition, FusionMethod, head_fold_margins
from fusion_model.registry import FUSION_METHODS, LEARNERS

from .conftest import TINY_EXPERIMENT


class CentroidHead:
    """A toy learner: standardised features, the margin linear in them along the difference of the class means
    (missing values at the training mean); exact SHAP ``w_j z_j`` against the training lesions, base ``b``."""

    learner = "toy_centroid"
    outputs = "binary"

    def __init__(self, feature_names):
        self.feature_names = list(feature_names)

    @classmethod
    def build(cls, feature_names, config, threads=2):
        return cls(feature_names)

    def _z(self, X):
        z = (np.asarray(X, dtype=float) - self.mean_) / self.sd_
        return np.where(np.isfinite(z), z, 0.0)

    def fit(self, X, y):
        X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=int)
        self.mean_ = np.nan_to_num(np.nanmean(X, axis=0))
        sd = np.nan_to_num(np.nanstd(X, axis=0))
        self.sd_ = np.where(sd > 1e-12, sd, 1.0)
        z = self._z(X)
        self.weights_ = z[y == 1].mean(axis=0) - z[y == 0].mean(axis=0)
        self.bias_ = float(np.log(y.mean() / (1 - y.mean())))
        return self

    def decision_function(self, X):
        return self._z(X) @ self.weights_ + self.bias_

    def shap_values(self, X):
        return pd.DataFrame(self._z(X.to_numpy(dtype=float)) * self.weights_, index=X.index,
                            columns=X.columns), self.bias_

    def save(self, path):
        Path(path).write_text(json.dumps({"features": self.feature_names, "mean": self.mean_.tolist(),
                                          "sd": self.sd_.tolist(), "weights": self.weights_.tolist(),
                                          "bias": self.bias_}))

    @classmethod
    def load(cls, path, feature_names, config):
        data = json.loads(Path(path).read_text())
        if data["features"] != list(feature_names):
            raise UserInputError(f"{path}: features differ from the manifest's")
        head = cls(feature_names)
        head.mean_, head.sd_, head.weights_ = (np.asarray(data[k]) for k in ("mean", "sd", "weights"))
        head.bias_ = float(data["bias"])
        return head


class HalfFusion(FusionMethod):
    """A toy method: the mean of the fusion head's margin and the image logit."""

    name, label, head_kind = "toy_half_fusion", "half fusion", "fusion"

    def fold_margins(self, fitter, data, train_idx, test_idx, learner, out):
        head = head_fold_margins(fitter, data.X_fused, data.y, train_idx, test_idx, learner)
        return 0.5 * head + 0.5 * data.image_logit[test_idx]

    def margin(self, fit, X_img, X_tab):
        return 0.5 * super().margin(fit, X_img, X_tab) + 0.5 * X_img["image_logit"].to_numpy(dtype=float)

    def decompose(self, fit, X_img, X_tab, margin):
        head = super().decompose(fit, X_img, X_tab, margin)
        contributions = 0.5 * head.shap
        contributions["image_logit"] += 0.5 * X_img["image_logit"].to_numpy(dtype=float)
        return Decomposition(head.values, contributions, 0.5 * head.base)


@pytest.fixture
def toy_extensions():
    LEARNERS.register(CentroidHead)  # the one registration line each
    FUSION_METHODS.register(HalfFusion())
    yield
    LEARNERS.unregister(CentroidHead.learner)
    FUSION_METHODS.unregister(HalfFusion.name)


def test_builtin_declarations_say_what_their_implementations_are():
    """The facts the configuration reads without importing a built-in are the implementation's own."""
    for registry, facts in ((LEARNERS, ("outputs",)), (FUSION_METHODS, ("configurable", "needs_types"))):
        for name in registry.names():
            declared = {fact: registry.fact(name, fact) for fact in facts}
            implementation = registry.get(name)
            assert getattr(implementation, registry.attribute) == name
            assert declared == {fact: getattr(implementation, fact) for fact in facts}, name


def test_configuration_names_only_registered_learners_and_methods(toy_extensions):
    config = ExperimentConfig(fusion={"method": "toy_half_fusion", "head": "toy_centroid"})
    assert config.fusion.head == "toy_centroid"
    LEARNERS.unregister("toy_centroid")
    with pytest.raises(ValueError, match="unknown head learner 'toy_centroid'; choose from"):
        ExperimentConfig(fusion={"head": "toy_centroid"})
    with pytest.raises(ValueError, match="unknown fusion method 'image_logit'"):
        ExperimentConfig(fusion={"method": "image_logit"})  # the imaging-only variant's, not a choice


@pytest.mark.slow
def test_a_toy_head_and_method_train_save_load_predict_and_explain(tmp_path, toy_extensions):
    from fusion_model import pipeline
    from fusion_model.artifact import load_model
    from fusion_model.config import SynthConfig, load_experiment
    from fusion_model.explain.contributions import VariantExplainer
    from fusion_model.explain.run import explain_cohort
    from fusion_model.imaging.cache import ImageCache
    from fusion_model.synthetic.generate import synthesize_cohort

    cohort = synthesize_cohort(tmp_path / "cohort", SynthConfig(patients=48, seed=41), progress=False)
    experiment = {**TINY_EXPERIMENT, "encoder": {**TINY_EXPERIMENT["encoder"], "epochs": 1},
                  "variants": ["imaging", "imaging_radiological"], "primary_variant": "imaging_radiological",
                  "fusion": {"method": "toy_half_fusion", "head": "toy_centroid"}}
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(experiment))
    cache = ImageCache(tmp_path / "cache")
    pipeline.train(load_experiment(tmp_path / "toy.yaml"), cohort, tmp_path / "model", cache, progress=False)

    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    entry = manifest["variants"]["imaging_radiological"]
    assert entry["method"] == "toy_half_fusion"
    assert {h["learner"] for h in entry["heads"].values()} == {"toy_centroid"}
    assert entry["oof_auc"]["toy_half_fusion"] > 0.7  # the radiological features carry the signal

    model = load_model(tmp_path / "model")
    fit = model.variants_["imaging_radiological"]
    assert isinstance(fit.heads["fusion"], CentroidHead) and fit.fusion_method.label == "half fusion"
    predictions, errors = pipeline.predict(tmp_path / "model", cohort, tmp_path / "predictions.csv", cache,
                                           progress=False)
    assert not errors and predictions["probability"].between(0, 1).all()
    data, _ = pipeline.ScoringSession.open(tmp_path / "model", cohort, progress=False).read(cache, "explain", progress=False)
    X_img, X_tab = model.feature_frames(data)
    head = fit.heads["fusion"].decision_function(fit.head_frame("fusion", X_img, X_tab).to_numpy(dtype=float))
    margin = fit.margin(X_img, X_tab)
    np.testing.assert_allclose(margin, 0.5 * head + 0.5 * X_img["image_logit"].to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(predictions["probability"].to_numpy(), fit.calibrator(margin), rtol=1e-9)

    contributions = VariantExplainer(model, "imaging_radiological")(X_img, X_tab)
    np.testing.assert_allclose(contributions.base + contributions.shap.sum(axis=1).to_numpy(), margin, atol=1e-9)
    result = explain_cohort(tmp_path / "model", cohort, tmp_path / "explain", cache,
                            variant="imaging_radiological", progress=False)
    shap_values = pd.read_csv(tmp_path / "explain" / "shap_values.csv")
    assert len(result.lesion_ids) == len(predictions) and len(shap_values) >= len(predictions)
    assert (tmp_path / "explain" / "global" / "beeswarm.png").stat().st_size > 0
