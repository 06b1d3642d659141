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

Each fitted variant is a :class:`~fusion_model.heads.variant.VariantFit` (``variants_``), which
computes its own margin and probability; :meth:`FusionModel.from_fitted` rebuilds a fitted model
from its parts (the artifact loader does).

``predict_variants`` gives every variant's calibrated probability; ``predict_proba`` the
primary variant's, as an (n, 2) array.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from clinical_schema import PHASES
from fusion_model.catalogue import VARIANTS
from fusion_model.config import ExperimentConfig
from fusion_model.encoder.estimator import ImageEncoder
from fusion_model.errors import UserInputError
from fusion_model.features.radiological import features_seen_with
from fusion_model.features.table import EmbeddingPCA, fit_pca, imaging_features, tabular_features
from fusion_model.heads.baselines import rule_scores
from fusion_model.heads.subtype import (
    SubtypeFit,
    SubtypeInfo,
    fit_subtype,
    one_vs_rest_auc,
    subtype_classes,
    training_types,
)
from fusion_model.heads.variant import VariantFit, VariantFitter
from fusion_model.records import TrainingCohort
from fusion_model.stats import nan_safe_auc


@dataclass
class LesionData:
    """What the model sees of a set of lesions; rows of every part follow ``table.index`` (lesion_id)."""

    table: pd.DataFrame
    image_features: pd.DataFrame
    crops: np.ndarray  # (lesions, channels, z, y, x)
    channels: tuple[str, ...]  # the crops' channel names: phases (when they hold HU), depth if asked, mask
    extra_features: tuple[str, ...] = ()
    second_reader_crops: np.ndarray | None = None  # crops around a second outline (training augmentation)

    def __post_init__(self) -> None:
        if len(self.crops) != len(self.table):
            raise ValueError(f"{len(self.crops)} crops for {len(self.table)} lesions")
        self.channels = tuple(self.channels)
        if self.crops.ndim > 1 and self.crops.shape[1] != len(self.channels):
            raise ValueError(f"crops of {self.crops.shape[1]} channels named {list(self.channels)}")
        if self.second_reader_crops is not None and self.second_reader_crops.shape != self.crops.shape:
            raise ValueError(f"second reader's crops {self.second_reader_crops.shape} differ from the crops "
                             f"{self.crops.shape}")

    @property
    def lesion_ids(self) -> list[str]:
        """Lesion ids in row order."""
        return list(self.table.index)

    def subset(self, positions: np.ndarray) -> LesionData:
        """The lesions at these positions."""
        ids = self.table.index[positions]
        return LesionData(self.table.loc[ids], self.image_features.reindex(ids), self.crops[positions],
                          self.channels, self.extra_features,
                          None if self.second_reader_crops is None else self.second_reader_crops[positions])

    def with_phases(self, phases: list[str]) -> LesionData:
        """What a cohort with only ``phases`` (of the CT phases these crops hold) would show of the same lesions:
        those phases' crop channels and the mask, the radiological features computed from no other phase, and no
        table ``unenhanced_hu`` without the unenhanced phase. For the per-phase comparison (``compare_phases``):
        the same lesions, outlines and folds, only the phases differ."""
        held = [c for c in self.channels if c in PHASES]
        if any(p not in held for p in phases) or list(self.channels) != [*held, "mask"]:
            raise ValueError(f"phases {phases} are not a subset of the crops' phases {held} (channels "
                             f"{list(self.channels)})")
        names = [*phases, "mask"]
        channels = [self.channels.index(name) for name in names]
        table = self.table.copy()
        if "unenhanced" not in phases and "unenhanced_hu" in table:
            table["unenhanced_hu"] = np.nan
        features = self.image_features[features_seen_with(self.image_features.columns, phases)]
        second = None if self.second_reader_crops is None else self.second_reader_crops[:, channels]
        return LesionData(table, features, self.crops[:, channels], tuple(names), self.extra_features, second)


def variant_tabular_features(variant: str, tabular_groups: dict[str, list[str]]) -> list[str]:
    """The tabular features a variant's heads see: its feature groups' columns present in the cohort."""
    return [name for group in VARIANTS[variant].tabular_groups for name in tabular_groups.get(group, [])]


class FusionModel:
    """Encoder + heads for every model variant, with scikit-learn's fit / predict_proba contract."""

    def __init__(self, config: ExperimentConfig, progress: bool = True, checkpoint_dir=None, device: str = "cpu",
                 engine=None):
        self.config = config
        self.progress = progress
        self.checkpoint_dir = checkpoint_dir
        self.device = device  # where the encoder trains (cpu, cuda, auto); scoring runs on the CPU
        self.engine = engine  # where the encoder's fold networks train (fusion_model.engine.Engine; None: here)

    @classmethod
    def from_fitted(cls, config: ExperimentConfig, encoder: ImageEncoder, variants: dict[str, VariantFit],
                    pca: EmbeddingPCA | None, tabular_groups: dict[str, list[str]], channels: list[str],
                    baseline_oof_auc: dict[str, float], oof: pd.DataFrame, progress: bool = False,
                    manifest: dict | None = None, subtypes: dict[str, SubtypeFit] | None = None,
                    subtype_info: SubtypeInfo | None = None) -> FusionModel:
        """A fitted model from its parts (what ``fit`` produces and an artifact stores); ``manifest`` is the
        artifact's, when it was loaded from one (``manifest_``: training cohort, channels, versions)."""
        model = cls(config, progress=progress)._set_fitted(encoder, variants, pca, tabular_groups, channels,
                                                           baseline_oof_auc, oof, subtypes, subtype_info)
        if manifest is not None:
            model.manifest_ = manifest
        return model

    def _set_fitted(self, encoder, variants, pca, tabular_groups, channels, baseline_oof_auc, oof,
                    subtypes=None, subtype_info=None) -> FusionModel:
        self.encoder_ = encoder
        self.variants_ = dict(variants)
        self.pca_ = pca
        self.tabular_groups_ = tabular_groups
        self.channels_ = list(channels)  # the crop channels the encoder learnt from
        self.baseline_oof_auc_ = dict(baseline_oof_auc)
        self.oof_ = oof
        self.subtypes_ = dict(subtypes or {})  # variant -> SubtypeFit (targets include lesion_type)
        self.subtype_info_ = subtype_info
        return self

    @property
    def training_cohort(self) -> TrainingCohort:
        """What a loaded model was trained on (its manifest's cohort entry)."""
        if not hasattr(self, "manifest_"):
            raise RuntimeError("the training cohort is known once the model is saved and loaded")
        return TrainingCohort.from_manifest(self.manifest_["cohort"])

    # ----------------------------------------------------------------------------- fitting
    def fit(self, data: LesionData, labels, patient_ids) -> FusionModel:
        """Encoder over patient-grouped folds, then every variant's heads, calibration and thresholds."""
        y = np.asarray(labels).astype(int)
        groups = np.asarray(patient_ids)
        if len(y) != len(data.table) or len(groups) != len(y):
            raise UserInputError("labels and patient ids must have one entry per lesion")
        encoder = ImageEncoder.for_experiment(self.config, self.checkpoint_dir, self.progress,
                                              device=getattr(self, "device", "cpu"),
                                              engine=getattr(self, "engine", None)).fit(
            data.crops, y, groups, second_reader_crops=data.second_reader_crops, channels=data.channels)
        return self.fit_heads(data, y, groups, encoder)

    def fit_heads(self, data: LesionData, y: np.ndarray, groups: np.ndarray, encoder: ImageEncoder) -> FusionModel:
        """Heads, calibration and thresholds on a fitted encoder's out-of-fold outputs, over its folds."""
        cfg = self.config
        folds = encoder.folds_  # the heads are cross-validated over the encoder's folds
        pca = fit_pca(encoder.oof_embeddings_, cfg.features.embedding_components)
        X_img = imaging_features(encoder.oof_logits_, encoder.oof_embeddings_, pca, data.table.index)
        X_tab, tabular_groups = tabular_features(data.table, data.image_features, cfg.features, data.extra_features)
        fitter = VariantFitter(cfg)
        types = training_types(data.table, cfg)
        variants: dict[str, VariantFit] = {}
        oof = pd.DataFrame({"label": y, "patient_id": groups}, index=data.table.index)
        for variant in cfg.variants:
            tab_names = variant_tabular_features(variant, tabular_groups)
            if variant != "imaging" and not tab_names:
                continue  # e.g. no clinical data in this cohort: the variant would equal 'imaging'
            variants[variant], oof[f"p_{variant}"] = fitter.fit(variant, X_img, X_tab[tab_names], y, groups, folds,
                                                                types)
        rules = rule_scores(data.table, cfg.baselines)
        for rule in rules:
            oof[f"rule_{rule}"] = rules[rule]
        baseline_oof_auc = {rule: nan_safe_auc(y, rules[rule].to_numpy()) for rule in rules}
        subtypes, subtype_info = {}, None
        if "lesion_type" in cfg.targets:
            subtypes, subtype_info = self._fit_subtypes(data, X_img, X_tab, tabular_groups, variants, folds, oof)
        return self._set_fitted(encoder, variants, pca, tabular_groups, data.channels, baseline_oof_auc, oof,
                                subtypes, subtype_info)

    def _fit_subtypes(self, data: LesionData, X_img: pd.DataFrame, X_tab: pd.DataFrame, tabular_groups, variants,
                      folds, oof: pd.DataFrame) -> tuple[dict, SubtypeInfo]:
        """Each variant's subtype head on the same out-of-fold inputs; the primary's OOF probabilities go to
        ``oof`` (columns p_type_CLASS and lesion_type)."""
        cfg = self.config
        started = time.perf_counter()
        types = data.table["lesion_type"] if "lesion_type" in data.table else pd.Series(np.nan, index=data.table.index)
        classes = subtype_classes(types, cfg.subtype.min_lesions, cfg.subtype.merge_rare)
        y_type = classes.encode(types)
        fits, oof_auc = {}, {}
        primary = cfg.primary_variant if cfg.primary_variant in variants else list(variants)[-1]
        for variant in variants:
            X = pd.concat([X_img, X_tab[variant_tabular_features(variant, tabular_groups)]], axis=1)
            fits[variant], probabilities = fit_subtype(cfg, variant, X, y_type, folds, classes.classes)
            oof_auc[variant] = one_vs_rest_auc(y_type, probabilities, classes.classes)
            if variant == primary:
                for k, name in enumerate(classes.classes):
                    oof[f"p_type_{name}"] = probabilities[:, k]
                oof["lesion_type"] = types.to_numpy()
        return fits, SubtypeInfo(classes, oof_auc, time.perf_counter() - started)

    # --------------------------------------------------------------------------- prediction
    def check_fitted(self) -> None:
        """Refuse to score before the model is fitted or loaded."""
        if not hasattr(self, "variants_"):
            raise RuntimeError("FusionModel is not fitted; call fit(), or load a trained model with "
                               "fusion_model.artifact.load_model(PATH)")

    @property
    def oof_auc_(self) -> dict[str, float]:
        """Out-of-fold AUC of each variant's output on the training lesions."""
        self.check_fitted()
        return {name: fit.score_oof_auc for name, fit in self.variants_.items()}

    def feature_frames(self, data: LesionData) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The heads' inputs for new lesions: imaging features (one encoder pass) and tabular features."""
        self.check_fitted()
        if list(data.channels) != self.channels_:
            raise UserInputError(f"the model was trained on crops of channels {self.channels_}, these have "
                                 f"{list(data.channels)}; the cohort must have the same phases as the training cohort")
        logits, embeddings = self.encoder_.predict_outputs(data.crops)
        X_img = imaging_features(logits, embeddings, self.pca_, data.table.index)
        X_tab, _ = tabular_features(data.table, data.image_features, self.config.features, data.extra_features)
        return X_img, X_tab

    def decision_variants(self, data: LesionData, frames: tuple[pd.DataFrame, pd.DataFrame] | None = None
                          ) -> pd.DataFrame:
        """Uncalibrated margins (log-odds) of every variant; index lesion_id."""
        X_img, X_tab = frames if frames is not None else self.feature_frames(data)
        return pd.DataFrame({name: fit.margin(X_img, X_tab) for name, fit in self.variants_.items()},
                            index=data.table.index)

    def predict_variants(self, data: LesionData, frames: tuple[pd.DataFrame, pd.DataFrame] | None = None
                         ) -> pd.DataFrame:
        """Calibrated malignancy probability of every variant (columns p_VARIANT) and the rules."""
        margins = self.decision_variants(data, frames)
        out = pd.DataFrame(index=margins.index)
        for name, fit in self.variants_.items():
            out[f"p_{name}"] = fit.calibrator(margins[name].to_numpy())
        rules = rule_scores(data.table, self.config.baselines)
        for rule in rules:
            out[f"rule_{rule}"] = rules[rule]
        return out

    def predict_types(self, data: LesionData, frames: tuple[pd.DataFrame, pd.DataFrame] | None = None
                      ) -> dict[str, pd.DataFrame]:
        """Calibrated type probabilities of every variant (columns p_type_CLASS); empty without subtype heads."""
        if not self.subtypes_:
            return {}
        X_img, X_tab = frames if frames is not None else self.feature_frames(data)
        return {name: fit.probabilities(X_img, X_tab) for name, fit in self.subtypes_.items()}

    def predict_proba(self, data: LesionData) -> np.ndarray:
        """(n, 2) probabilities of benign and malignant from the primary variant."""
        p = self.predict_variants(data)[f"p_{self.primary_variant}"].to_numpy()
        return np.column_stack([1 - p, p])

    @property
    def primary_variant(self) -> str:
        """The configured primary variant, or the last fitted one when the cohort could not support it."""
        self.check_fitted()
        if self.config.primary_variant in self.variants_:
            return self.config.primary_variant
        return list(self.variants_)[-1]

    @property
    def primary(self) -> VariantFit:
        """The primary variant's fit."""
        return self.variants_[self.primary_variant]
