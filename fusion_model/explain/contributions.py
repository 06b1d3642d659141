"""SHAP contributions of a variant's output, in log-odds, exactly additive:
``base + contributions.sum(axis=1) == the variant's margin`` for every lesion. Each fusion method decomposes
its own margin (:meth:`fusion_model.heads.methods.FusionMethod.decompose`: the heads' exact SHAP values, late
fusion's linear mix of them, the type mixture's path integral, the image logit as the whole margin).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import softmax

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

    def __call__(self, X_img: pd.DataFrame, X_tab: pd.DataFrame) -> Contributions:
        margin = np.asarray(self.fit.margin(X_img, X_tab), dtype=float)
        parts = self.fit.fusion_method.decompose(self.fit, X_img, X_tab, margin)
        return Contributions(self.variant, parts.values.astype(float), parts.shap, parts.base, margin,
                             self.fit.calibrator(margin), feature_groups(self.model, list(parts.values.columns)))


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
    """TreeSHAP of a variant's lesion-type head (every class)."""

    def __init__(self, model: FusionModel, variant: str):
        self.fit = model.subtypes_[variant]
        self.variant = variant

    def __call__(self, X_img: pd.DataFrame, X_tab: pd.DataFrame) -> TypeContributions:
        X = self.fit.frame(X_img, X_tab).astype(float)
        values, expected = self.fit.head.shap_values(X)
        margins = self.fit.head.margins(X.to_numpy(dtype=float))
        return TypeContributions(
            self.variant, list(self.fit.classes), X,
            {c: pd.DataFrame(values[:, :, j], index=X.index, columns=X.columns) for j, c in enumerate(self.fit.classes)},
            {c: float(expected[j]) for j, c in enumerate(self.fit.classes)}, margins,
            softmax(margins / self.fit.temperature, axis=1))
