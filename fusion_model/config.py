"""Configuration as data: every configuration class of fusion-model, validated by pydantic.

An experiment is one YAML file (``ExperimentConfig``); ``fusion-model synth`` takes a
``SynthConfig``. This module imports no torch, SimpleITK or XGBoost, so reading a config is
cheap and the stages receive their section explicitly.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from clinical_schema import PHASES
from fusion_model.catalogue import GUIDELINE_RULES, VARIANTS
from fusion_model.configbase import StrictModel, known_names, load_yaml_model
from fusion_model.errors import UserInputError
from fusion_model.registry import FUSION_METHODS, binary_learners, configurable_methods

SYNTH_CENTRES = 3  # the centre profiles of fusion_model.synthetic.generate.CENTRES


class PreprocessConfig(StrictModel):
    """Lesion-centred crops: isotropic spacing, cube size, HU window, resampling of mismatched grids."""

    spacing_mm: float = Field(1.0, gt=0, le=10, description="isotropic voxel size of the crop")
    crop_size_mm: float = Field(64.0, gt=0, le=512, description="edge of the lesion-centred cube")
    hu_window: tuple[float, float] = Field((-200.0, 300.0), description="HU mapped to 0 and 1 (clipped)")
    resample_mismatched: bool = Field(False, description="resample phases/mask onto the reference phase grid "
                                                         "when they do not share physical space")
    depth_channel: bool = Field(False, description="add a crop channel (before the mask) holding each voxel's "
                                "depth inside the outline: its distance to the mask's surface in mm over 16, "
                                "clipped to 1 (local thickness, for shape data; one exact distance transform per "
                                "crop instead of the encoder's approximate signed distance in every pass)")

    @model_validator(mode="after")
    def _window_ordered(self) -> PreprocessConfig:
        if self.hu_window[0] >= self.hu_window[1]:
            raise ValueError(f"hu_window {self.hu_window}: the lower bound must be below the upper bound")
        return self

    @property
    def crop_voxels(self) -> int:
        """Voxels along each edge of the crop."""
        return max(1, int(round(self.crop_size_mm / self.spacing_mm)))


ARCHITECTURE_SETTINGS = ("kind", "width", "depth", "embedding_size", "stem_stride", "mask_pooling", "input_pooling",
                         "mask_input")


class EncoderConfig(StrictModel):
    """The image encoder: network shape, training schedule, augmentation, inference.

    Its folds and seed are the experiment's (``split.folds``, ``seed``): one split serves encoder and heads.
    """

    kind: Literal["3d", "2.5d"] = "3d"
    width: int = Field(16, ge=4, le=128)
    depth: int = Field(3, ge=1, le=5)
    embedding_size: int = Field(32, ge=8, le=512, description="units of the embedding; normalised across them, so "
                                                              "a handful would carry little more than signs")
    dropout: float = Field(0.2, ge=0, lt=1)
    stem_stride: int = Field(4, ge=1, le=8)
    mask_pooling: bool = Field(True, description="pool features over the lesion as well as the whole crop")
    input_pooling: bool = Field(True, description="also pool the input over the lesion (mean and SD of each "
                                "channel inside the mask, and the lesion's share of the crop), one linear layer "
                                "from the embedding (needs mask_pooling)")
    mask_input: Literal["binary", "signed_distance"] = Field(
        "binary", description="how the mask enters the network: as the 0/1 outline, or as a signed depth map "
        "computed from it (how deep inside or far outside each voxel lies, up to 8 voxels; local thickness for "
        "shape data)")
    input_skip: bool = Field(True, description="add to the logit a logistic regression on the input statistics, "
                             "fitted on each network's training lesions before it trains (needs input_pooling): "
                             "the convolutions learn what the crop adds to mean attenuation, enhancement, "
                             "heterogeneity and size")
    epochs: int = Field(30, ge=1, le=1000)
    batch_size: int = Field(16, ge=2, le=512)
    learning_rate: float = Field(3e-3, gt=0, le=1)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["onecycle", "cosine"] = "onecycle"
    stopping: Literal["best_validation", "last_epoch"] = Field(
        "last_epoch", description="which epoch's network a fold keeps: the best on a patient-grouped "
        "validation part of its training lesions (validation_fraction, early stopping after patience epochs), or "
        "the last of the schedule, trained on all its training lesions")
    patience: int = Field(8, ge=1)
    validation_fraction: float = Field(0.15, gt=0, lt=0.5)
    class_weighting: Literal["balanced", "none"] = "balanced"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="train on targets eps/2 and 1 - eps/2 instead of "
                                   "0 and 1 (a guard against over-confident logits on noisy labels)")
    ema_decay: float | None = Field(None, ge=0.5, lt=1, description="keep an exponential moving average of the "
                                    "weights (and BatchNorm statistics) with this decay per step, e.g. 0.99, and use "
                                    "it as the trained network (validation and inference); empty: the last weights")
    augmentation_strength: float = Field(1.0, ge=0, le=3)
    hu_jitter: float = Field(10.0, ge=0, description="intensity shift, HU")
    tta_views: int = Field(4, ge=1, le=4, description="1 = no test-time augmentation; up to 4 axial flips")
    inference: Literal["fold_ensemble", "final"] = Field(
        "fold_ensemble", description="how new lesions are scored: the average of the fold networks (each trained "
        "without one fold; the networks the heads learned from), or one final network trained on all lesions for "
        "the median best epoch count (also trained then; the fold networks are kept either way)")
    embedding_alignment: Literal["procrustes", "none"] = Field(
        "procrustes", description="put every network's embedding in one space before the heads see it: each fold "
        "(and final) network's embedding of the training lesions is mapped onto their consensus by a similarity "
        "transform (generalised Procrustes); 'none' leaves each network's own coordinates")
    slices_per_lesion: int = Field(6, ge=1, description="2.5D: slice stacks per lesion per epoch")
    aggregation: Literal["topk_mean", "fraction_above"] = "topk_mean"
    top_k: int = Field(3, ge=1)
    operating_value: float = Field(0.5, gt=0, lt=1)
    inference_batch_size: int = Field(64, ge=1)
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    pretrained: str | None = Field(None, description="a weight file written by 'fusion-model pretrain-encoder' "
                                   "(pre-trained on generator-drawn lesions for crops like this experiment's): every "
                                   "network starts from it (its malignancy layer and input skip start afresh) and "
                                   "fine-tunes all layers; empty: random initial weights. A relative path is read "
                                   "from the current directory")

    @model_validator(mode="before")
    @classmethod
    def _no_own_split(cls, data):
        moved = {"folds": "split.folds", "seed": "seed (top level)"}
        if isinstance(data, dict):
            for key in moved.keys() & data.keys():
                raise ValueError(f"encoder.{key} is not a setting: the encoder uses the experiment's {moved[key]}, "
                                 "so that encoder and heads share one split; remove it")
        return data

    def fingerprint(self) -> str:
        """A short hash of every setting and of the pre-trained weight file's content (checkpoints and cached
        outputs are keyed by it)."""
        settings = self.model_dump(mode="json")
        if self.pretrained and Path(self.pretrained).is_file():
            from fusion_model.fileio import sha256_file

            settings["pretrained_sha256"] = sha256_file(Path(self.pretrained))
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def architecture(self) -> dict:
        """The settings that shape the network's weights (a pre-trained weight file must match them)."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k in ARCHITECTURE_SETTINGS}


class FeatureConfig(StrictModel):
    """Which table columns feed each feature group, and how many embedding components the fusion head sees."""

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
    """The XGBoost heads' hyperparameters and monotone constraints."""

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
    """How a variant combines the image and the tabular features, and which learner its heads are."""

    method: str = Field(
        "fusion_head", description="what a variant outputs: the fusion head (imaging + tabular features), the "
                                   "weighted average of image and tabular logits (late fusion), the tabular head "
                                   "alone, the type mixture (malignancy through the lesion's type: a lesion-type "
                                   "head's probabilities weighted by each type's share of malignant training "
                                   "lesions; needs targets [malignancy, lesion_type]), or auto: whichever scores "
                                   "best by inner cross-validation on the training folds (the type mixture among "
                                   "them when lesion_type is a target)")
    head: str = Field(
        "xgboost", description="the heads' learner: XGBoost, an L2-regularised logistic regression (scikit-learn; "
                               "for small cohorts), or auto: chosen with the method by inner cross-validation")
    logistic_c: float = Field(1.0, gt=0, le=1e6, description="inverse L2 strength of the logistic head (features "
                                                             "standardised)")
    late_fusion_weights: list[float] = Field(default_factory=lambda: [i / 10 for i in range(11)])
    inner_folds: int = Field(3, ge=2, le=10, description="inner CV folds choosing the late-fusion weight")
    fixed_weight: float | None = Field(None, ge=0, le=1, description="late-fusion weight of the image logit; "
                                                                      "empty: chosen by inner CV")

    @field_validator("method", "head")
    @classmethod
    def _registered(cls, value: str, info) -> str:
        kind, choices = (("fusion method", configurable_methods()) if info.field_name == "method"
                         else ("head learner", binary_learners()))
        if value not in [*choices, "auto"]:
            raise ValueError(f"unknown {kind} {value!r}; choose from {[*choices, 'auto']}")
        return value

    @field_validator("late_fusion_weights")
    @classmethod
    def _weights(cls, weights: list[float]) -> list[float]:
        if not weights or any(not 0 <= w <= 1 for w in weights):
            raise ValueError("late_fusion_weights must be a non-empty list of numbers in [0, 1]")
        return weights


class CalibrationConfig(StrictModel):
    """How out-of-fold margins become probabilities."""

    method: Literal["sigmoid", "isotonic"] = "sigmoid"


class SplitConfig(StrictModel):
    """Which lesions train and which test, and the patient-grouped folds shared by encoder and heads."""

    mode: Literal["kfold", "column", "centre"] = Field(
        "kfold", description="kfold: cross-validation on all lesions; column: the cohort's split column "
                             "(train_value for training); centre: hold out test_centre")
    folds: int = Field(5, ge=2, le=20)
    train_value: str = "train"
    test_centre: str | None = None


SEARCHABLE_SECTIONS = ("encoder", "xgboost", "fusion", "calibration", "features")


class SearchParam(StrictModel):
    """One dimension of a hyperparameter search (Optuna's suggest_int / suggest_float / suggest_categorical)."""

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[str | int | float | bool | None] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SearchParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None:
                raise ValueError("a categorical parameter takes 'choices', not low/high")
            return self
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a {self.type} parameter needs low < high (got low={self.low}, high={self.high})")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("a log-scale parameter needs low > 0 and no step")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("an int parameter needs whole-number low and high")
        return self

    def values_to_check(self) -> list:
        """The values a search may suggest at its edges (every choice, or low and high)."""
        if self.type == "categorical":
            return list(self.choices)
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


class SearchConfig(StrictModel):
    """The search space and objective of `fusion-model tune`."""

    objective_variant: str = Field("all", description="the variant whose cross-validated score is optimised")
    metric: Literal["auc", "brier"] = Field("auc", description="auc: patient-grouped CV AUC (maximised); brier: "
                                                               "Brier score of cross-fitted calibrated OOF "
                                                               "probabilities (minimised)")
    params: dict[str, SearchParam] = Field(default_factory=dict, description="dotted config key -> range")
    startup_trials: int = Field(8, ge=1, description="random trials before TPE takes over")
    prune: bool = Field(True, description="stop unpromising trials early (per fold; per epoch for encoders)")

    @field_validator("params")
    @classmethod
    def _keys(cls, params: dict[str, SearchParam]) -> dict[str, SearchParam]:
        if not params:
            raise ValueError("give at least one parameter to search")
        for key in params:
            section = key.split(".")[0]
            if section not in SEARCHABLE_SECTIONS or "." not in key:
                raise ValueError(f"{key!r}: searchable keys are 'SECTION.NAME' with SECTION one of "
                                 f"{list(SEARCHABLE_SECTIONS)} (preprocessing and splits stay fixed in a search)")
        return params


TARGETS = ("malignancy", "lesion_type")


class SubtypeConfig(StrictModel):
    """The lesion-type heads (``targets: [malignancy, lesion_type]``): which types are too rare to learn."""

    min_lesions: int = Field(10, ge=2, le=10_000, description="a type with fewer training lesions is refused, "
                                                               "or merged with the other rare ones (merge_rare)")
    merge_rare: bool = Field(False, description="merge the types under min_lesions into one class 'rare'")


class ExperimentConfig(StrictModel):
    """One experiment: preprocessing, encoder, features, heads, fusion, calibration, split, variants, rules."""

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
    baselines: list[str] = Field(default_factory=lambda: list(GUIDELINE_RULES))
    primary_variant: str = "all"
    targets: list[str] = Field(default_factory=lambda: ["malignancy"], description="what the model learns: "
                               "malignancy (always, the primary target) and optionally lesion_type (six-type heads)")
    subtype: SubtypeConfig = Field(default_factory=SubtypeConfig)
    masks: list[str] = Field(default_factory=lambda: ["a"], description="outlines the encoder trains on: [a] the "
                             "first reader's (mask_path); [a, b] also the second reader's (mask_path_b) as "
                             "augmentation, one of the two drawn per lesion and epoch")
    compare_phases: bool = Field(False, description="also train the same experiment on each CT phase alone (same "
                                 "lesions, outlines and folds), kept in the artifact, so that `evaluate` on a "
                                 "multi-phase cohort adds the per-phase table (each phase alone against all "
                                 "phases, paired DeLong per target and type); training takes (1 + phases) times "
                                 "as long")
    search: SearchConfig | None = Field(None, description="hyperparameter search space for `fusion-model tune`")

    @field_validator("variants")
    @classmethod
    def _variants(cls, variants: list[str]) -> list[str]:
        return known_names(variants, VARIANTS, "variant")

    @field_validator("baselines")
    @classmethod
    def _baselines(cls, baselines: list[str]) -> list[str]:
        return known_names(baselines, GUIDELINE_RULES, "baseline") if baselines else []

    @field_validator("targets")
    @classmethod
    def _targets(cls, targets: list[str]) -> list[str]:
        targets = known_names(targets, TARGETS, "target", ordered=True)
        if not targets or targets[0] != "malignancy":
            raise ValueError(f"targets {targets}: malignancy is the primary target and must be listed "
                             "(e.g. [malignancy, lesion_type])")
        return targets

    @field_validator("masks")
    @classmethod
    def _masks(cls, masks: list[str]) -> list[str]:
        if masks not in (["a"], ["a", "b"]):
            raise ValueError(f"masks {masks}: give [a] (the first reader's outlines) or [a, b] (the second reader's "
                             "as augmentation too)")
        return masks

    @model_validator(mode="after")
    def _primary_is_trained(self) -> ExperimentConfig:
        method = self.fusion.method
        if method != "auto" and FUSION_METHODS.fact(method, "needs_types") and "lesion_type" not in self.targets:
            raise ValueError(f"fusion.method {method} scores malignancy through the lesion's type: add "
                             "lesion_type to targets ([malignancy, lesion_type]) or choose another method")
        if self.primary_variant not in self.variants:
            raise ValueError(f"primary_variant {self.primary_variant!r} is not among variants {self.variants}")
        if self.compare_phases and self.preprocess.depth_channel:
            raise ValueError("compare_phases with preprocess.depth_channel is not supported: the per-phase models "
                             "take one phase and the mask; set one of them to false")
        if self.encoder.pretrained and self.compare_phases:
            raise ValueError("compare_phases with encoder.pretrained is not supported: a weight file fits one set "
                             "of crop channels, and the per-phase models take one phase and the mask; set "
                             "compare_phases to false or leave encoder.pretrained empty")
        if self.encoder.pretrained and self.encoder.kind != "3d":
            raise ValueError("encoder.pretrained needs encoder.kind 3d: 'fusion-model pretrain-encoder' trains the "
                             "3D network on whole crops")
        if self.search is not None:
            reshaping = [key for key in self.search.params if key.partition(".")[2] in ARCHITECTURE_SETTINGS
                         and key.startswith("encoder.")]
            if self.encoder.pretrained and reshaping:
                raise ValueError(f"search.params {reshaping} change the network's shape, which encoder.pretrained "
                                 "fixes (its weight file fits one network): search them without pre-training, or "
                                 "leave them out")
            if self.search.objective_variant not in self.variants:
                raise ValueError(f"search.objective_variant {self.search.objective_variant!r} is not among "
                                 f"variants {self.variants}")
            for key, param in self.search.params.items():
                for value in param.values_to_check():
                    try:
                        with_params(self, {key: value})
                    except (ValueError, KeyError) as err:
                        raise ValueError(f"search.params.{key}: {value!r} is not a valid value: {err}") from None
        return self


def with_params(config: ExperimentConfig, params: dict) -> ExperimentConfig:
    """A validated copy of ``config`` with dotted keys (``xgboost.max_depth``) set."""
    data = config.model_dump(mode="json")
    for key, value in params.items():
        section, _, name = key.partition(".")
        if section not in data or not isinstance(data[section], dict) or name not in data[section]:
            raise KeyError(f"{key!r} is not a configuration key")
        data[section][name] = value
    data["search"] = None
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ValueError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())) from None


def load_experiment(path: Path) -> ExperimentConfig:
    """The validated experiment of a YAML file (errors name the key)."""
    return load_yaml_model(ExperimentConfig, path)


class SynthConfig(StrictModel):
    """A synthetic cohort: size, seed, centres, phases written, share of patients with two lesions."""

    patients: int = Field(100, ge=1, le=100_000)
    seed: int = 0
    centres: int = Field(3, ge=1, le=SYNTH_CENTRES, description="number of centres (centre_a, centre_b, ...)")
    phases: list[str] = Field(default_factory=lambda: ["unenhanced", "venous"])
    two_lesion_fraction: float = Field(0.08, ge=0, le=1)
    patients_without_masks: int = Field(0, ge=0, le=100_000, description="patients added after the others whose "
                                        "mask_path is empty (to outline with 'fusion-model segment predict'); "
                                        "their reference masks go to truth_masks/")
    second_reader: bool = Field(False, description="also write a second reader's outline of every outlined lesion "
                                "(masks_b/, columns mask_path_b / mask_label_b) for 'fusion-model agreement'")
    workers: int = Field(0, ge=0, description="processes; 0 = up to 2, as many as cores allow")

    @field_validator("phases")
    @classmethod
    def _phases(cls, phases: list[str]) -> list[str]:
        return known_names(phases, PHASES, "phase", ordered=True)


class PretrainConfig(StrictModel):
    """Encoder pre-training on lesions the synthetic generator draws (``fusion-model pretrain-encoder``).

    The network, the crop geometry and the augmentation are the experiment's; these settings say what is drawn
    and how long it trains. Targets: the lesion's latent size, shape, attenuation per phase, enhancement,
    texture, necrosis, calcification and fat (those the crop's channels can show), its type, and malignancy.
    """

    phases: list[str] = Field(default_factory=list, description="CT phases of the crops (canonical order); empty: "
                              "mask-only crops, for cohorts of outlines without CT intensities")
    outline: Literal["lesion", "gland"] = Field(
        "lesion", description="what the mask outlines: the lesion (as in cohorts of lesion masks) or the whole "
        "adrenal gland with its lesion (as in AdrenalMNIST3D); with 'gland', a share of the glands is normal")
    normal_fraction: float = Field(0.5, ge=0, lt=1, description="'gland': share of glands drawn without a lesion")
    examples: int = Field(2000, ge=20, le=200_000, description="lesions drawn (a share is held out for the figures)")
    held_out_fraction: float = Field(0.1, gt=0, lt=0.5)
    epochs: int = Field(8, ge=1, le=1000)
    batch_size: int = Field(16, ge=2, le=512)
    learning_rate: float = Field(2e-3, gt=0, le=1)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = 0
    workers: int = Field(0, ge=0, description="processes drawing the lesions; 0 = up to 2, as many as cores allow")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")

    @field_validator("phases")
    @classmethod
    def _phases(cls, phases: list[str]) -> list[str]:
        return known_names(phases, PHASES, "phase", ordered=True) if phases else []


class SegmentConfig(StrictModel):
    """The lesion segmenter (``fusion-model segment``): a MONAI 3D U-Net on isotropic patches of the CT phases.

    Phases are the network's input channels (each HU-windowed to [0, 1]); the target is every lesion of a
    patient. A patient-grouped part of the training patients (``validation_fraction``) is held out for
    early stopping and for choosing the component-probability operating point.
    """

    name: str = "segmenter"
    seed: int = 0
    phases: list[str] | None = Field(None, description="input phases; default: every phase of the cohort")
    spacing_mm: float = Field(4.0, gt=0.25, le=8, description="isotropic voxel size the detector sees")
    patch_voxels: tuple[int, int, int] = Field((40, 40, 24), description="training / sliding-window patch, "
                                                                          "voxels along x, y, z")
    hu_window: tuple[float, float] = Field((-250.0, 350.0), description="HU mapped to 0 and 1 (clipped)")
    region_margin_mm: float = Field(20.0, ge=0, description="margin around a given adrenal region")
    architecture: Literal["unet", "dynunet"] = "unet"
    channels: tuple[int, ...] = Field((16, 32, 64, 128), description="feature maps per U-Net level")
    residual_units: int = Field(1, ge=0, le=4)
    dropout: float = Field(0.0, ge=0, lt=1)
    epochs: int = Field(60, ge=1, le=10_000)
    iterations_per_epoch: int = Field(40, ge=1, description="optimiser steps per epoch")
    batch_size: int = Field(4, ge=1, le=256, description="patches per step")
    patches_per_volume: int = Field(2, ge=1, le=32)
    foreground_ratio: float = Field(0.67, ge=0, le=1, description="share of patches centred on a lesion voxel")
    learning_rate: float = Field(2e-3, gt=0, le=1)
    weight_decay: float = Field(1e-5, ge=0)
    patience: int = Field(20, ge=1, description="epochs without a better validation Dice before stopping")
    validate_every: int = Field(4, ge=1, le=20, description="epochs between validations on the early-stopping "
                                "patients (each is a sliding-window pass over their scans)")
    validation_fraction: float = Field(0.2, gt=0, lt=0.6)
    intensity_jitter: float = Field(0.05, ge=0, le=0.5, description="random shift/scale of windowed values")
    flip: bool = Field(True, description="random flips along every axis")
    voxel_threshold: float = Field(0.5, gt=0, lt=1, description="foreground probability for a voxel")
    min_component_mm3: float = Field(100.0, ge=0, description="smaller connected components are dropped")
    max_false_positives_per_scan: float = Field(0.5, ge=0, description="the operating point: the lowest "
                                                "component-probability threshold within this FP rate")
    match_min_probability: float | None = Field(
        0.5, gt=0, lt=1, description="components a lesion of the table may take: at least this probability (the "
        "table says the lesion exists, so its side's most probable plausible component is taken even below the "
        "detection operating point); null = the operating point")
    match_size_ratio: float = Field(2.5, gt=1, description="a lesion with size_mm takes only components whose "
                                    "largest axial extent is within this factor of it (either way)")
    regrow_undersized_ratio: float | None = Field(
        1.5, gt=1, description="a lesion whose matched component is more than this factor smaller than its size_mm "
        "(its extent, or its volume's sphere diameter when smaller: only part of the lesion found) is re-outlined by the refiner on a crop scaled to size_mm around that component; "
        "the new outline is kept when its extent is nearer size_mm; null = off")
    learn_glands: bool = Field(True, description="the detector also learns the adrenal-gland region (a third "
                               "output) from the training scans' gland outlines: the cohort's glands/ folder "
                               "(TotalSegmentator's layout) or --region")
    gland_target_margin_mm: float = Field(6.0, ge=0, le=30, description="gland outlines grown by this for the "
                                          "learned gland region")
    gland_margin_mm: float = Field(15.0, ge=0, description="components whose nearest voxel is farther than this "
                                   "from an adrenal gland (given by --region or learned) are suppressed")
    overlap: float = Field(0.5, ge=0, lt=1, description="sliding-window overlap")

    spacing_tolerance: float = Field(2.0, ge=1, description="refuse scans whose voxel edge is this many times "
                                                            "outside the training range")
    min_extent_mm: float = Field(24.0, gt=0, description="refuse scans shorter than this along an axis")
    refine: bool = Field(True, description="re-outline each found lesion on a crop scaled to its size")
    refine_voxels: int = Field(32, ge=16, le=160, description="edge of the refinement crop, voxels")
    refine_context: float = Field(2.0, ge=1.1, le=5, description="crop edge / the lesion's largest extent")
    refine_min_mm: float = Field(24.0, gt=0, description="smallest crop edge, mm")
    refine_crops_per_lesion: int = Field(8, ge=1, le=64, description="randomly shifted and scaled training crops")
    refine_shift_jitter: float = Field(0.15, ge=0, le=1, description="SD of the crop-centre shift / lesion extent")
    refine_scale_jitter: float = Field(0.3, ge=0, le=1, description="crop edge scaled by exp(U(-j, j))")
    refine_epochs: int = Field(70, ge=1, le=10_000)
    refine_difference: bool = Field(True, description="refiner input: the contrast phase (venous, else the last) "
                                    "minus the unenhanced phase, HU mapped from refine_difference_window (when "
                                    "the segmenter has the unenhanced phase and another)")
    refine_difference_window: tuple[float, float] = Field((-50.0, 200.0), description="enhancement (HU) mapped "
                                                          "to 0 and 1")
    refine_soft_tissue_window: tuple[float, float] | None = Field(
        (-30.0, 170.0), description="refiner input: every phase also in this narrow window (HU mapped to 0 and 1), "
        "as a reader narrows the window to tell a lesion from the liver beside it; null = the wide window only")
    refine_confirms: bool = Field(True, description="a component's probability is the detector's times the "
                                  "refiner's highest probability over it: the refiner's finer look confirms a "
                                  "lesion or rejects a normal gland's limb or a piece of liver (false = the "
                                  "detector's alone)")
    refine_test_time_flips: int = Field(4, ge=1, le=4, description="the refiner's probabilities averaged over "
                                                                    "this many mirrorings (1 = none; then x, y, z)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    cpu_precision: Literal["auto", "float32", "bfloat16"] = Field(
        "float32", description="training arithmetic on CPU: float32, bfloat16 autocast (a step about 1.4x faster "
        "where the CPU runs it natively; on the segment benchmark it saved 1 of 13.6 minutes and lowered the surface "
        "Dice), or auto: bfloat16 where native; CUDA always trains in float16 mixed precision")

    @field_validator("phases")
    @classmethod
    def _phases(cls, phases: list[str] | None) -> list[str] | None:
        return None if phases is None else known_names(phases, PHASES, "phase", ordered=True)

    @model_validator(mode="after")
    def _consistent(self) -> SegmentConfig:
        for name in ("hu_window", "refine_difference_window", "refine_soft_tissue_window"):
            window = getattr(self, name)
            if window is not None and window[0] >= window[1]:
                raise ValueError(f"{name} {list(window)}: the lower bound must be below the upper bound")
        levels = len(self.channels) - 1
        if levels < 1:
            raise ValueError("channels: give at least two U-Net levels, e.g. [16, 32, 64]")
        for edge in self.patch_voxels:
            if edge < 2 ** levels or edge % 2 ** levels:
                raise ValueError(f"patch_voxels {list(self.patch_voxels)}: every edge must be a multiple of "
                                 f"{2 ** levels} (2 to the number of down-sampling levels)")
        if self.refine_voxels % 2 ** levels:
            raise ValueError(f"refine_voxels {self.refine_voxels}: must be a multiple of {2 ** levels}")
        return self

    def fingerprint(self) -> str:
        """A hash of every setting that changes training (for checkpoints)."""
        settings = self.model_dump(exclude={"threads", "name"})
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_segment_config(path: Path | None) -> SegmentConfig:
    """The segmenter settings from a YAML file, or the defaults."""
    return SegmentConfig() if path is None else load_yaml_model(SegmentConfig, path)


def packaged_experiment(name: str) -> Path:
    """A shipped experiment config: ``experiments/NAME`` of the repository, installed with the package as
    ``fusion_model/experiments/NAME`` (in the source tree that folder is a link to the top-level one)."""
    path = Path(__file__).parent / "experiments" / name
    if not path.is_file():
        raise UserInputError(f"{path}: the shipped experiment {name!r} is missing from this installation; "
                             "reinstall fusion-model")
    return path
