"""`FusionModel`: encoder + heads for every model variant, with scikit-learn's estimator contract.

``fit(data, labels, patient_ids)``:

1. the image encoder is fitted over patient-grouped, label-stratified folds; each lesion's
   out-of-fold (OOF) logit and embedding come from a fold model that never saw its patient;
2. for each variant (imaging; imaging + radiological; imaging + clinical/biological; all) the
   heads are cross-validated over the same folds on those OOF encoder outputs: an XGBoost
   fusion head (tabular + image features) and an XGBoost tabular head whose logit is
   averaged with the image logit (late fusion; its weight chosen by inner cross-validation
   on the training part of each fold);
3. a calibrator and the operating thresholds (Youden; 90% and 95% sensitivity) are fitted
   on the OOF scores, i.e. on training data only;
4. final heads are fitted on all training lesions; new lesions go through the final encoder.

``predict_variants`` gives every variant's calibrated probability; ``predict_proba`` the
primary variant's, as an (n, 2) array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from fusion_model.encoder.estimator import ImageEncoder
from fusion_model.errors import UserInputError
from fusion_model.experiment import VARIANT_GROUPS, ExperimentConfig
from fusion_model.features.table import fit_pca, imaging_features, tabular_features
from fusion_model.heads.baselines import rule_scores
from fusion_model.heads.calibration import apply_calibrator, fit_calibrator
from fusion_model.heads.thresholds import operating_thresholds
from fusion_model.heads.xgb import XGBHead
from fusion_model.splits import patient_grouped_folds


@dataclass
class LesionData:
    """What the model sees of a set of lesions; rows of every part follow ``table.index`` (lesion_id)."""

    table: pd.DataFrame
    image_features: pd.DataFrame
    crops: np.ndarray
    extra_features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.crops) != len(self.table):
            raise ValueError(f"{len(self.crops)} crops for {len(self.table)} lesions")

    @property
    def lesion_ids(self) -> list[str]:
        return list(self.table.index)

    def subset(self, positions: np.ndarray) -> "LesionData":
        ids = self.table.index[positions]
        return LesionData(self.table.loc[ids], self.image_features.reindex(ids), self.crops[positions],
                          self.extra_features)


def nan_safe_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUC over the lesions that have a score; NaN when they hold one class only."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=float)
    keep = ~np.isnan(scores)
    if len(np.unique(labels[keep])) < 2:
        return float("nan")
    return float(roc_auc_score(labels[keep], scores[keep]))


def _best_late_weight(labels: np.ndarray, image: np.ndarray, tabular: np.ndarray, weights: list[float]) -> float:
    aucs = [nan_safe_auc(labels, w * image + (1 - w) * tabular) for w in weights]
    return float(weights[int(np.nanargmax(aucs))])


class FusionModel:
    def __init__(self, config: ExperimentConfig, progress: bool = True, checkpoint_dir=None):
        self.config = config
        self.progress = progress
        self.checkpoint_dir = checkpoint_dir

    # ----------------------------------------------------------------------------- fitting
    def _encoder_config(self):
        return self.config.encoder.model_copy(update={"folds": self.config.split.folds, "seed": self.config.seed})

    def _head(self, names: list[str]) -> XGBHead:
        return XGBHead(self.config.xgboost, names, seed=self.config.seed)

    def _cv_margins(self, X: pd.DataFrame, y: np.ndarray, folds) -> np.ndarray:
        out = np.full(len(y), np.nan)
        for train_idx, test_idx in folds:
            out[test_idx] = self._head(list(X.columns)).fit(X.values[train_idx], y[train_idx]).decision_function(
                X.values[test_idx])
        return out

    def _late_weight(self, X_tab: pd.DataFrame, image: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
        """Weight of the image logit: fixed by the config, or chosen by inner CV of the tabular head."""
        if self.config.fusion.fixed_weight is not None:
            return float(self.config.fusion.fixed_weight)
        inner = patient_grouped_folds(y, groups, min(self.config.fusion.inner_folds, _min_class_patients(y, groups)),
                                      self.config.seed + 1)
        tab = self._cv_margins(X_tab, y, inner)
        return _best_late_weight(y, image, tab, self.config.fusion.late_fusion_weights)

    def variant_oof_margins(self, variant: str, X_img: pd.DataFrame, X_tab: pd.DataFrame, y: np.ndarray,
                            groups: np.ndarray, folds, methods=("fusion_head", "late_fusion"),
                            on_fold=None) -> dict[str, np.ndarray]:
        """Out-of-fold margins of a variant's heads over ``folds`` (fitted on the other folds only).

        ``on_fold(k, margins)`` is called after each fold (hyperparameter search prunes with it).
        """
        image_logit = X_img["image_logit"].to_numpy()
        if variant == "imaging":
            return {"image_logit": image_logit}
        tab_names = self.variant_tabular_features(variant)
        X_fused = pd.concat([X_img, X_tab[tab_names]], axis=1)
        out = {"image_logit": image_logit}
        if "fusion_head" in methods:
            out["fusion_head"] = np.full(len(y), np.nan)
        if "late_fusion" in methods:
            out["late_fusion"] = np.full(len(y), np.nan)
            out["tabular_head"] = np.full(len(y), np.nan)
        for k, (train_idx, test_idx) in enumerate(folds):
            if "fusion_head" in methods:
                head = self._head(list(X_fused.columns)).fit(X_fused.values[train_idx], y[train_idx])
                out["fusion_head"][test_idx] = head.decision_function(X_fused.values[test_idx])
            if "late_fusion" in methods:
                X_t = X_tab[tab_names]
                head = self._head(tab_names).fit(X_t.values[train_idx], y[train_idx])
                tab = head.decision_function(X_t.values[test_idx])
                out["tabular_head"][test_idx] = tab
                w = self._late_weight(X_t.iloc[train_idx], image_logit[train_idx], y[train_idx], groups[train_idx])
                out["late_fusion"][test_idx] = w * image_logit[test_idx] + (1 - w) * tab
            if on_fold is not None:
                on_fold(k, out)
        return out

    def variant_tabular_features(self, variant: str) -> list[str]:
        return [n for g in VARIANT_GROUPS[variant] if g != "imaging" for n in self.tabular_groups_[g]]

    def fit(self, data: LesionData, labels, patient_ids) -> "FusionModel":
        y = np.asarray(labels).astype(int)
        groups = np.asarray(patient_ids)
        if len(y) != len(data.table) or len(groups) != len(y):
            raise UserInputError("labels and patient ids must have one entry per lesion")
        encoder = ImageEncoder(self._encoder_config(), self.config.preprocess.hu_window, self.checkpoint_dir,
                               self.progress).fit(data.crops, y, groups)
        return self.fit_heads(data, y, groups, encoder)

    def fit_heads(self, data: LesionData, y: np.ndarray, groups: np.ndarray, encoder: ImageEncoder) -> "FusionModel":
        """Heads, calibration and thresholds on a fitted encoder's out-of-fold outputs, over its folds."""
        cfg = self.config
        self.encoder_ = encoder
        folds = encoder.folds_  # the heads are cross-validated over the encoder's folds
        self.crop_channels_ = int(data.crops.shape[1])
        self.pca_ = fit_pca(encoder.oof_embeddings_, cfg.features.embedding_components)
        X_img = imaging_features(encoder.oof_logits_, encoder.oof_embeddings_, self.pca_, data.table.index)
        X_tab, self.tabular_groups_ = tabular_features(data.table, data.image_features, cfg.features,
                                                       data.extra_features)
        self.variants_: dict[str, dict] = {}
        self.heads_: dict[str, XGBHead] = {}
        oof = pd.DataFrame({"label": y, "patient_id": groups}, index=data.table.index)
        for variant in cfg.variants:
            tab_names = self.variant_tabular_features(variant)
            if variant != "imaging" and not tab_names:
                continue  # e.g. no clinical data in this cohort: the variant would equal 'imaging'
            info: dict = {"tabular_features": tab_names, "imaging_features": list(X_img.columns)}
            margins = self.variant_oof_margins(variant, X_img, X_tab, y, groups, folds)
            if variant == "imaging":
                method = "image_logit"
            else:
                method = cfg.fusion.method
                X_fused = pd.concat([X_img, X_tab[tab_names]], axis=1)
                self.heads_[f"{variant}_fusion"] = self._head(list(X_fused.columns)).fit(X_fused.values, y)
                self.heads_[f"{variant}_tabular"] = self._head(tab_names).fit(X_tab[tab_names].values, y)
                info["late_fusion_weight"] = self._late_weight(X_tab[tab_names], margins["image_logit"], y, groups)
            info["method"] = method
            info["oof_auc"] = {name: nan_safe_auc(y, m) for name, m in margins.items()}
            info["calibrator"] = fit_calibrator(cfg.calibration.method, margins[method], y)
            probabilities = apply_calibrator(info["calibrator"], margins[method])
            info["thresholds"] = operating_thresholds(y, probabilities)
            self.variants_[variant] = info
            oof[f"p_{variant}"] = probabilities
        rules = rule_scores(data.table, cfg.baselines)
        for rule in rules:
            oof[f"rule_{rule}"] = rules[rule]
        self.baseline_oof_auc_ = {rule: nan_safe_auc(y, rules[rule].to_numpy()) for rule in rules}
        self.oof_ = oof
        self.oof_auc_ = {v: info["oof_auc"][info["method"]] for v, info in self.variants_.items()}
        return self

    # --------------------------------------------------------------------------- prediction
    def _check_fitted(self) -> None:
        if not hasattr(self, "variants_"):
            raise RuntimeError("FusionModel is not fitted; call fit() or FusionModel.load()")

    def feature_frames(self, data: LesionData) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The heads' inputs for new lesions: imaging features (one encoder pass) and tabular features."""
        self._check_fitted()
        if data.crops.shape[1] != self.crop_channels_:
            raise UserInputError(f"the model was trained on crops of {self.crop_channels_} channels, these have "
                                 f"{data.crops.shape[1]}; the cohort must have the same phases as the training cohort")
        logits, embeddings = self.encoder_.predict_outputs(data.crops)
        X_img = imaging_features(logits, embeddings, self.pca_, data.table.index)
        X_tab, _ = tabular_features(data.table, data.image_features, self.config.features, data.extra_features)
        return X_img, X_tab

    def head_input(self, variant: str, X_img: pd.DataFrame, X_tab: pd.DataFrame) -> tuple[str, pd.DataFrame]:
        """Which head scores a variant and the matrix it sees (columns in the head's order)."""
        info = self.variants_[variant]
        if variant == "imaging":
            return "image_logit", X_img[["image_logit"]]
        X_tab_v = X_tab.reindex(columns=info["tabular_features"])
        if info["method"] == "fusion_head":
            return f"{variant}_fusion", pd.concat([X_img[info["imaging_features"]], X_tab_v], axis=1)
        return f"{variant}_tabular", X_tab_v

    def decision_variants(self, data: LesionData, frames: tuple[pd.DataFrame, pd.DataFrame] | None = None
                          ) -> pd.DataFrame:
        """Uncalibrated margins (log-odds) of every variant; index lesion_id."""
        X_img, X_tab = frames if frames is not None else self.feature_frames(data)
        out = pd.DataFrame(index=data.table.index)
        for variant, info in self.variants_.items():
            head, X = self.head_input(variant, X_img, X_tab)
            if head == "image_logit":
                out[variant] = X_img["image_logit"]
            elif info["method"] == "fusion_head":
                out[variant] = self.heads_[head].decision_function(X.values)
            else:
                w = info["late_fusion_weight"]
                out[variant] = w * X_img["image_logit"].to_numpy() + (1 - w) * self.heads_[head].decision_function(
                    X.values)
        return out

    def predict_variants(self, data: LesionData, frames: tuple[pd.DataFrame, pd.DataFrame] | None = None
                         ) -> pd.DataFrame:
        """Calibrated malignancy probability of every variant (columns p_VARIANT) and the rules."""
        margins = self.decision_variants(data, frames)
        out = pd.DataFrame(index=margins.index)
        for variant, info in self.variants_.items():
            out[f"p_{variant}"] = apply_calibrator(info["calibrator"], margins[variant].to_numpy())
        rules = rule_scores(data.table, self.config.baselines)
        for rule in rules:
            out[f"rule_{rule}"] = rules[rule]
        return out

    def predict_proba(self, data: LesionData) -> np.ndarray:
        p = self.predict_variants(data)[f"p_{self.primary_variant}"].to_numpy()
        return np.column_stack([1 - p, p])

    @property
    def primary_variant(self) -> str:
        self._check_fitted()
        if self.config.primary_variant in self.variants_:
            return self.config.primary_variant
        return list(self.variants_)[-1]


def _min_class_patients(y: np.ndarray, groups: np.ndarray) -> int:
    return min(len(np.unique(groups[y == c])) for c in np.unique(y))
