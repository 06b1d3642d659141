"""Fusion methods: how a variant turns its heads into one margin (log-odds), one object per method.

Each method carries everything that differs between methods: which head gives the margin, how its out-of-fold
margins are made (fold by fold, or after the last fold), what it fits for new lesions beside the fusion and
tabular heads, its margin, its exact SHAP decomposition and its label. The registry
(:data:`fusion_model.registry.FUSION_METHODS`) is what the configuration, the variant fitter, the artifact
loader, explain and the CLI read; a new method is a :class:`FusionMethod` subclass and one
``FUSION_METHODS.register(MyMethod())`` line.

The built-ins:

- ``image_logit``: the encoder's logit alone (the imaging-only variant);
- ``fusion_head``: a head over the imaging features and the variant's tabular features;
- ``late_fusion``: ``w * image_logit + (1 - w) * tabular margin``, a head over the tabular features mixed with
  the image logit, ``w`` chosen by inner cross-validation (or fixed by the config);
- ``tabular_head``: the tabular head alone (the image adds nothing the features do not already say);
- ``type_mixture`` (with ``targets: [malignancy, lesion_type]``): malignancy through the lesion's type, the
  probability ``sum_c P(type c | lesion) * r_c`` where ``P`` is a multi-class head over the fusion head's inputs
  (XGBoost ``multi:softprob``, temperature fitted on its out-of-fold margins) and ``r_c`` the share of
  malignant lesions among the training lesions of type c. Lesions of type ``other`` or unknown type are scored
  too, but only typed lesions train the head.

SHAP decompositions are exactly additive (``base + contributions.sum(axis=1) == margin``):

- fusion head / tabular head: the head's own exact SHAP values (TreeSHAP for XGBoost, the closed form of a
  linear model for the logistic head);
- late fusion: the variant's own (linear) mix applied to the parts: the image logit's share, and each tabular
  feature's SHAP value of the tabular head;
- type mixture: TreeSHAP of every class margin of the type head, carried through the mixture's log-odds by the
  Aumann-Shapley path integral (the gradient of the log-odds in margin space, averaged along the straight line
  from the expected margins to the lesion's, times each feature's SHAP value per class);
- imaging only: the image logit is the whole margin.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from collections.abc import Collection

import numpy as np
import pandas as pd
from scipy.special import softmax

from fusion_model.heads.subtype import LesionTypes, MultiClassHead, cv_type_margins
from fusion_model.registry import FUSION_METHODS
from fusion_model.stats import nan_safe_auc

MIXTURE_EPS = 1e-6  # the type mixture's probability is kept in [eps, 1 - eps] before its log-odds


@dataclass
class HeadInputs:
    """The lesions a variant's heads learn from: feature frames (rows are lesions), labels, patients, types."""

    X_img: pd.DataFrame
    X_tab: pd.DataFrame
    y: np.ndarray
    groups: np.ndarray
    types: LesionTypes | None = None

    @cached_property
    def X_fused(self) -> pd.DataFrame:
        """The fusion head's inputs: the imaging features, then the tabular ones."""
        return pd.concat([self.X_img, self.X_tab], axis=1)

    @property
    def image_logit(self) -> np.ndarray:
        """The encoder's logit per lesion."""
        return self.X_img["image_logit"].to_numpy()


@dataclass
class Decomposition:
    """A margin split into feature contributions: the values the method saw, their SHAP values and the base."""

    values: pd.DataFrame
    shap: pd.DataFrame
    base: float


class FusionMethod:
    """One way of forming a variant's margin; subclass it and register an instance.

    Its hooks are called with the variant's ``fit`` (a :class:`~fusion_model.heads.variant.VariantFit`) or the
    ``fitter`` (a :class:`~fusion_model.heads.variant.VariantFitter`: ``fitter.head(features, learner)`` builds
    a registered head, ``fitter.config`` is the experiment).
    """

    name: str = ""
    label: str = ""                      # how reports and the CLI name it
    head_kind: str | None = None         # the variant's head that gives the margin: fusion, tabular, types
    needs: tuple[str, ...] = ()          # methods whose out-of-fold margins (same fold) this one uses
    learner: str | None = None           # a learner of its own; None: the variant's (fusion.head)
    configurable: bool = True            # fusion.method may name it (and auto consider it)
    reported: bool = False               # cross-validated beside the chosen method for the out-of-fold table
    needs_types: bool = False            # only with the lesions' types (targets: [malignancy, lesion_type])
    explained_heads: tuple[str, ...] = ()  # other heads explain shows beside the scoring head

    def candidate(self, types: LesionTypes | None) -> bool:
        """Whether ``fusion.method: auto`` considers it for these lesions."""
        return self.configurable and (types is not None or not self.needs_types)

    # ------------------------------------------------------------------ out of fold
    def fold_margins(self, fitter, data: HeadInputs, train_idx: np.ndarray, test_idx: np.ndarray,
                     learner: str, out: dict[str, np.ndarray]) -> np.ndarray | None:
        """The held-out lesions' margins of one fold, fitted on its training lesions (``out``: the margins of
        the methods in ``needs`` so far); None when the method fills its margins after the last fold."""
        return None

    def after_folds(self, fitter, data: HeadInputs, folds, learner: str, out: dict[str, np.ndarray],
                    facts: dict) -> np.ndarray | None:
        """Every lesion's out-of-fold margin, made after the last fold (``facts`` collects what ``fit_final``
        needs); None for a method whose folds made them."""
        return None

    # ------------------------------------------------------------------ the model for new lesions
    def fit_final(self, fitter, data: HeadInputs, facts: dict) -> tuple[dict, dict]:
        """Heads beyond the fusion and tabular ones, fitted on all lesions, and other fields of the variant."""
        return {}, {}

    def check(self, fit) -> None:
        """Refuse a fitted variant that lacks what this method scores with."""
        if self.head_kind is not None and self.head_kind not in fit.heads:
            raise ValueError(f"variant {fit.name}: method {self.name} needs its {self.head_kind} head")

    def margin(self, fit, X_img: pd.DataFrame, X_tab: pd.DataFrame) -> np.ndarray:
        """The variant's uncalibrated margin (log-odds) per lesion: by default its scoring head's."""
        return fit.scoring_head.decision_function(fit.scoring_frame(X_img, X_tab).to_numpy(dtype=float))

    def decompose(self, fit, X_img: pd.DataFrame, X_tab: pd.DataFrame,
                  margin: np.ndarray) -> Decomposition:
        """Exact SHAP contributions to ``margin``: by default the scoring head's own."""
        X = fit.scoring_frame(X_img, X_tab)
        contributions, base = fit.scoring_head.shap_values(X)
        return Decomposition(X, contributions, base)


# ---------------------------------------------------------------------------------- helpers
def head_fold_margins(fitter, X: pd.DataFrame, y: np.ndarray, train_idx, test_idx,
                      learner: str) -> np.ndarray:
    """A head over ``X``'s columns fitted on the fold's training lesions, scoring its held-out ones."""
    head = fitter.head(list(X.columns), learner).fit(X.values[train_idx], y[train_idx])
    return head.decision_function(X.values[test_idx])


def late_fusion_margin(image_logit, tabular_margin, weight: float):
    """The late-fusion mix of the image logit and the tabular head's margin (arrays, frames or numbers:
    also of their parts, since the mix is linear)."""
    return weight * image_logit + (1 - weight) * tabular_margin


def best_late_weight(labels: np.ndarray, image_logit: np.ndarray, tabular_margin: np.ndarray,
                     weights: list[float]) -> float:
    """The candidate weight whose late-fusion margin has the highest AUC (the first of equals)."""
    aucs = [nan_safe_auc(labels, late_fusion_margin(image_logit, tabular_margin, w)) for w in weights]
    return float(weights[int(np.nanargmax(aucs))])


def type_rates(codes: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Share of malignant lesions per type class among typed lesions (the overall share for a class with none)."""
    typed = codes >= 0
    overall = float(np.mean(y[typed])) if typed.any() else float(np.mean(y))
    return np.array([float(np.mean(y[codes == c])) if (codes == c).any() else overall for c in range(n_classes)])


def mixture_probability(type_margins: np.ndarray, temperature: float, rates: np.ndarray) -> np.ndarray:
    """sum_c softmax(margins / T)_c * r_c per lesion (``rates`` (classes,) or one row per lesion)."""
    return (softmax(np.asarray(type_margins, dtype=float) / temperature, axis=1) * rates).sum(axis=1)


def mixture_margin(type_margins: np.ndarray, temperature: float, rates: np.ndarray) -> np.ndarray:
    """The type mixture's log-odds."""
    p = np.clip(mixture_probability(type_margins, temperature, rates), MIXTURE_EPS, 1 - MIXTURE_EPS)
    return np.log(p) - np.log1p(-p)


@dataclass
class TypeMixture:
    """The type mixture's parameters: the type classes, the type head's temperature, each class's malignancy
    share among the training lesions."""

    classes: list[str]
    temperature: float
    rates: list[float]

    def margin(self, type_margins: np.ndarray) -> np.ndarray:
        """The mixture's log-odds from the type head's margins (lesions x classes)."""
        return mixture_margin(type_margins, self.temperature, np.asarray(self.rates, dtype=float))

    def to_manifest(self) -> dict:
        """Plain data for the model manifest."""
        return {"classes": list(self.classes), "temperature": self.temperature, "rates": list(self.rates)}

    @classmethod
    def from_manifest(cls, entry: dict) -> TypeMixture:
        """The parameters a manifest entry holds."""
        return cls(list(entry["classes"]), float(entry["temperature"]), [float(r) for r in entry["rates"]])


def type_mixture_contributions(fit, X: pd.DataFrame, margin: np.ndarray,
                               nodes: int = 48) -> tuple[pd.DataFrame, float]:
    """Contributions (log-odds) to a type-mixture variant's margin and its base (the mixture at the expected
    class margins): per class TreeSHAP, weighted by the path-averaged gradient of the mixture's log-odds."""
    mixture = fit.type_mixture
    temperature, rates = float(mixture.temperature), np.asarray(mixture.rates, dtype=float)
    values, expected = fit.heads["types"].shap_values(X)
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


# ---------------------------------------------------------------------------------- the built-ins
class ImageLogit(FusionMethod):
    """The encoder's logit alone: the imaging-only variant."""

    name, label = "image_logit", "image only"
    configurable = False

    def margin(self, fit, X_img, X_tab):
        return X_img["image_logit"].to_numpy(dtype=float)

    def decompose(self, fit, X_img, X_tab, margin):
        X = X_img[["image_logit"]]
        return Decomposition(X, X.astype(float).copy(), 0.0)


class FusionHead(FusionMethod):
    """A head over the imaging and the tabular features."""

    name, label, head_kind = "fusion_head", "fusion head", "fusion"
    reported = True
    explained_heads = ("tabular",)

    def fold_margins(self, fitter, data, train_idx, test_idx, learner, out):
        return head_fold_margins(fitter, data.X_fused, data.y, train_idx, test_idx, learner)


class TabularHead(FusionMethod):
    """The tabular head alone."""

    name, label, head_kind = "tabular_head", "tabular head", "tabular"
    reported = True

    def fold_margins(self, fitter, data, train_idx, test_idx, learner, out):
        return head_fold_margins(fitter, data.X_tab, data.y, train_idx, test_idx, learner)


class LateFusion(FusionMethod):
    """The image logit mixed with the tabular head's margin, the weight chosen within each training part."""

    name, label, head_kind = "late_fusion", "late fusion", "tabular"
    needs = ("tabular_head",)
    reported = True

    def fold_margins(self, fitter, data, train_idx, test_idx, learner, out):
        image_logit = data.image_logit
        weight = fitter.late_weight(data.X_tab.iloc[train_idx], image_logit[train_idx], data.y[train_idx],
                                    data.groups[train_idx], learner)
        return late_fusion_margin(image_logit[test_idx], out["tabular_head"][test_idx], weight)

    def check(self, fit):
        super().check(fit)
        if fit.late_fusion_weight is None:
            raise ValueError(f"variant {fit.name}: late fusion needs a weight")

    def margin(self, fit, X_img, X_tab):
        return fit.mix(X_img["image_logit"].to_numpy(dtype=float), super().margin(fit, X_img, X_tab))

    def decompose(self, fit, X_img, X_tab, margin):
        tabular = super().decompose(fit, X_img, X_tab, margin)
        image_logit = X_img["image_logit"].to_numpy(dtype=float)
        contributions = fit.mix(0.0, tabular.shap)
        contributions.insert(0, "image_logit", fit.mix(image_logit, 0.0))
        values = tabular.values.copy()
        values.insert(0, "image_logit", image_logit)
        return Decomposition(values, contributions, float(fit.mix(0.0, tabular.base)))


class TypeMixtureMethod(FusionMethod):
    """Malignancy through the lesion's type (an XGBoost multi-class head of its own)."""

    name, label, head_kind = "type_mixture", "type mixture", "types"
    learner = "xgboost"
    needs_types = True

    def after_folds(self, fitter, data, folds, learner, out, facts):
        """Out-of-fold type-mixture margins of every lesion (each fold's type head and rates from that fold's
        typed training lesions); the temperature, fitted on the typed lesions' out-of-fold type margins, goes
        to ``facts``."""
        types = data.types
        if types is None:
            raise ValueError("the type mixture needs the lesions' types (targets: [malignancy, lesion_type])")
        X, y, k = data.X_fused, data.y, len(types.classes)
        typed = types.codes >= 0
        margins, temperature = cv_type_margins(
            lambda: MultiClassHead.build(list(X.columns), fitter.config, fitter.threads, classes=k), X.values,
            types.codes, folds)
        rates = np.full((len(y), k), np.nan)
        for train_idx, test_idx in folds:
            fit_idx = train_idx[typed[train_idx]]
            rates[test_idx] = type_rates(types.codes[fit_idx], y[fit_idx], k)
        result = np.full(len(y), np.nan)
        done = np.isfinite(margins).all(axis=1)
        result[done] = mixture_margin(margins[done], temperature, rates[done])
        facts["type_temperature"] = temperature
        return result

    def fit_final(self, fitter, data, facts):
        types, X = data.types, data.X_fused
        typed, k = types.codes >= 0, len(types.classes)
        head = MultiClassHead.build(list(X.columns), fitter.config, fitter.threads, classes=k)
        head.fit(X.values[typed], types.codes[typed])
        mixture = TypeMixture(list(types.classes), facts["type_temperature"],
                              type_rates(types.codes, data.y, k).tolist())
        return {"types": head}, {"type_mixture": mixture}

    def check(self, fit):
        super().check(fit)
        if not fit.type_mixture:
            raise ValueError(f"variant {fit.name}: the type mixture needs its classes, temperature and rates")
        if fit.heads["types"].classes != len(fit.type_mixture.classes):
            raise ValueError(f"variant {fit.name}: the type head scores {fit.heads['types'].classes} classes, the "
                             f"mixture names {len(fit.type_mixture.classes)}")

    def margin(self, fit, X_img, X_tab):
        return fit.type_mixture.margin(fit.type_margins(X_img, X_tab))

    def decompose(self, fit, X_img, X_tab, margin):
        X = fit.scoring_frame(X_img, X_tab)
        contributions, base = type_mixture_contributions(fit, X, margin)
        return Decomposition(X, contributions, base)


FUSION_HEAD, LATE_FUSION, TABULAR_HEAD = FusionHead(), LateFusion(), TabularHead()
TYPE_MIXTURE, IMAGE_LOGIT = TypeMixtureMethod(), ImageLogit()


def method_order(names: Collection[str]) -> list[FusionMethod]:
    """The methods to cross-validate for ``names``, each after the methods it needs, in registry order."""
    wanted: list[str] = []

    def add(name: str) -> None:
        for need in FUSION_METHODS.get(name).needs:
            add(need)
        if name not in wanted:
            wanted.append(name)

    for name in FUSION_METHODS.names():
        if name in names:
            add(name)
    return [FUSION_METHODS.get(name) for name in wanted]
