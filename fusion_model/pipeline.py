"""`fusion-model train` and `predict` as library functions (the CLI wraps these)."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from fusion_model.artifact import load_model, save_model
from fusion_model.catalogue import mask_source_counts
from fusion_model.cohort import Cohort, load_cohort, mask_sources
from fusion_model.cohort.spec import COHORT_FILE, TABLE_FILE
from fusion_model.config import ExperimentConfig
from fusion_model.encoder.weights import check_pretrained
from fusion_model.engine import Engine
from fusion_model.errors import UserInputError
from fusion_model.features.table import fill_radiological
from fusion_model.fileio import atomic_write_text, check_output_dir, sha256_file
from fusion_model.heads.subtype import subtype_classes
from fusion_model.imaging.cache import ImageCache
from fusion_model.imaging.extract import LesionError
from fusion_model.imaging.preprocess import crop_channels
from fusion_model.model import FusionModel, LesionData
from fusion_model.records import TrainingCohort
from fusion_model.splits import check_fold_counts
from fusion_model.stats import nan_safe_auc

TRUTH_FILE = "truth.csv"


def cohort_fingerprint(cohort: Cohort) -> str:
    """SHA-256 of cohort.json and clinical.csv (which cohort a model or report saw)."""
    digest = hashlib.sha256()
    for name in (COHORT_FILE, TABLE_FILE):
        digest.update(sha256_file(cohort.root / name).encode())
    return digest.hexdigest()


def lesion_data(cohort: Cohort, config: ExperimentConfig, cache: ImageCache, strict: bool = False,
                progress: bool = True, engine: Engine | None = None) -> tuple[LesionData, list[LesionError], list[str]]:
    """Crops, image features and the table (size / HU filled from images) of the readable lesions (read on
    ``engine``: this process by default)."""
    images = cohort.images(config.preprocess, cache, strict=strict, progress=progress, engine=engine)
    table = cohort.table.set_index("lesion_id").loc[images.lesion_ids]
    table, notes = fill_radiological(table, images.features)
    extra = tuple(f.name for f in cohort.spec.extra_features)
    crops = images.crops if images.crops is not None else np.zeros((0, len(images.channels), 1, 1, 1), np.float16)
    return LesionData(table, images.features, crops, images.channels, extra), images.errors, notes


def second_reader_crops(cohort: Cohort, data: LesionData, config: ExperimentConfig, cache: ImageCache,
                        progress: bool = True, engine: Engine | None = None) -> tuple[np.ndarray, int]:
    """Crops around each lesion's second outline (``mask_path_b``), the first outline's where there is none, in
    the rows of ``data``; and how many lesions have a second outline. A bad second mask is refused."""
    table = cohort.table
    check_second_reader_masks(table, config, cohort.root / TABLE_FILE)
    swapped = table.copy()
    has_b = swapped["mask_path_b"].notna()
    swapped["mask_path"] = swapped["mask_path"].where(~has_b, swapped["mask_path_b"])
    second_labels = swapped["mask_label_b"] if "mask_label_b" in swapped else pd.Series(pd.NA, index=swapped.index)
    first_labels = swapped["mask_label"] if "mask_label" in swapped else pd.Series(pd.NA, index=swapped.index)
    swapped["mask_label"] = first_labels.astype("Int64").where(~has_b, second_labels.astype("Int64"))
    second = Cohort(cohort.root, cohort.spec, swapped, cohort.lines).subset(data.table.index)
    try:
        images = second.images(config.preprocess, cache, features=False, strict=True, progress=progress,
                               engine=engine)
    except UserInputError as err:
        raise UserInputError(f"second reader's mask (mask_path_b): {err}") from None
    row_of = {lesion_id: i for i, lesion_id in enumerate(images.lesion_ids)}
    crops = images.crops[[row_of[lesion_id] for lesion_id in data.table.index]]
    return crops, int(has_b[table["lesion_id"].isin(data.table.index)].sum())


def split_lesions(table: pd.DataFrame, config: ExperimentConfig, test_centre: str | None) -> np.ndarray:
    """Boolean mask of the training lesions; refuses a patient on both sides."""
    mode = "centre" if test_centre else config.split.mode
    if mode == "kfold":
        return np.ones(len(table), dtype=bool)
    if mode == "centre":
        centre = test_centre or config.split.test_centre
        if not centre:
            raise UserInputError("split mode 'centre' needs a test centre (--test-centre NAME or split.test_centre)")
        centres = sorted(table["centre"].unique())
        if centre not in centres:
            raise UserInputError(f"test centre {centre!r} is not in the cohort; centres: {centres}")
        train = (table["centre"] != centre).to_numpy()
    else:
        if "split" not in table or table["split"].isna().all():
            raise UserInputError(f"split mode 'column' needs a 'split' column in {TABLE_FILE}")
        train = (table["split"] == config.split.train_value).to_numpy()
        if not train.any():
            raise UserInputError(f"no lesion has split {config.split.train_value!r}; "
                                 f"values present: {sorted(table['split'].dropna().unique())}")
    both = sorted(set(table["patient_id"][train]) & set(table["patient_id"][~train]))
    if both:
        raise UserInputError(f"patients {both[:10]} have lesions in both the training and the test part; "
                             "a patient must be in one part only (leakage)")
    return train


def check_second_reader_masks(table: pd.DataFrame, config: ExperimentConfig, where: Path) -> None:
    """``masks: [a, b]`` needs a second reader's outline (mask_path_b) for some lesions."""
    if "b" in config.masks and ("mask_path_b" not in table or table["mask_path_b"].isna().all()):
        raise UserInputError(f"{where}: the experiment's 'masks: [a, b]' trains on a second reader's outlines too, "
                             "but no lesion has mask_path_b; add them or set 'masks: [a]'")


def check_trainable(table: pd.DataFrame, config: ExperimentConfig, where: Path) -> None:
    """What the training lesions' table rows and the experiment settle, checked before any image is read or any
    network trains: second outlines where the experiment trains on them, both classes and enough patients of
    each for the folds, and a lesion-type target the subtype heads can learn (every type at
    subtype.min_lesions, or merged). ``where``: the table, for messages."""
    check_second_reader_masks(table, config, where)
    check_fold_counts(table["label"].astype(int).to_numpy(), table["patient_id"].to_numpy(), config.split.folds)
    if "lesion_type" in config.targets:
        types = table["lesion_type"] if "lesion_type" in table else pd.Series(np.nan, index=table.index)
        subtype_classes(types, config.subtype.min_lesions, config.subtype.merge_rare)


@dataclass
class TrainRun:
    """A finished training run: the fitted model, where it was written, unreadable lesions, test figures."""

    model: FusionModel
    out: Path
    errors: list[LesionError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    test_predictions: pd.DataFrame | None = None
    oracle_auc: float | None = None
    test_auc: dict = field(default_factory=dict)


def train(config: ExperimentConfig, cohort_dir: Path, out: Path, cache: ImageCache, test_centre: str | None = None,
          strict: bool = False, overwrite: bool = False, progress: bool = True, device: str = "cpu",
          engine: Engine | None = None) -> TrainRun:
    """Train on a cohort's training part, score its test part, and write the artifact. ``device``: where the
    encoder trains (cpu, cuda with mixed precision, or auto); ``engine``: where the lesions are read."""
    from fusion_model.devices import resolve_device

    out = Path(out)
    device = str(resolve_device(device))  # a CUDA request on a machine without one is refused before any work
    check_output_dir(out, overwrite)
    cohort = load_cohort(cohort_dir, require_label=True)
    channels = crop_channels(cohort.spec.phases, cohort.spec.ct_intensities, config.preprocess.depth_channel)
    if config.encoder.pretrained:
        check_pretrained(config, channels)
    train_mask = split_lesions(cohort.table, config, test_centre)
    check_trainable(cohort.table[train_mask], config, cohort.root / TABLE_FILE)
    if config.compare_phases:
        check_phases_to_compare(cohort)
    data, errors, notes = lesion_data(cohort, config, cache, strict, progress, engine)
    if len(data.table) == 0:
        raise UserInputError(f"{cohort_dir}: no lesion could be read; see the errors above")
    second_reader_lesions = 0
    if "b" in config.masks:
        data.second_reader_crops, second_reader_lesions = second_reader_crops(cohort, data, config, cache, progress,
                                                                                   engine)
    train_ids = set(cohort.table["lesion_id"][train_mask])
    is_train = data.table.index.isin(train_ids)
    train_data = data.subset(np.flatnonzero(is_train))
    labels = train_data.table["label"].astype(int).to_numpy()
    checkpoints = out.parent / f".{out.name}.checkpoints"
    try:  # checkpoints stay for a resumed run after a crash or a kill, not after a refusal
        model, phase_models = _fit_models(config, cohort, train_data, labels, checkpoints, progress, device, engine)
    except UserInputError:
        shutil.rmtree(checkpoints, ignore_errors=True)
        raise

    run = TrainRun(model, out, errors, notes)
    extra_files = {}
    if (~is_train).any():
        test_data = data.subset(np.flatnonzero(~is_train))
        predictions = model.predict_variants(test_data)
        predictions.insert(0, "label", test_data.table["label"].astype(int))
        predictions.insert(0, "centre", test_data.table["centre"])
        predictions.insert(0, "patient_id", test_data.table["patient_id"])
        run.test_predictions = predictions
        run.test_auc = {c[2:] if c.startswith("p_") else c: nan_safe_auc(predictions["label"], predictions[c])
                        for c in predictions.columns if c.startswith(("p_", "rule_"))}
        extra_files["test_predictions.csv"] = predictions.to_csv(index_label="lesion_id")
    truth_path = cohort.root / TRUTH_FILE
    if truth_path.is_file():
        truth = pd.read_csv(truth_path).set_index("lesion_id")
        ids = [i for i in train_data.table.index if i in truth.index]
        run.oracle_auc = nan_safe_auc(truth.loc[ids, "label"], truth.loc[ids, "oracle_risk"])
    trained_on = TrainingCohort(
        name=cohort.spec.name, fingerprint=cohort_fingerprint(cohort), phases=cohort.spec.phases,
        ct_intensities=cohort.spec.ct_intensities, channels=channels, training_lesions=int(is_train.sum()),
        test_lesions=int((~is_train).sum()), test_centre=test_centre,
        unreadable_lesions=[e.__dict__ for e in errors], mask_sources=mask_source_counts(mask_sources(train_data.table)),
        oracle_auc_training=run.oracle_auc, test_auc=run.test_auc, masks=config.masks,
        second_reader_lesions=second_reader_lesions)
    phase_entries = {phase: (phase_model, replace(trained_on, phases=[phase], channels=[phase, "mask"], test_auc={},
                                                  phase_of=cohort.spec.phases))
                     for phase, phase_model in phase_models.items()}
    save_model(model, out, trained_on, overwrite=overwrite, extra_files=extra_files, phase_models=phase_entries)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return run


def _fit_models(config: ExperimentConfig, cohort: Cohort, train_data: LesionData, labels: np.ndarray,
                checkpoints: Path, progress: bool, device: str,
                engine: Engine | None = None) -> tuple[FusionModel, dict[str, FusionModel]]:
    """The model, and with ``compare_phases`` the same experiment on each phase alone (fold networks on
    ``engine``'s workers when it has any)."""
    patients = train_data.table["patient_id"].to_numpy()
    model = FusionModel(config, progress=progress, checkpoint_dir=checkpoints, device=device, engine=engine)
    model.fit(train_data, labels, patients)
    phase_models = {}
    for phase in cohort.spec.phases if config.compare_phases else ():
        if progress:
            print(f"compare_phases: the same experiment on the {phase} phase alone")
        phase_model = FusionModel(config, progress=progress, checkpoint_dir=checkpoints / phase, device=device,
                                  engine=engine)
        phase_model.fit(train_data.with_phases([phase]), labels, patients)
        phase_models[phase] = phase_model
    return model, phase_models


def check_phases_to_compare(cohort: Cohort) -> None:
    """``compare_phases`` needs a cohort with CT intensities on several phases."""
    if not cohort.spec.ct_intensities or len(cohort.spec.phases) < 2:
        shown = cohort.spec.phases if cohort.spec.ct_intensities else "none with CT intensities"
        raise UserInputError(f"{cohort.root / COHORT_FILE}: the experiment sets 'compare_phases: true', which trains "
                             f"the model on each CT phase alone, but this cohort's phases are {shown}; give a "
                             "cohort with several phases or set 'compare_phases: false'")


def check_cohort_matches_model(cohort: Cohort, model: FusionModel) -> None:
    """Refuse a cohort whose image channels differ from the model's."""
    trained = model.training_cohort
    channels = crop_channels(cohort.spec.phases, cohort.spec.ct_intensities, model.config.preprocess.depth_channel)
    if channels != trained.channels:
        raise UserInputError(f"{cohort.root}: the cohort's image channels {channels} differ from the model's "
                             f"{trained.channels}; declare the same phases in cohort.json")


@dataclass
class ScoringSession:
    """A verified model and a cohort it can score, checked against each other before any lesion is read: where
    predict, evaluate and explain start."""

    model: FusionModel
    cohort: Cohort

    @classmethod
    def open(cls, model_dir: Path, cohort_dir: Path, require_label: bool = False, centre: str | None = None,
             split: str | None = None, progress: bool = True) -> ScoringSession:
        """Load the model (hashes verified) and the cohort (or one centre / split of it); refuse a cohort whose
        image channels differ from the model's."""
        model = load_model(model_dir, progress=progress)
        cohort = load_cohort(cohort_dir, require_label=require_label).select(centre=centre, split=split)
        check_cohort_matches_model(cohort, model)
        return cls(model, cohort)

    def read(self, cache: ImageCache, purpose: str, strict: bool = False, progress: bool = True,
             engine: Engine | None = None) -> tuple[LesionData, list[LesionError]]:
        """The readable lesions (read on ``engine``) with the unreadable ones as errors; a cohort with none is
        refused, saying what it was read for."""
        data, errors, _ = lesion_data(self.cohort, self.model.config, cache, strict, progress, engine)
        if len(data.table) == 0:
            raise UserInputError(f"{self.cohort.root}: no lesion could be read; nothing to {purpose}")
        return data, errors


def predict(model_dir: Path, cohort_dir: Path, out_csv: Path, cache: ImageCache, strict: bool = False,
            progress: bool = True, all_variants: bool = False,
            engine: Engine | None = None) -> tuple[pd.DataFrame, list[LesionError]]:
    """Probabilities for every readable lesion of a cohort (labels not needed); errors for the rest.

    With subtype heads (targets include lesion_type): the primary variant's ``p_type_CLASS``, the most likely
    type and its probability; with ``all_variants`` also every variant's (``VARIANT_p_type_CLASS``)."""
    session = ScoringSession.open(model_dir, cohort_dir, progress=progress)
    model = session.model
    data, errors = session.read(cache, "predict", strict, progress, engine)
    frames = model.feature_frames(data)
    predictions = model.predict_variants(data, frames)
    types = model.predict_types(data, frames)
    primary = model.primary_variant
    thresholds = model.primary.thresholds
    out = pd.DataFrame({"patient_id": data.table["patient_id"], "centre": data.table["centre"],
                        "mask_source": mask_sources(data.table)})
    out["probability"] = predictions[f"p_{primary}"]
    out["variant"] = primary
    out["suspicious_at_youden"] = (out["probability"] >= thresholds["youden"]).astype(int)
    out = pd.concat([out, predictions], axis=1)
    if types:
        primary_types = types[primary]
        out["most_likely_type"] = primary_types.idxmax(axis=1).str.removeprefix("p_type_")
        out["most_likely_type_probability"] = primary_types.max(axis=1)
        out = pd.concat([out, primary_types], axis=1)
        if all_variants:
            out = pd.concat([out, *[frame.add_prefix(f"{name}_") for name, frame in types.items()]], axis=1)
    if "label" in data.table and data.table["label"].notna().any():
        out.insert(2, "label", data.table["label"])
    atomic_write_text(Path(out_csv), out.to_csv(index_label="lesion_id"))
    if errors:
        errors_csv = Path(out_csv).with_name(Path(out_csv).stem + "_errors.csv")
        atomic_write_text(errors_csv, pd.DataFrame([e.__dict__ for e in errors]).to_csv(index=False))
    return out, errors
