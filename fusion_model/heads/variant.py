"""One model variant, fitted: which head scores it, how its margin is formed, its calibration and thresholds.

A variant's margin (log-odds) comes from one of four methods:

- ``image_logit``: the encoder's logit alone (the imaging-only variant);
- ``fusion_head``: a head over the imaging features and the variant's tabular features;
- ``late_fusion``: ``w * image_logit + (1 - w) * tabular margin``, a head over the tabular
  features mixed with the image logit, ``w`` chosen by inner cross-validation (or fixed by the config);
- ``tabular_head``: the tabular head alone (the image adds nothing the features do not already say);
- ``type_mixture`` (with ``targets: [malignancy, lesion_type]``): malignancy through the lesion's type, the
  probability ``sum_c P(type c | lesion) * r_c`` where ``P`` is a multi-class head over the fusion head's inputs
  (the variant's lesion-type head: XGBoost ``multi:softprob``, temperature fitted on its out-of-fold margins) and
  ``r_c`` the share of malignant lesions among the training lesions of type c (0 or 1 where a type decides
  malignancy, between where it does not). Six labelled types teach the head more than benign / malignant does;
  lesions of type ``other`` or unknown type are scored too, but only typed lesions train the head.

Heads are XGBoost or an L2-regularised logistic regression (``fusion.head``). With ``fusion.method: auto``
(and / or ``fusion.head: auto``) each outer fold chooses the method and learner by inner cross-validation on
its training part, so the reported out-of-fold AUC is that of the whole choice (nested, not optimistic); the
model for new lesions takes the candidate with the best out-of-fold AUC on all training lesions.

:class:`VariantFitter` cross-validates and fits them on out-of-fold encoder outputs; :class:`VariantFit`
is the result, which computes its own margin and probability and writes itself to the model manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import softmax

from fusion_model.config import ExperimentConfig
from fusion_model.heads.calibration import Calibrator
from fusion_model.heads.logistic import LogisticHead
from fusion_model.heads.subtype import LesionTypes, MultiClassHead, cv_type_margins
from fusion_model.heads.thresholds import operating_thresholds
from fusion_model.heads.xgb import XGBHead
from fusion_model.splits import patient_grouped_folds
from fusion_model.stats import nan_safe_auc

METHODS = ("image_logit", "fusion_head", "late_fusion", "tabular_head", "type_mixture")
HEAD_METHODS = ("fusion_head", "late_fusion", "tabular_head")
LEARNERS = ("xgboost", "logistic")
MIXTURE_EPS = 1e-6  # the type mixture's probability is kept in [eps, 1 - eps] before its log-odds


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
    heads: dict[str, XGBHead | LogisticHead] = field(default_factory=dict)  # kind ('fusion', 'tabular') -> head
    late_fusion_weight: float | None = None       # weight of the image logit
    selection: dict | None = None                 # fusion.method / head auto: candidates and the nested choice
    type_mixture: dict | None = None              # classes, temperature, rates (the type-mixture method)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"variant {self.name}: unknown method {self.method!r}; choose from {list(METHODS)}")
        if self.method != "image_logit" and self.scoring_head_kind not in self.heads:
            raise ValueError(f"variant {self.name}: method {self.method} needs its {self.scoring_head_kind} head")
        if self.method == "late_fusion" and self.late_fusion_weight is None:
            raise ValueError(f"variant {self.name}: late fusion needs a weight")
        if self.method == "type_mixture" and not self.type_mixture:
            raise ValueError(f"variant {self.name}: the type mixture needs its classes, temperature and rates")

    # ----------------------------------------------------------------------------- scoring
    @property
    def scoring_head_kind(self) -> str | None:
        """Which head gives the margin: 'fusion', 'tabular' (late fusion), 'types' (the type mixture) or None
        (image logit)."""
        return {"fusion_head": "fusion", "late_fusion": "tabular", "tabular_head": "tabular",
                "type_mixture": "types"}.get(self.method)

    @property
    def scoring_head(self) -> XGBHead | None:
        """The head that gives the margin (None for the image logit)."""
        kind = self.scoring_head_kind
        return None if kind is None else self.heads[kind]

    def head_frame(self, kind: str, X_img: pd.DataFrame, X_tab: pd.DataFrame) -> pd.DataFrame:
        """What the ``kind`` head sees, columns in its order (a feature the lesions lack is NaN)."""
        X_tab_v = X_tab.reindex(columns=self.tabular_features)
        if kind in ("fusion", "types"):
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
        if self.method == "type_mixture":
            return mixture_margin(self.type_margins(X_img, X_tab), self.type_mixture["temperature"],
                                  np.asarray(self.type_mixture["rates"], dtype=float))
        head_margin = self.scoring_head.decision_function(self.scoring_frame(X_img, X_tab).to_numpy(dtype=float))
        if self.method in ("fusion_head", "tabular_head"):
            return head_margin
        return self.mix(image_logit, head_margin)

    def type_margins(self, X_img: pd.DataFrame, X_tab: pd.DataFrame) -> np.ndarray:
        """The type head's margins (lesions x classes), for the type mixture."""
        return self.heads["types"].margins(self.head_frame("types", X_img, X_tab).to_numpy(dtype=float))

    def mix(self, image_part, tabular_part):
        """Late fusion's mix of an image part and a tabular part: margins, or additive contributions to them."""
        return late_fusion_margin(image_part, tabular_part, self.late_fusion_weight)

    def probability(self, X_img: pd.DataFrame, X_tab: pd.DataFrame) -> np.ndarray:
        """Calibrated malignancy probability per lesion."""
        return self.calibrator(self.margin(X_img, X_tab))

    @property
    def score_oof_auc(self) -> float:
        """Out-of-fold AUC of the margin this variant outputs (with an automatic choice: of the nested choice)."""
        if self.selection is not None:
            return self.selection["nested_oof_auc"]
        return self.oof_auc[self.method]

    @property
    def learner(self) -> str | None:
        """The scoring head's learner (xgboost or logistic); None for the image logit."""
        head = self.scoring_head
        return None if head is None else head.learner

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
            "heads": {kind: {"file": save_head(self.head_key(kind), head), "features": head.feature_names,
                             "learner": head.learner}
                      for kind, head in self.heads.items()},
            "selection": self.selection, "type_mixture": self.type_mixture,
        }

    @classmethod
    def from_manifest(cls, name: str, entry: dict, load_head: Callable[..., XGBHead]) -> "VariantFit":
        """The variant a manifest entry describes; ``load_head(file, features, learner[, classes])`` reads a head
        (``classes`` for a multi-class head)."""
        mixture = entry.get("type_mixture")

        def head(h: dict):
            learner = h.get("learner", "xgboost")
            if learner == MultiClassHead.learner:  # the type mixture's head: its classes come with it
                return load_head(h["file"], list(h["features"]), learner, len(mixture["classes"]) if mixture else 0)
            return load_head(h["file"], list(h["features"]), learner)

        return cls(
            name=name, method=entry["method"], imaging_features=list(entry["imaging_features"]),
            tabular_features=list(entry["tabular_features"]), calibrator=Calibrator.from_dict(entry["calibrator"]),
            thresholds=dict(entry["thresholds"]), oof_auc=dict(entry["oof_auc"]),
            heads={kind: head(h) for kind, h in entry["heads"].items()},
            late_fusion_weight=entry["late_fusion_weight"], selection=entry.get("selection"), type_mixture=mixture,
        )


class VariantFitter:
    """Cross-validates and fits variants on out-of-fold encoder outputs, as one experiment configures."""

    def __init__(self, config: ExperimentConfig, threads: int = 2):
        self.config = config
        self.threads = threads

    def head(self, feature_names: list[str], learner: str = "xgboost") -> XGBHead | LogisticHead:
        """An unfitted head over these features: XGBoost or the logistic head."""
        if learner == "logistic":
            return LogisticHead(feature_names, self.config.fusion.logistic_c, seed=self.config.seed)
        return XGBHead(self.config.xgboost, feature_names, seed=self.config.seed, threads=self.threads)

    def candidates(self, types: LesionTypes | None = None) -> list[tuple[str, str]]:
        """(method, learner) pairs a variant with tabular features chooses from, in order of preference; the
        type mixture (an XGBoost multi-class head) is a candidate of ``auto`` when the lesions' types are given."""
        fusion = self.config.fusion
        if fusion.method == "type_mixture":
            return [("type_mixture", "xgboost")]
        methods = HEAD_METHODS if fusion.method == "auto" else (fusion.method,)
        learners = LEARNERS if fusion.head == "auto" else (fusion.head,)
        pairs = [(m, learner) for learner in learners for m in methods]
        if fusion.method == "auto" and types is not None:
            pairs.append(("type_mixture", "xgboost"))
        return pairs

    def type_head(self, feature_names: list[str], n_classes: int) -> MultiClassHead:
        """An unfitted multi-class head (the type mixture's)."""
        return MultiClassHead(self.config.xgboost, feature_names, n_classes, seed=self.config.seed,
                              threads=self.threads)

    def type_mixture_oof(self, X: pd.DataFrame, y: np.ndarray, types: LesionTypes, folds) -> tuple[np.ndarray, float]:
        """Out-of-fold type-mixture margins of every lesion (each fold's type head and rates from that fold's
        typed training lesions) and the temperature fitted on the typed lesions' out-of-fold type margins."""
        k = len(types.classes)
        typed = types.codes >= 0
        margins, temperature = cv_type_margins(lambda: self.type_head(list(X.columns), k), X.values, types.codes,
                                               folds)
        rates = np.full((len(y), k), np.nan)
        for train_idx, test_idx in folds:
            fit_idx = train_idx[typed[train_idx]]
            rates[test_idx] = type_rates(types.codes[fit_idx], y[fit_idx], k)
        out = np.full(len(y), np.nan)
        done = np.isfinite(margins).all(axis=1)
        out[done] = mixture_margin(margins[done], temperature, rates[done])
        return out, temperature

    def cv_margins(self, X: pd.DataFrame, y: np.ndarray, folds, learner: str = "xgboost") -> np.ndarray:
        """Out-of-fold margins of a head over ``X``'s columns."""
        out = np.full(len(y), np.nan)
        for train_idx, test_idx in folds:
            head = self.head(list(X.columns), learner).fit(X.values[train_idx], y[train_idx])
            out[test_idx] = head.decision_function(X.values[test_idx])
        return out

    def late_weight(self, X_tab: pd.DataFrame, image_logit: np.ndarray, y: np.ndarray, groups: np.ndarray,
                    learner: str = "xgboost") -> float:
        """Weight of the image logit: fixed by the config, or chosen by inner CV of the tabular head."""
        fusion = self.config.fusion
        if fusion.fixed_weight is not None:
            return float(fusion.fixed_weight)
        inner = patient_grouped_folds(y, groups, min(fusion.inner_folds, min_class_patients(y, groups)),
                                      self.config.seed + 1)
        return best_late_weight(y, image_logit, self.cv_margins(X_tab, y, inner, learner), fusion.late_fusion_weights)

    def oof_margins(self, X_img: pd.DataFrame, X_tab: pd.DataFrame, y: np.ndarray, groups: np.ndarray, folds,
                    methods=("fusion_head", "late_fusion"), on_fold=None, learner: str = "xgboost",
                    types: LesionTypes | None = None, facts: dict | None = None) -> dict[str, np.ndarray]:
        """Out-of-fold margins of a variant's heads over ``folds`` (each fitted on the other folds only).

        ``X_tab`` holds the variant's tabular features (none for the imaging-only variant); the tabular head's
        margins come with late fusion's (``tabular_head``). ``on_fold(k, margins)`` is called after each fold
        (a hyperparameter search prunes with it). The type mixture (in ``methods``, with ``types``) is filled
        after the last fold: its temperature is fitted on all folds' type margins (put in ``facts``).
        """
        image_logit = X_img["image_logit"].to_numpy()
        out = {"image_logit": image_logit}
        if X_tab.shape[1] == 0:
            return out
        X_fused = pd.concat([X_img, X_tab], axis=1)
        late = "late_fusion" in methods
        tabular = late or "tabular_head" in methods
        for method in ("fusion_head", "late_fusion", "tabular_head", "type_mixture"):
            if method in methods or (method == "tabular_head" and tabular):
                out[method] = np.full(len(y), np.nan)  # the type mixture's after the last fold
        for k, (train_idx, test_idx) in enumerate(folds):
            if "fusion_head" in methods:
                head = self.head(list(X_fused.columns), learner).fit(X_fused.values[train_idx], y[train_idx])
                out["fusion_head"][test_idx] = head.decision_function(X_fused.values[test_idx])
            if tabular:
                head = self.head(list(X_tab.columns), learner).fit(X_tab.values[train_idx], y[train_idx])
                out["tabular_head"][test_idx] = head.decision_function(X_tab.values[test_idx])
            if late:
                w = self.late_weight(X_tab.iloc[train_idx], image_logit[train_idx], y[train_idx], groups[train_idx],
                                     learner)
                out["late_fusion"][test_idx] = late_fusion_margin(image_logit[test_idx],
                                                                  out["tabular_head"][test_idx], w)
            if on_fold is not None:
                on_fold(k, out)
        if "type_mixture" in methods:
            if types is None:
                raise ValueError("the type mixture needs the lesions' types (targets: [malignancy, lesion_type])")
            out["type_mixture"], temperature = self.type_mixture_oof(X_fused, y, types, folds)
            if facts is not None:
                facts["type_temperature"] = temperature
        return out

    def nested_choice(self, X_img: pd.DataFrame, X_tab: pd.DataFrame, y: np.ndarray, groups: np.ndarray, folds,
                      outer: dict[str, dict[str, np.ndarray]], types: LesionTypes | None = None
                      ) -> tuple[np.ndarray, list[str]]:
        """The out-of-fold margin of the automatic choice: in each outer fold the (method, learner) with the best
        inner cross-validated AUC on that fold's training part scores its held-out lesions (``outer``: each
        learner's out-of-fold margins). Returns the margins and each fold's choice."""
        candidates = self.candidates(types)
        margins = np.full(len(y), np.nan)
        choices = []
        for train_idx, test_idx in folds:
            y_in, g_in = y[train_idx], groups[train_idx]
            inner = patient_grouped_folds(y_in, g_in, min(self.config.fusion.inner_folds, min_class_patients(y_in, g_in)),
                                          self.config.seed + 2)
            scores = {}
            for learner in dict.fromkeys(lr for _, lr in candidates):
                methods = [m for m, lr in candidates if lr == learner]
                inner_types = None if types is None else LesionTypes(types.codes[train_idx], types.classes)
                inner_margins = self.oof_margins(X_img.iloc[train_idx], X_tab.iloc[train_idx], y_in, g_in, inner,
                                                 methods=methods, learner=learner, types=inner_types)
                for m in methods:
                    scores[(m, learner)] = nan_safe_auc(y_in, inner_margins[m])
            best = max(candidates, key=lambda c: (np.nan_to_num(scores[c], nan=-1.0), -candidates.index(c)))
            margins[test_idx] = outer[best[1]][best[0]][test_idx]
            choices.append(f"{best[0]}/{best[1]}")
        return margins, choices

    def selected_margins(self, X_img: pd.DataFrame, X_tab: pd.DataFrame, y: np.ndarray, groups: np.ndarray,
                         folds, types: LesionTypes | None = None) -> np.ndarray:
        """The out-of-fold margin a fitted variant reports (the nested choice when the config leaves it open)."""
        if X_tab.shape[1] == 0:
            return X_img["image_logit"].to_numpy()
        candidates = self.candidates(types)
        outer = {lr: self.oof_margins(X_img, X_tab, y, groups, folds, methods=[m for m, c in candidates if c == lr],
                                      learner=lr, types=types) for lr in dict.fromkeys(c for _, c in candidates)}
        if len(candidates) == 1:
            method, learner = candidates[0]
            return outer[learner][method]
        return self.nested_choice(X_img, X_tab, y, groups, folds, outer, types)[0]

    def fit(self, name: str, X_img: pd.DataFrame, X_tab: pd.DataFrame, y: np.ndarray, groups: np.ndarray,
            folds, types: LesionTypes | None = None) -> tuple[VariantFit, np.ndarray]:
        """The fitted variant and its calibrated out-of-fold probabilities.

        Heads are cross-validated over ``folds`` (the calibrator and thresholds are fitted on those
        out-of-fold margins), then refitted on all lesions for new data. ``types``: the lesions' types, for the
        type mixture (``fusion.method: type_mixture``, or a candidate of ``auto``).
        """
        heads: dict[str, XGBHead | LogisticHead | MultiClassHead] = {}
        weight, selection, mixture = None, None, None
        if X_tab.shape[1] == 0:
            method, margins = "image_logit", self.oof_margins(X_img, X_tab, y, groups, folds)
        else:
            candidates = self.candidates(types)
            learners = list(dict.fromkeys(lr for _, lr in candidates))
            facts: dict = {}
            outer = {lr: self.oof_margins(X_img, X_tab, y, groups, folds,
                                          methods=HEAD_METHODS + tuple(m for m, c in candidates
                                                                       if c == lr and m == "type_mixture"),
                                          learner=lr, types=types, facts=facts)
                     for lr in learners}
            if len(candidates) == 1:
                method, learner = candidates[0]
            else:
                nested, choices = self.nested_choice(X_img, X_tab, y, groups, folds, outer, types)
                aucs = {f"{m}/{lr}": nan_safe_auc(y, outer[lr][m]) for m, lr in candidates}
                method, learner = max(candidates, key=lambda c: (np.nan_to_num(aucs[f"{c[0]}/{c[1]}"], nan=-1.0),
                                                                  -candidates.index(c)))
                selection = {"candidates_oof_auc": aucs, "fold_choices": choices,
                             "nested_oof_auc": nan_safe_auc(y, nested), "chosen": f"{method}/{learner}"}
            margins = outer[learner]
            X_fused = pd.concat([X_img, X_tab], axis=1)
            heads["fusion"] = self.head(list(X_fused.columns), learner).fit(X_fused.values, y)
            heads["tabular"] = self.head(list(X_tab.columns), learner).fit(X_tab.values, y)
            weight = self.late_weight(X_tab, margins["image_logit"], y, groups, learner)
            if method == "type_mixture":
                typed = types.codes >= 0
                k = len(types.classes)
                heads["types"] = self.type_head(list(X_fused.columns), k).fit(X_fused.values[typed],
                                                                                types.codes[typed])
                mixture = {"classes": list(types.classes), "temperature": facts["type_temperature"],
                           "rates": type_rates(types.codes, y, k).tolist()}
        calibrator = Calibrator.fit(self.config.calibration.method, margins[method], y)
        probabilities = calibrator(margins[method])
        fit = VariantFit(name, method, list(X_img.columns), list(X_tab.columns), calibrator,
                         operating_thresholds(y, probabilities),
                         {kind: nan_safe_auc(y, m) for kind, m in margins.items()}, heads, weight, selection,
                         mixture)
        return fit, probabilities


def min_class_patients(y: np.ndarray, groups: np.ndarray) -> int:
    """Patients in the smaller class (bounds the number of patient-grouped folds)."""
    return min(len(np.unique(groups[y == c])) for c in np.unique(y))
