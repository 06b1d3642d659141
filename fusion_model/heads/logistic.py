"""An L2-regularised logistic head (scikit-learn) with the XGBoost head's contract, for small cohorts.

Features are standardised with the training lesions' mean and SD; a missing value (NaN) is imputed with the
training mean (0 after standardising), so it contributes nothing. Its SHAP values are exact and closed-form:
with the training lesions as background, feature j contributes ``coef_j * z_j`` and the base is the
intercept (the training mean of every standardised, imputed feature is 0). Stored as plain JSON.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from fusion_model.config import ExperimentConfig
from fusion_model.errors import UserInputError

KIND = "fusion-model-logistic-head"


class LogisticHead:
    """L2-regularised logistic regression over standardised features; ``decision_function`` gives log-odds."""

    learner = "logistic"
    outputs = "binary"

    def __init__(self, feature_names: Sequence[str], c: float = 1.0, seed: int = 0):
        self.feature_names = list(feature_names)
        self.c = float(c)
        self.seed = seed

    @classmethod
    def build(cls, feature_names: Sequence[str], config: ExperimentConfig, threads: int = 2) -> LogisticHead:
        """An unfitted head with the experiment's L2 strength (``fusion.logistic_c``) and seed."""
        return cls(feature_names, config.fusion.logistic_c, seed=config.seed)

    def _standardised(self, X) -> np.ndarray:
        z = (np.asarray(X, dtype=float) - self.mean_) / self.sd_
        return np.where(np.isfinite(z), z, 0.0)

    def fit(self, X: np.ndarray, y: np.ndarray) -> LogisticHead:
        """Fit on a feature matrix (columns as ``feature_names``; NaN = missing) and 0/1 labels (classes
        weighted to balance)."""
        X = np.asarray(X, dtype=float)
        with np.errstate(all="ignore"):
            mean = np.nanmean(X, axis=0) if len(X) else np.zeros(X.shape[1])
            sd = np.nanstd(X, axis=0) if len(X) else np.ones(X.shape[1])
        self.mean_ = np.where(np.isfinite(mean), mean, 0.0)
        self.sd_ = np.where(np.isfinite(sd) & (sd > 1e-12), sd, 1.0)
        model = LogisticRegression(C=self.c, class_weight="balanced", max_iter=2000, random_state=self.seed)
        model.fit(self._standardised(X), np.asarray(y, dtype=int))
        self.coef_ = model.coef_.ravel().astype(float)
        self.intercept_ = float(model.intercept_[0])
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Margins (log-odds) of the head."""
        if not hasattr(self, "coef_"):
            raise RuntimeError("LogisticHead is not fitted")
        return self._standardised(X) @ self.coef_ + self.intercept_

    def shap_values(self, X: pd.DataFrame) -> tuple[pd.DataFrame, float]:
        """Exact SHAP values (log-odds) against the training lesions, and the base margin."""
        values = self._standardised(X.to_numpy(dtype=float)) * self.coef_
        return pd.DataFrame(values, index=X.index, columns=X.columns), self.intercept_

    def save(self, path: Path) -> None:
        """Write the coefficients and the standardisation as JSON."""
        Path(path).write_text(json.dumps({
            "kind": KIND, "feature_names": self.feature_names, "c": self.c, "intercept": self.intercept_,
            "coef": self.coef_.tolist(), "mean": self.mean_.tolist(), "sd": self.sd_.tolist()}, indent=1))

    @classmethod
    def load(cls, path: Path, feature_names: Sequence[str], config: ExperimentConfig | None = None) -> LogisticHead:
        """Read a saved head; its feature names must be the manifest's."""
        try:
            data = json.loads(Path(path).read_text())
            if data.get("kind") != KIND:
                raise ValueError("not a logistic head")
            head = cls(data["feature_names"], data["c"])
            head.intercept_ = float(data["intercept"])
            head.coef_, head.mean_, head.sd_ = (np.asarray(data[k], dtype=float) for k in ("coef", "mean", "sd"))
        except (OSError, ValueError, KeyError, TypeError):
            raise UserInputError(f"{path}: is not a logistic head file; the artifact is damaged: retrain the model "
                                 "or restore the file") from None
        if head.feature_names != list(feature_names) or not (
                len(head.coef_) == len(head.mean_) == len(head.sd_) == len(head.feature_names)):
            raise UserInputError(f"{path}: head features {head.feature_names} differ from the manifest's; the "
                                 "artifact is inconsistent: retrain the model")
        return head
