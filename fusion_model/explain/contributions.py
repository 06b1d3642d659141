"""SHAP contributions of a variant's output, in log-odds, exactly additive:
``base + contributions.sum(axis=1) == the variant's margin`` for every lesion.

- fusion head / tabular head: the head's own exact SHAP values (TreeSHAP for XGBoost, the closed form of
  a linear model for the logistic head) over its features;
- late fusion: the variant's own mix (:meth:`VariantFit.mix`, linear) applied to the parts: the image
  logit's share, and each tabular feature's SHAP value of the tabular head;
- type mixture: TreeSHAP of every class margin of the type head, carried through the mixture's log-odds by the
  Aumann-Shapley path integral (the gradient of the log-odds in margin space, averaged along the straight line
  from the expected margins to the lesion's, times each feature's SHAP value per class): exactly additive, each
  feature's share of the move from the expected margins;
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
        self.type_tree = shap.TreeExplainer(self.head.booster_) if self.fit.method == "type_mixture" else None

    def __call__(self, X_img: pd.DataFrame, X_tab: pd.DataFrame) -> Contributions:
        X = self.fit.scoring_frame(X_img, X_tab)
        margin = np.asarray(self.fit.margin(X_img, X_tab), dtype=float)
        if self.head is None:
            values, contributions, base = X, X.astype(float).copy(), 0.0
        elif self.fit.method == "type_mixture":
            values = X
            contributions, base = type_mixture_contributions(self.fit, self.type_tree, X, margin)
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


def class_shap(tree: shap.TreeExplainer, X: pd.DataFrame, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """TreeSHAP of a multi-class booster's explainer: values (lesions, features, classes), expected margins."""
    raw = tree.shap_values(X.to_numpy(dtype=float))
    values = np.stack(raw, axis=-1) if isinstance(raw, list) else np.asarray(raw, dtype=float)
    return values.reshape(len(X), X.shape[1], n_classes), np.ravel(tree.expected_value).astype(float)


def type_mixture_contributions(fit, tree: shap.TreeExplainer, X: pd.DataFrame, margin: np.ndarray,
                               nodes: int = 48) -> tuple[pd.DataFrame, float]:
    """Contributions (log-odds) to a type-mixture variant's margin and its base (the mixture at the expected
    class margins): per class TreeSHAP, weighted by the path-averaged gradient of the mixture's log-odds."""
    from fusion_model.heads.variant import MIXTURE_EPS, mixture_margin

    mixture = fit.type_mixture
    temperature, rates = float(mixture["temperature"]), np.asarray(mixture["rates"], dtype=float)
    values, expected = class_shap(tree, X, len(rates))
    margins = expected[None, :] + values.sum(axis=1)  # TreeSHAP is exact: these are the head's margins
    t, w = np.polynomial.legendre.leggauss(nodes)
    t, w = (t + 1) / 2, w / 2  # Gauss-Legendre on [0, 1]
    gradient = np.zeros_like(margins)
    for tk, wk in zip(t, w):
        m = expected[None, :] + tk * (margins - expected[None, :])
        z = m / temperature
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        mixed = np.clip((p * rates).sum(axis=1, keepdims=True), MIXTURE_EPS, 1 - MIXTURE_EPS)
        gradient += wk * p * (rates[None, :] - mixed) / (temperature * mixed * (1 - mixed))
    contributions = np.einsum("nfc,nc->nf", values, gradient)
    base = float(mixture_margin(expected[None, :], temperature, rates)[0])
    # the log-odds are clipped at MIXTURE_EPS: where that bites, scale to the variant's own margin exactly
    total, target = contributions.sum(axis=1), np.asarray(margin, dtype=float) - base
    scale = np.ones_like(total)
    moved = np.abs(total) > 1e-12
    scale[moved] = target[moved] / total[moved]
    return pd.DataFrame(contributions * scale[:, None], index=X.index, columns=X.columns), base


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
        values, expected = class_shap(self.tree, X, len(self.fit.classes))
        margins = self.fit.head.margins(X.to_numpy(dtype=float))
        return TypeContributions(
            self.variant, list(self.fit.classes), X,
            {c: pd.DataFrame(values[:, :, j], index=X.index, columns=X.columns) for j, c in enumerate(self.fit.classes)},
            {c: float(expected[j]) for j, c in enumerate(self.fit.classes)}, margins,
            softmax(margins / self.fit.temperature, axis=1))
