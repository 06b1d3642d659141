"""One model variant, fitted: which head scores it, how its margin is formed, its calibration and thresholds.

A variant's margin (log-odds) comes from one of three methods:

- ``image_logit``: the encoder's logit alone (the imaging-only variant);
- ``fusion_head``: an XGBoost head over the imaging features and the variant's tabular features;
- ``late_fusion``: ``w * image_logit + (1 - w) * tabular margin``, an XGBoost head over the tabular
  features mixed with the image logit, ``w`` chosen by inner cross-validation (or fixed by the config).

:class:`VariantFitter` cross-validates and fits them on out-of-fold encoder outputs; :class:`VariantFit`
is the result, which computes its own margin and probability and writes itself to the model manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fusion_model.config import ExperimentConfig
from fusion_model.evaluate.stats import nan_safe_auc
from fusion_model.heads.calibration import Calibrator
from fusion_model.heads.thresholds import operating_thresholds
from fusion_model.heads.xgb import XGBHead
from fusion_model.splits import patient_grouped_folds

METHODS = ("image_logit", "fusion_head", "late_fusion")


def late_fusion_margin(image_logit, tabular_margin, weight: float):
    """The late-fusion mix of the image logit and the tabular head's margin (arrays, frames or numbers:
    also of their parts, since the mix is linear)."""
    return weight * image_logit + (1 - weight) * tabular_margin


def best_late_weight(labels: np.ndarray, image_logit: np.ndarray, tabular_margin: np.ndarray,
                     weights: list[float]) -> float:
    """The candidate weight whose late-fusion margin has the highest AUC (the first of equals)."""
    aucs = [nan_safe_auc(labels, late_fusion_margin(image_logit, tabular_margin, w)) for w in weights]
    return float(weights[int(np.nanargmax(aucs))])


@dataclass
class VariantFit:
    """A fitted variant; rows of every frame it is given are lesions, columns named features."""

    name: str
    method: str                                   # one of METHODS
    imaging_features: list[str]                   # image_logit, image_pc1 ...
    tabular_features: list[str]                   # empty for the imaging-only variant
    calibrator: Calibrator
    thresholds: dict[str, float]                  # operating thresholds on calibrated OOF probabilities
    oof_auc: dict[str, float]                     # out-of-fold AUC of each margin that was cross-validated
    heads: dict[str, XGBHead] = field(default_factory=dict)  # kind ('fusion', 'tabular') -> head
    late_fusion_weight: float | None = None       # weight of the image logit

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"variant {self.name}: unknown method {self.method!r}; choose from {list(METHODS)}")
        if self.method != "image_logit" and self.scoring_head_kind not in self.heads:
            raise ValueError(f"variant {self.name}: method {self.method} needs its {self.scoring_head_kind} head")
        if self.method == "late_fusion" and self.late_fusion_weight is None:
            raise ValueError(f"variant {self.name}: late fusion needs a weight")

    # ----------------------------------------------------------------------------- scoring
    @property
    def scoring_head_kind(self) -> str | None:
        """Which head gives the margin: 'fusion', 'tabular' (late fusion) or None (image logit)."""
        return {"fusion_head": "fusion", "late_fusion": "tabular"}.get(self.method)

    @property
    def scoring_head(self) -> XGBHead | None:
        """The head that gives the margin (None for the image logit)."""
        kind = self.scoring_head_kind
        return None if kind is None else self.heads[kind]

    def head_frame(self, kind: str, X_img: pd.DataFrame, X_tab: pd.DataFrame) -> pd.DataFrame:
        """What the ``kind`` head sees, columns in its order (a feature the lesions lack is NaN)."""
        X_tab_v = X_tab.reindex(columns=self.tabular_features)
        if kind == "fusion":
            return pd.concat([X_img[self.imaging_features], X_tab_v], axis=1)
        return X_tab_v

    def scoring_frame(self, X_img: pd.DataFrame, X_tab: pd.DataFrame) -> pd.DataFrame:
        """What the scoring head sees (the image logit alone for the imaging-only variant)."""
        kind = self.scoring_head_kind
        return X_img[["image_logit"]] if kind is None else self.head_frame(kind, X_img, X_tab)

    def margin(self, X_img: pd.DataFrame, X_tab: pd.DataFrame) -> np.ndarray:
        """Uncalibrated margin (log-odds) per lesion."""
        image_logit = X_img["image_logit"].to_numpy(dtype=float)
        if self.method == "image_logit":
            return image_logit
        head_margin = self.scoring_head.decision_function(self.scoring_frame(X_img, X_tab).to_numpy(dtype=float))
        if self.method == "fusion_head":
            return head_margin
        return self.mix(image_logit, head_margin)

    def mix(self, image_part, tabular_part):
        """Late fusion's mix of an image part and a tabular part: margins, or additive contributions to them."""
        return late_fusion_margin(image_part, tabular_part, self.late_fusion_weight)

    def probability(self, X_img: pd.DataFrame, X_tab: pd.DataFrame) -> np.ndarray:
        """Calibrated malignancy probability per lesion."""
        return self.calibrator(self.margin(X_img, X_tab))

    @property
    def score_oof_auc(self) -> float:
        """Out-of-fold AUC of the margin this variant outputs."""
        return self.oof_auc[self.method]

    # ------------------------------------------------------------------------ serialisation
    def head_key(self, kind: str) -> str:
        """The head's name in the artifact (its file is heads/KEY.json)."""
        return f"{self.name}_{kind}"

    def to_manifest(self, save_head: Callable[[str, XGBHead], str]) -> dict:
        """Plain data for the manifest; ``save_head(key, head)`` writes a head and returns its file."""
        return {
            "method": self.method, "imaging_features": self.imaging_features,
            "tabular_features": self.tabular_features, "late_fusion_weight": self.late_fusion_weight,
            "calibrator": self.calibrator.to_dict(), "thresholds": self.thresholds, "oof_auc": self.oof_auc,
            "heads": {kind: {"file": save_head(self.head_key(kind), head), "features": head.feature_names}
                      for kind, head in self.heads.items()},
        }

    @classmethod
    def from_manifest(cls, name: str, entry: dict, load_head: Callable[[str, list[str]], XGBHead]) -> "VariantFit":
        """The variant a manifest entry describes; ``load_head(file, features)`` reads a head."""
        return cls(
            name=name, method=entry["method"], imaging_features=list(entry["imaging_features"]),
            tabular_features=list(entry["tabular_features"]), calibrator=Calibrator.from_dict(entry["calibrator"]),
            thresholds=dict(entry["thresholds"]), oof_auc=dict(entry["oof_auc"]),
            heads={kind: load_head(h["file"], list(h["features"])) for kind, h in entry["heads"].items()},
            late_fusion_weight=entry["late_fusion_weight"],
        )


class VariantFitter:
    """Cross-validates and fits variants on out-of-fold encoder outputs, as one experiment configures."""

    def __init__(self, config: ExperimentConfig, threads: int = 2):
        self.config = config
        self.threads = threads

    def head(self, feature_names: list[str]) -> XGBHead:
        """An unfitted XGBoost head over these features."""
        return XGBHead(self.config.xgboost, feature_names, seed=self.config.seed, threads=self.threads)

    def cv_margins(self, X: pd.DataFrame, y: np.ndarray, folds) -> np.ndarray:
        """Out-of-fold margins of a head over ``X``'s columns."""
        out = np.full(len(y), np.nan)
        for train_idx, test_idx in folds:
            head = self.head(list(X.columns)).fit(X.values[train_idx], y[train_idx])
            out[test_idx] = head.decision_function(X.values[test_idx])
        return out

    def late_weight(self, X_tab: pd.DataFrame, image_logit: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
        """Weight of the image logit: fixed by the config, or chosen by inner CV of the tabular head."""
        fusion = self.config.fusion
        if fusion.fixed_weight is not None:
            return float(fusion.fixed_weight)
        inner = patient_grouped_folds(y, groups, min(fusion.inner_folds, min_class_patients(y, groups)),
                                      self.config.seed + 1)
        return best_late_weight(y, image_logit, self.cv_margins(X_tab, y, inner), fusion.late_fusion_weights)

    def oof_margins(self, X_img: pd.DataFrame, X_tab: pd.DataFrame, y: np.ndarray, groups: np.ndarray, folds,
                    methods=("fusion_head", "late_fusion"), on_fold=None) -> dict[str, np.ndarray]:
        """Out-of-fold margins of a variant's heads over ``folds`` (each fitted on the other folds only).

        ``X_tab`` holds the variant's tabular features (none for the imaging-only variant).
        ``on_fold(k, margins)`` is called after each fold (a hyperparameter search prunes with it).
        """
        image_logit = X_img["image_logit"].to_numpy()
        out = {"image_logit": image_logit}
        if X_tab.shape[1] == 0:
            return out
        X_fused = pd.concat([X_img, X_tab], axis=1)
        if "fusion_head" in methods:
            out["fusion_head"] = np.full(len(y), np.nan)
        if "late_fusion" in methods:
            out["late_fusion"] = np.full(len(y), np.nan)
            out["tabular_head"] = np.full(len(y), np.nan)
        for k, (train_idx, test_idx) in enumerate(folds):
            if "fusion_head" in methods:
                head = self.head(list(X_fused.columns)).fit(X_fused.values[train_idx], y[train_idx])
                out["fusion_head"][test_idx] = head.decision_function(X_fused.values[test_idx])
            if "late_fusion" in methods:
                head = self.head(list(X_tab.columns)).fit(X_tab.values[train_idx], y[train_idx])
                tabular = head.decision_function(X_tab.values[test_idx])
                out["tabular_head"][test_idx] = tabular
                w = self.late_weight(X_tab.iloc[train_idx], image_logit[train_idx], y[train_idx], groups[train_idx])
                out["late_fusion"][test_idx] = late_fusion_margin(image_logit[test_idx], tabular, w)
            if on_fold is not None:
                on_fold(k, out)
        return out

    def fit(self, name: str, X_img: pd.DataFrame, X_tab: pd.DataFrame, y: np.ndarray, groups: np.ndarray,
            folds) -> tuple[VariantFit, np.ndarray]:
        """The fitted variant and its calibrated out-of-fold probabilities.

        Heads are cross-validated over ``folds`` (the calibrator and thresholds are fitted on those
        out-of-fold margins), then refitted on all lesions for new data.
        """
        margins = self.oof_margins(X_img, X_tab, y, groups, folds)
        heads: dict[str, XGBHead] = {}
        weight = None
        if X_tab.shape[1] == 0:
            method = "image_logit"
        else:
            method = self.config.fusion.method
            X_fused = pd.concat([X_img, X_tab], axis=1)
            heads["fusion"] = self.head(list(X_fused.columns)).fit(X_fused.values, y)
            heads["tabular"] = self.head(list(X_tab.columns)).fit(X_tab.values, y)
            weight = self.late_weight(X_tab, margins["image_logit"], y, groups)
        calibrator = Calibrator.fit(self.config.calibration.method, margins[method], y)
        probabilities = calibrator(margins[method])
        fit = VariantFit(name, method, list(X_img.columns), list(X_tab.columns), calibrator,
                         operating_thresholds(y, probabilities),
                         {kind: nan_safe_auc(y, m) for kind, m in margins.items()}, heads, weight)
        return fit, probabilities


def min_class_patients(y: np.ndarray, groups: np.ndarray) -> int:
    """Patients in the smaller class (bounds the number of patient-grouped folds)."""
    return min(len(np.unique(groups[y == c])) for c in np.unique(y))
