"""SHAP contributions of a variant's output, in log-odds, exactly additive:
``base + contributions.sum(axis=1) == the variant's margin`` for every lesion.

- fusion head / tabular head: the head's own exact SHAP values (TreeSHAP for XGBoost, the closed form of
  a linear model for the logistic head) over its features;
- late fusion: the variant's own mix (:meth:`VariantFit.mix`, linear) applied to the parts: the image
  logit's share, and each tabular feature's SHAP value of the tabular head;
- imaging only: the image logit is the whole margin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import shap

from fusion_model.catalogue import FEATURE_GROUPS
from fusion_model.model import FusionModel


@dataclass
class Contributions:
    """A variant's margin per lesion split into feature contributions (SHAP), with the values behind them."""

    variant: str
    values: pd.DataFrame          # feature values the head saw (NaN = missing); lesions x features
    shap: pd.DataFrame            # contributions in log-odds; same shape
    base: float                   # the head's expected margin
    margin: np.ndarray            # the variant's margin per lesion
    probability: np.ndarray       # calibrated probability per lesion
    groups: dict[str, str]        # feature -> group (imaging, radiological, clinical, laboratory)

    def group_contributions(self) -> pd.DataFrame:
        """Summed contributions per feature group; lesions x groups."""
        frame = self.shap.T.groupby(pd.Series(self.groups)).sum().T
        return frame.reindex(columns=[g for g in FEATURE_GROUPS if g in frame.columns])


def feature_groups(model: FusionModel, names: list[str]) -> dict[str, str]:
    """The feature group of each named head input."""
    lookup = {n: g for g, members in model.tabular_groups_.items() for n in members}
    return {n: "imaging" if n.startswith("image_") else lookup.get(n, "radiological") for n in names}


class VariantExplainer:
    """Built once per model and variant; explains any lesions whose feature frames are given."""

    def __init__(self, model: FusionModel, variant: str):
        if variant not in model.variants_:
            raise ValueError(f"variant {variant!r} is not in the model; it has {list(model.variants_)}")
        self.model = model
        self.variant = variant
        self.fit = model.variants_[variant]
        self.head = self.fit.scoring_head

    def __call__(self, X_img: pd.DataFrame, X_tab: pd.DataFrame) -> Contributions:
        X = self.fit.scoring_frame(X_img, X_tab)
        margin = np.asarray(self.fit.margin(X_img, X_tab), dtype=float)
        if self.head is None:
            values, contributions, base = X, X.astype(float).copy(), 0.0
        else:
            contributions, base = self.head.shap_values(X)
            values = X
            if self.fit.method == "late_fusion":
                image_logit = X_img["image_logit"].to_numpy(dtype=float)
                contributions = self.fit.mix(0.0, contributions)
                contributions.insert(0, "image_logit", self.fit.mix(image_logit, 0.0))
                values = X.copy()
                values.insert(0, "image_logit", image_logit)
                base = float(self.fit.mix(0.0, base))
        return Contributions(self.variant, values.astype(float), contributions, base, margin,
                             self.fit.calibrator(margin), feature_groups(self.model, list(values.columns)))


@dataclass
class TypeContributions:
    """A variant's lesion-type margins per lesion split into feature contributions, one set per class (SHAP of
    the multi-class head, exactly additive per class: ``base[c] + shap[c].sum(axis=1) == margins[:, k]``); the
    probabilities are softmax(margins / temperature)."""

    variant: str
    classes: list[str]
    values: pd.DataFrame
    shap: dict[str, pd.DataFrame]
    base: dict[str, float]
    margins: np.ndarray
    probabilities: np.ndarray


class SubtypeExplainer:
    """TreeSHAP of a variant's lesion-type head (every class), built once."""

    def __init__(self, model: FusionModel, variant: str):
        self.fit = model.subtypes_[variant]
        self.variant = variant
        self.tree = shap.TreeExplainer(self.fit.head.booster_)

    def __call__(self, X_img: pd.DataFrame, X_tab: pd.DataFrame) -> TypeContributions:
        from scipy.special import softmax

        X = self.fit.frame(X_img, X_tab).astype(float)
        raw = self.tree.shap_values(X.to_numpy(dtype=float))
        k = len(self.fit.classes)
        values = np.stack(raw, axis=-1) if isinstance(raw, list) else np.asarray(raw, dtype=float)
        values = values.reshape(len(X), X.shape[1], k)
        expected = np.ravel(self.tree.expected_value).astype(float)
        margins = self.fit.head.margins(X.to_numpy(dtype=float))
        return TypeContributions(
            self.variant, list(self.fit.classes), X,
            {c: pd.DataFrame(values[:, :, j], index=X.index, columns=X.columns) for j, c in enumerate(self.fit.classes)},
            {c: float(expected[j]) for j, c in enumerate(self.fit.classes)}, margins,
            softmax(margins / self.fit.temperature, axis=1))
