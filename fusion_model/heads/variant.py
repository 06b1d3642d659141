"""One model variant, fitted: which head scores it, how its margin is formed, its calibration and thresholds.

A variant's margin (log-odds) comes from a fusion method (:mod:`fusion_model.heads.methods`: the image logit
alone, the fusion head, late fusion, the tabular head or the type mixture, or any method registered in
:data:`fusion_model.registry.FUSION_METHODS`), its heads from a registered learner (XGBoost or an
L2-regularised logistic regression, ``fusion.head``). With ``fusion.method: auto`` (and / or
``fusion.head: auto``) each outer fold chooses the method and learner by inner cross-validation on its
training part, so the reported out-of-fold AUC is that of the whole choice (nested, not optimistic); the model
for new lesions takes the candidate with the best out-of-fold AUC on all training lesions.

:class:`VariantFitter` cross-validates and fits them on out-of-fold encoder outputs; :class:`VariantFit`
is the result, which computes its own margin and probability and writes itself to the model manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fusion_model.config import ExperimentConfig
from fusion_model.heads.base import Head
from fusion_model.heads.calibration import Calibrator
from fusion_model.heads.methods import (FusionMethod, HeadInputs, TypeMixture, best_late_weight, head_fold_margins,
                                        late_fusion_margin, method_order)
from fusion_model.heads.subtype import LesionTypes
from fusion_model.heads.thresholds import operating_thresholds
from fusion_model.registry import FUSION_METHODS, LEARNERS, binary_learners
from fusion_model.splits import patient_grouped_folds
from fusion_model.stats import nan_safe_auc


@dataclass
class VariantFit:
    """A fitted variant; rows of every frame it is given are lesions, columns named features."""

    name: str
    method: str                                   # a registered fusion method (FUSION_METHODS)
    imaging_features: list[str]                   # image_logit, image_pc1 ...
    tabular_features: list[str]                   # empty for the imaging-only variant
    calibrator: Calibrator
    thresholds: dict[str, float]                  # operating thresholds on calibrated OOF probabilities
    oof_auc: dict[str, float]                     # out-of-fold AUC of each margin that was cross-validated
    heads: dict[str, Head] = field(default_factory=dict)  # kind ('fusion', 'tabular', 'types') -> head
    late_fusion_weight: float | None = None       # weight of the image logit
    selection: dict | None = None                 # fusion.method / head auto: candidates and the nested choice
    type_mixture: TypeMixture | None = None       # the type mixture's classes, temperature and rates

    def __post_init__(self) -> None:
        if self.method not in FUSION_METHODS:
            raise ValueError(f"variant {self.name}: unknown method {self.method!r}; choose from "
                             f"{FUSION_METHODS.names()}")
        self.fusion_method.check(self)

    # ----------------------------------------------------------------------------- scoring
    @property
    def fusion_method(self) -> FusionMethod:
        """The registered method that forms this variant's margin."""
        return FUSION_METHODS.get(self.method)

    @property
    def scoring_head_kind(self) -> str | None:
        """Which head gives the margin: 'fusion', 'tabular' (late fusion), 'types' (the type mixture) or None
        (image logit)."""
        return self.fusion_method.head_kind

    @property
    def scoring_head(self) -> Head | None:
        """The head that gives the margin (None for the image logit)."""
        kind = self.scoring_head_kind
        return None if kind is None else self.heads[kind]

    def head_frame(self, kind: str, X_img: pd.DataFrame, X_tab: pd.DataFrame) -> pd.DataFrame:
        """What the ``kind`` head sees, columns in its order (a feature the lesions lack is NaN)."""
        X_tab_v = X_tab.reindex(columns=self.tabular_features)
        if kind == "tabular":
            return X_tab_v
        return pd.concat([X_img[self.imaging_features], X_tab_v], axis=1)

    def scoring_frame(self, X_img: pd.DataFrame, X_tab: pd.DataFrame) -> pd.DataFrame:
        """What the scoring head sees (the image logit alone for the imaging-only variant)."""
        kind = self.scoring_head_kind
        return X_img[["image_logit"]] if kind is None else self.head_frame(kind, X_img, X_tab)

    def margin(self, X_img: pd.DataFrame, X_tab: pd.DataFrame) -> np.ndarray:
        """Uncalibrated margin (log-odds) per lesion."""
        return self.fusion_method.margin(self, X_img, X_tab)

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

    def to_manifest(self, save_head) -> dict:
        """Plain data for the manifest; ``save_head(key, head)`` writes a head and returns its file."""
        return {
            "method": self.method, "imaging_features": self.imaging_features,
            "tabular_features": self.tabular_features, "late_fusion_weight": self.late_fusion_weight,
            "calibrator": self.calibrator.to_dict(), "thresholds": self.thresholds, "oof_auc": self.oof_auc,
            "heads": {kind: {"file": save_head(self.head_key(kind), head), "features": head.feature_names,
                             "learner": head.learner}
                      for kind, head in self.heads.items()},
            "selection": self.selection,
            "type_mixture": None if self.type_mixture is None else self.type_mixture.to_manifest(),
        }

    @classmethod
    def from_manifest(cls, name: str, entry: dict, root: Path, config: ExperimentConfig) -> VariantFit:
        """The variant a manifest entry describes, its heads read from their files under ``root`` by their
        registered learners."""
        mixture = entry.get("type_mixture")
        heads = {kind: LEARNERS.get(h.get("learner", "xgboost")).load(Path(root) / h["file"], list(h["features"]),
                                                                      config)
                 for kind, h in entry["heads"].items()}
        return cls(
            name=name, method=entry["method"], imaging_features=list(entry["imaging_features"]),
            tabular_features=list(entry["tabular_features"]), calibrator=Calibrator.from_dict(entry["calibrator"]),
            thresholds=dict(entry["thresholds"]), oof_auc=dict(entry["oof_auc"]), heads=heads,
            late_fusion_weight=entry["late_fusion_weight"], selection=entry.get("selection"),
            type_mixture=TypeMixture.from_manifest(mixture) if mixture else None,
        )


class VariantFitter:
    """Cross-validates and fits variants on out-of-fold encoder outputs, as one experiment configures."""

    def __init__(self, config: ExperimentConfig, threads: int = 2):
        self.config = config
        self.threads = threads

    def head(self, feature_names: list[str], learner: str = "xgboost") -> Head:
        """An unfitted head over these features by a registered learner."""
        return LEARNERS.get(learner).build(feature_names, self.config, self.threads)

    def candidates(self, types: LesionTypes | None = None) -> list[tuple[str, str]]:
        """(method, learner) pairs a variant with tabular features chooses from, in order of preference: with
        ``fusion.method: auto`` every registered method that is a candidate for these lesions (the type mixture
        when their types are given), each with every learner of ``fusion.head`` unless it has its own."""
        fusion = self.config.fusion
        learners = binary_learners() if fusion.head == "auto" else [fusion.head]
        if fusion.method == "auto":
            methods = [m for m in FUSION_METHODS if m.candidate(types)]
        else:
            methods = [FUSION_METHODS.get(fusion.method)]
        pairs = [(m.name, learner) for learner in learners for m in methods if m.learner is None]
        return pairs + [(m.name, m.learner) for m in methods if m.learner is not None]

    def cv_margins(self, X: pd.DataFrame, y: np.ndarray, folds, learner: str = "xgboost") -> np.ndarray:
        """Out-of-fold margins of a head over ``X``'s columns."""
        out = np.full(len(y), np.nan)
        for train_idx, test_idx in folds:
            out[test_idx] = head_fold_margins(self, X, y, train_idx, test_idx, learner)
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
        """Out-of-fold margins of a variant's methods over ``folds`` (each fitted on the other folds only).

        ``X_tab`` holds the variant's tabular features (none for the imaging-only variant); a method's needs
        come with it (the tabular head's margins with late fusion's). ``on_fold(k, margins)`` is called after
        each fold (a hyperparameter search prunes with it). A method that fills its margins after the last fold
        (the type mixture, whose temperature is fitted on all folds' type margins) puts what it learnt in
        ``facts``.
        """
        out = {"image_logit": X_img["image_logit"].to_numpy()}
        if X_tab.shape[1] == 0:
            return out
        data = HeadInputs(X_img, X_tab, y, groups, types)
        order = method_order(methods)
        wanted = {method.name for method in order}
        for name in FUSION_METHODS.names():  # the margins in the registry's order
            if name in wanted:
                out[name] = np.full(len(y), np.nan)
        for k, (train_idx, test_idx) in enumerate(folds):
            for method in order:
                margins = method.fold_margins(self, data, train_idx, test_idx, learner, out)
                if margins is not None:
                    out[method.name][test_idx] = margins
            if on_fold is not None:
                on_fold(k, out)
        facts = {} if facts is None else facts
        for method in order:
            margins = method.after_folds(self, data, folds, learner, out, facts)
            if margins is not None:
                out[method.name] = margins
        return out

    def learner_oof_margins(self, X_img: pd.DataFrame, X_tab: pd.DataFrame, y: np.ndarray, groups: np.ndarray,
                            folds, candidates: list[tuple[str, str]], types: LesionTypes | None = None,
                            reported: bool = False, facts: dict | None = None) -> dict[str, dict[str, np.ndarray]]:
        """Each candidate learner's out-of-fold margins of its candidate methods (and, with ``reported``, of the
        methods every fit reports)."""
        always = [m.name for m in FUSION_METHODS if m.reported] if reported else []
        return {lr: self.oof_margins(X_img, X_tab, y, groups, folds,
                                     methods=always + [m for m, c in candidates if c == lr and m not in always],
                                     learner=lr, types=types, facts=facts)
                for lr in dict.fromkeys(c for _, c in candidates)}

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
            inner_types = None if types is None else LesionTypes(types.codes[train_idx], types.classes)
            inner_margins = self.learner_oof_margins(X_img.iloc[train_idx], X_tab.iloc[train_idx], y_in, g_in, inner,
                                                     candidates, inner_types)
            scores = {(m, lr): nan_safe_auc(y_in, inner_margins[lr][m]) for m, lr in candidates}
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
        outer = self.learner_oof_margins(X_img, X_tab, y, groups, folds, candidates, types)
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
        heads: dict[str, Head] = {}
        weight, selection, extra = None, None, {}
        if X_tab.shape[1] == 0:
            method, margins = "image_logit", self.oof_margins(X_img, X_tab, y, groups, folds)
        else:
            candidates = self.candidates(types)
            facts: dict = {}
            outer = self.learner_oof_margins(X_img, X_tab, y, groups, folds, candidates, types, reported=True,
                                             facts=facts)
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
            data = HeadInputs(X_img, X_tab, y, groups, types)
            heads["fusion"] = self.head(list(data.X_fused.columns), learner).fit(data.X_fused.values, y)
            heads["tabular"] = self.head(list(X_tab.columns), learner).fit(X_tab.values, y)
            weight = self.late_weight(X_tab, margins["image_logit"], y, groups, learner)
            more_heads, extra = FUSION_METHODS.get(method).fit_final(self, data, facts)
            heads.update(more_heads)
        calibrator = Calibrator.fit(self.config.calibration.method, margins[method], y)
        probabilities = calibrator(margins[method])
        fit = VariantFit(name, method, list(X_img.columns), list(X_tab.columns), calibrator,
                         operating_thresholds(y, probabilities),
                         {kind: nan_safe_auc(y, m) for kind, m in margins.items()}, heads, weight, selection,
                         **extra)
        return fit, probabilities


def min_class_patients(y: np.ndarray, groups: np.ndarray) -> int:
    """Patients in the smaller class (bounds the number of patient-grouped folds)."""
    return min(len(np.unique(groups[y == c])) for c in np.unique(y))
