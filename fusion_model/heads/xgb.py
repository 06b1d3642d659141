"""An XGBoost head with scikit-learn's fit / decision_function contract, stored as XGBoost JSON."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xgboost as xgb

from fusion_model.config import ExperimentConfig, XGBoostConfig
from fusion_model.errors import UserInputError


def tree_params(config: XGBoostConfig, seed: int, threads: int) -> dict:
    """The booster settings every head shares (objective and class weighting are the head's own)."""
    return {"tree_method": "hist", "max_depth": config.max_depth, "eta": config.learning_rate,
            "subsample": config.subsample, "colsample_bytree": config.colsample_bytree,
            "min_child_weight": config.min_child_weight, "lambda": config.reg_lambda, "alpha": config.reg_alpha,
            "seed": seed, "nthread": threads}


def load_booster(path: Path, feature_names: Sequence[str]) -> xgb.Booster:
    """A saved booster whose feature names must be the manifest's; a damaged or foreign file is refused."""
    booster = xgb.Booster()
    try:
        booster.load_model(str(path))
    except xgb.core.XGBoostError:
        raise UserInputError(f"{path}: is not an XGBoost model file; the artifact is damaged: retrain the model "
                             "or restore the file") from None
    if list(booster.feature_names or []) != list(feature_names):
        raise UserInputError(f"{path}: model features {booster.feature_names} differ from the manifest's; "
                             "the artifact is inconsistent: retrain the model")
    return booster


class XGBHead:
    """An XGBoost head with scikit-learn's fit / decision_function contract, stored as XGBoost JSON."""

    learner = "xgboost"
    outputs = "binary"

    def __init__(self, config: XGBoostConfig, feature_names: Sequence[str], seed: int = 0, threads: int = 2):
        self.config = config
        self.feature_names = list(feature_names)
        self.seed = seed
        self.threads = threads

    @classmethod
    def build(cls, feature_names: Sequence[str], config: ExperimentConfig, threads: int = 2) -> "XGBHead":
        """An unfitted head with the experiment's XGBoost settings and seed."""
        return cls(config.xgboost, feature_names, seed=config.seed, threads=threads)

    def _params(self, y: np.ndarray) -> dict:
        c = self.config
        positives = max(1.0, float(np.sum(y)))
        monotone = tuple(int(c.monotone.get(name, 0)) for name in self.feature_names)
        return {
            "objective": "binary:logistic", "eval_metric": "auc", **tree_params(c, self.seed, self.threads),
            "scale_pos_weight": (len(y) - positives) / positives,
            "monotone_constraints": "(" + ",".join(map(str, monotone)) + ")",
        }

    def fit(self, X: np.ndarray, y: np.ndarray) -> "XGBHead":
        """Fit on a feature matrix (columns as ``feature_names``; NaN = missing) and 0/1 labels."""
        y = np.asarray(y, dtype=float)
        dtrain = xgb.DMatrix(np.asarray(X, dtype=float), label=y, feature_names=self.feature_names,
                             missing=np.nan)
        self.booster_ = xgb.train(self._params(y), dtrain, num_boost_round=self.config.n_estimators)
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Margins (log-odds) of the head."""
        if not hasattr(self, "booster_"):
            raise RuntimeError("XGBHead is not fitted")
        data = xgb.DMatrix(np.asarray(X, dtype=float), feature_names=self.feature_names, missing=np.nan)
        return self.booster_.predict(data, output_margin=True)

    def shap_values(self, X) -> tuple:
        """Exact TreeSHAP values (log-odds) on the frame ``X`` and the expected margin (shap.TreeExplainer,
        built once per head)."""
        import pandas as pd
        import shap

        if getattr(self, "_explainer", None) is None:
            self._explainer = shap.TreeExplainer(self.booster_)
        values = np.asarray(self._explainer.shap_values(X.to_numpy(dtype=float)), dtype=float).reshape(X.shape)
        return (pd.DataFrame(values, index=X.index, columns=X.columns),
                float(np.ravel(self._explainer.expected_value)[0]))

    def save(self, path: Path) -> None:
        """Write the booster in XGBoost's own JSON format."""
        self.booster_.save_model(str(path))

    @classmethod
    def load(cls, path: Path, feature_names: Sequence[str], config: ExperimentConfig) -> "XGBHead":
        """Read a saved head; its feature names must be the manifest's."""
        head = cls(config.xgboost, feature_names)
        head.booster_ = load_booster(path, feature_names)
        return head
