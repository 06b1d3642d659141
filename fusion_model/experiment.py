"""Experiment configuration: one YAML file, validated by pydantic, passed down explicitly."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fusion_model.configbase import StrictModel, known_names, load_yaml_model
from fusion_model.encoder.train import EncoderConfig
from fusion_model.imaging.preprocess import PreprocessConfig

VARIANTS = ("imaging", "imaging_radiological", "imaging_clinical", "all")
BASELINES = ("hu_10", "size_40", "hu_10_and_size_40")
FEATURE_GROUPS = ("imaging", "radiological", "clinical", "laboratory")
VARIANT_GROUPS = {
    "imaging": ("imaging",),
    "imaging_radiological": ("imaging", "radiological"),
    "imaging_clinical": ("imaging", "clinical", "laboratory"),
    "all": ("imaging", "radiological", "clinical", "laboratory"),
}


class FeatureConfig(StrictModel):
    radiological: list[str] = Field(default_factory=lambda: ["size_mm", "unenhanced_hu"])
    image_radiological: bool = Field(True, description="add radiological features computed from image + mask")
    clinical: list[str] = Field(default_factory=lambda: [
        "age_years", "sex", "history_extra_adrenal_malignancy", "hypertension", "bilateral"])
    laboratory: list[str] = Field(default_factory=lambda: [
        "cortisol_post_dst_ug_dl", "plasma_metanephrines_xuln", "dhea_s_umol_l", "aldosterone_renin_ratio",
        "potassium_mmol_l"])
    extra_as_radiological: bool = Field(True, description="the cohort's declared extra features join 'radiological'")
    embedding_components: int = Field(4, ge=0, le=64, description="principal components of the embedding "
                                                                  "given to the fusion head")


class XGBoostConfig(StrictModel):
    n_estimators: int = Field(300, ge=1, le=5000)
    max_depth: int = Field(3, ge=1, le=12)
    learning_rate: float = Field(0.05, gt=0, le=1)
    subsample: float = Field(0.8, gt=0, le=1)
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    min_child_weight: float = Field(1.0, ge=0)
    reg_lambda: float = Field(1.0, ge=0)
    reg_alpha: float = Field(0.0, ge=0)
    monotone: dict[str, Literal[-1, 0, 1]] = Field(
        default_factory=lambda: {"size_mm": 1, "unenhanced_hu": 1},
        description="risk non-decreasing (1) or non-increasing (-1) in a feature",
    )


class FusionConfig(StrictModel):
    method: Literal["fusion_head", "late_fusion"] = Field(
        "fusion_head", description="what a variant outputs: the XGBoost fusion head, or the weighted average of "
                                   "image and tabular logits")
    late_fusion_weights: list[float] = Field(default_factory=lambda: [i / 10 for i in range(11)])
    inner_folds: int = Field(3, ge=2, le=10, description="inner CV folds choosing the late-fusion weight")

    @field_validator("late_fusion_weights")
    @classmethod
    def _weights(cls, weights: list[float]) -> list[float]:
        if not weights or any(not 0 <= w <= 1 for w in weights):
            raise ValueError("late_fusion_weights must be a non-empty list of numbers in [0, 1]")
        return weights


class CalibrationConfig(StrictModel):
    method: Literal["sigmoid", "isotonic"] = "sigmoid"


class SplitConfig(StrictModel):
    mode: Literal["kfold", "column", "centre"] = Field(
        "kfold", description="kfold: cross-validation on all lesions; column: the cohort's split column "
                             "(train_value for training); centre: hold out test_centre")
    folds: int = Field(5, ge=2, le=20)
    train_value: str = "train"
    test_centre: str | None = None


class ExperimentConfig(StrictModel):
    name: str = Field("experiment", min_length=1)
    seed: int = 0
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    xgboost: XGBoostConfig = Field(default_factory=XGBoostConfig)
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    variants: list[str] = Field(default_factory=lambda: list(VARIANTS))
    baselines: list[str] = Field(default_factory=lambda: list(BASELINES))
    primary_variant: str = "all"

    @field_validator("variants")
    @classmethod
    def _variants(cls, variants: list[str]) -> list[str]:
        return known_names(variants, VARIANTS, "variant")

    @field_validator("baselines")
    @classmethod
    def _baselines(cls, baselines: list[str]) -> list[str]:
        return known_names(baselines, BASELINES, "baseline") if baselines else []

    @model_validator(mode="after")
    def _primary_is_trained(self) -> "ExperimentConfig":
        if self.primary_variant not in self.variants:
            raise ValueError(f"primary_variant {self.primary_variant!r} is not among variants {self.variants}")
        return self


def load_experiment(path: Path) -> ExperimentConfig:
    return load_yaml_model(ExperimentConfig, path)
