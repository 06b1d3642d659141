"""The model artifact: a directory that can be shared without being able to run code.

    manifest.json        versions, config, feature names, cohort fingerprint, metrics,
                         calibrators and thresholds as plain numbers, SHA-256 of every file
    manifest.sha256      SHA-256 of manifest.json
    encoder/foldK.safetensors   the encoder's fold networks (safetensors: tensors only); they score new
                         lesions (encoder.inference: fold_ensemble) and are kept either way
    encoder/final.safetensors   the network trained on all lesions (encoder.inference: final only)
    encoder/alignment.safetensors  each network's map into the shared embedding space (procrustes)
    heads/*.json         XGBoost models in XGBoost's own JSON format (named in each variant's entry; the
                         subtype heads, with targets [malignancy, lesion_type], in "subtypes")
    oof_predictions.csv  out-of-fold probabilities on the training lesions

Nothing is pickled. Loading verifies every hash and the versions (the manifest is read by
:mod:`fusion_model.model_manifest`), and refuses a modified,
incomplete or incompatible artifact with a message that says what to do.
"""

from __future__ import annotations

import datetime as dt
import json
import warnings
from pathlib import Path

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from clinical_schema import SCHEMA_VERSION
from fusion_model import __version__
from fusion_model.config import ExperimentConfig
from fusion_model.configbase import parse_model
from fusion_model.encoder.alignment import SimilarityMap
from fusion_model.encoder.estimator import ImageEncoder
from fusion_model.encoder.train import build_network
from fusion_model.errors import FusionModelWarning, UserInputError
from fusion_model.features.table import EmbeddingPCA
from fusion_model.fileio import atomic_directory, json_safe, sha256_file
from fusion_model.heads.base import Head
from fusion_model.heads.subtype import SubtypeFit, SubtypeInfo
from fusion_model.heads.variant import VariantFit
from fusion_model.model import FusionModel
from fusion_model.model_manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    MANIFEST_HASH,
    read_manifest,
    unlisted_files,
    unlisted_files_note,
)
from fusion_model.records import TrainingCohort

ENCODER_DIR = "encoder"
ALIGNMENT_FILE = f"{ENCODER_DIR}/alignment.safetensors"
OOF_FILE = "oof_predictions.csv"


PHASES_DIR = "phases"


def save_model(model: FusionModel, path: Path, trained_on: TrainingCohort, overwrite: bool = False,
               extra_files: dict[str, str] | None = None,
               phase_models: dict[str, tuple[FusionModel, TrainingCohort]] | None = None) -> Path:
    """Write the artifact atomically; ``extra_files`` maps relative names to text contents; ``phase_models``
    maps a CT phase to the same experiment trained on that phase alone and its cohort entry (``compare_phases``),
    each written as a complete artifact under ``phases/PHASE/`` and covered by the main manifest's hashes."""
    model.check_fitted()
    with atomic_directory(Path(path), overwrite=overwrite) as staging:
        phases = {}
        for phase, (phase_model, phase_cohort) in (phase_models or {}).items():
            phase_model.check_fitted()
            (staging / PHASES_DIR / phase).mkdir(parents=True)
            _write_artifact(phase_model, staging / PHASES_DIR / phase, phase_cohort, {}, {})
            phases[phase] = f"{PHASES_DIR}/{phase}"
        _write_artifact(model, staging, trained_on, extra_files or {}, phases)
    return Path(path)


def _write_artifact(model: FusionModel, staging: Path, trained_on: TrainingCohort, extra_files: dict[str, str],
                    phase_models: dict[str, str]) -> None:
    (staging / "heads").mkdir()
    (staging / ENCODER_DIR).mkdir()
    encoder = model.encoder_
    networks = {f"fold{k}": network for k, network in enumerate(encoder.fold_models_)}
    if hasattr(encoder, "model_"):
        networks["final"] = encoder.model_
    network_files = {}
    for name, network in networks.items():
        network_files[name] = f"{ENCODER_DIR}/{name}.safetensors"
        save_file({k: v.detach().contiguous() for k, v in network.state_dict().items()},
                  str(staging / network_files[name]))
    if encoder.alignment_ is not None:
        save_file({k: torch.from_numpy(v) for name, m in encoder.alignment_.items()
                   for k, v in m.to_arrays(name).items()}, str(staging / ALIGNMENT_FILE))

    def save_head(key: str, head: Head) -> str:
        rel = f"heads/{key}.json"
        head.save(staging / rel)
        return rel

    variants = {name: fit.to_manifest(save_head) for name, fit in model.variants_.items()}
    subtypes = {name: fit.to_manifest(save_head) for name, fit in model.subtypes_.items()}
    model.oof_.to_csv(staging / OOF_FILE, index_label="lesion_id")
    for rel, text in extra_files.items():
        (staging / rel).write_text(text, encoding="utf-8")
    files = {p.relative_to(staging).as_posix(): sha256_file(p)
             for p in sorted(staging.rglob("*")) if p.is_file()}
    manifest = json_safe({
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "package_version": __version__, "schema_version": SCHEMA_VERSION,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": model.config.model_dump(mode="json"),
        "cohort": trained_on.to_manifest(),
        "crop_channels": len(model.channels_),
        "encoder": {"networks": network_files, "inference": encoder.inference_,
                    "alignment": ALIGNMENT_FILE if encoder.alignment_ is not None else None,
                    "oof_auc": encoder.oof_auc_, "final_epochs": encoder.final_epochs_,
                    "pretrained": getattr(encoder, "pretrained_", None), "channels": model.channels_},
        "pca": None if model.pca_ is None else model.pca_.to_manifest(),
        "tabular_groups": model.tabular_groups_,
        "variants": variants,
        "subtypes": subtypes or None, "subtype": None if model.subtype_info_ is None else model.subtype_info_.to_manifest(),
        "primary_variant": model.primary_variant,
        "metrics": {"oof_auc": model.oof_auc_, "baseline_oof_auc": model.baseline_oof_auc_},
        "phase_models": phase_models or None,
        "files": files,
    })
    text = json.dumps(manifest, indent=2, allow_nan=False) + "\n"
    (staging / MANIFEST).write_text(text, encoding="utf-8")
    (staging / MANIFEST_HASH).write_text(sha256_file(staging / MANIFEST) + "\n", encoding="utf-8")


def load_model(path: Path, progress: bool = False) -> FusionModel:
    """Rebuild a fitted FusionModel from a verified artifact (warns of files its manifest does not list)."""
    path = Path(path)
    manifest = read_manifest(path)
    stray = unlisted_files(path, manifest)
    if stray:
        warnings.warn(unlisted_files_note(path, stray), FusionModelWarning, stacklevel=2)
    config = parse_model(ExperimentConfig, manifest["config"], f"{path / MANIFEST} config")
    entry = manifest["encoder"]
    # the crop channels the networks learnt from (older artifacts: the training cohort's)
    channels = entry.get("channels") or TrainingCohort.from_manifest(manifest["cohort"]).channels
    networks = {}
    for name, rel in entry["networks"].items():
        network = build_network(config.encoder, channels)
        try:
            network.load_state_dict(load_file(str(path / rel)), strict=True)
        except (SafetensorError, RuntimeError, OSError, ValueError, KeyError) as err:  # wrong file: nothing ran
            raise UserInputError(f"{path / rel}: not the encoder weights this model's config describes "
                                 f"({type(err).__name__}); the artifact is damaged: retrain or restore it") from None
        networks[name] = network
    alignment = None
    if entry.get("alignment"):
        try:
            arrays = {k: v.numpy() for k, v in load_file(str(path / entry["alignment"])).items()}
            alignment = {name: SimilarityMap.from_arrays(arrays, name) for name in networks}
        except (SafetensorError, OSError, KeyError, IndexError) as err:
            raise UserInputError(f"{path / entry['alignment']}: not the embedding maps of this model's networks "
                                 f"({type(err).__name__}); the artifact is damaged: retrain or restore it") from None
    folds = [networks[f"fold{k}"] for k in range(sum(name.startswith("fold") for name in networks))]
    encoder = ImageEncoder.from_networks(config, folds, networks.get("final"), alignment, entry["inference"],
                                         entry["oof_auc"], entry["final_epochs"], progress=progress)

    try:
        variants = {name: VariantFit.from_manifest(name, entry, path, config)
                    for name, entry in manifest["variants"].items()}
    except (KeyError, TypeError, ValueError) as err:
        raise UserInputError(f"{path / MANIFEST}: a variant entry is incomplete or malformed ({err}); "
                             "retrain the model") from None
    try:
        subtypes = {name: SubtypeFit.from_manifest(name, entry, config, path)
                    for name, entry in (manifest.get("subtypes") or {}).items()}
    except (KeyError, TypeError, ValueError) as err:
        raise UserInputError(f"{path / MANIFEST}: a subtype entry is incomplete or malformed ({err}); "
                             "retrain the model") from None
    return FusionModel.from_fitted(config, encoder, variants, EmbeddingPCA.from_manifest(manifest["pca"]),
                                   manifest["tabular_groups"],
                                   channels, manifest["metrics"]["baseline_oof_auc"],
                                   pd.read_csv(path / OOF_FILE, index_col="lesion_id"), progress=progress,
                                   manifest=manifest, subtypes=subtypes, subtype_info=SubtypeInfo.from_manifest(manifest.get("subtype")))


def load_phase_models(path: Path, progress: bool = False, manifest: dict | None = None) -> dict[str, FusionModel]:
    """The same experiment trained on each CT phase alone (``compare_phases``), by phase; empty when the
    artifact has none. ``manifest``: the artifact's manifest when already verified (a loaded model's
    ``manifest_``), so its files are not hashed twice."""
    path = Path(path)
    entries = (manifest if manifest is not None else read_manifest(path)).get("phase_models") or {}
    models = {}
    for phase, rel in entries.items():
        folder = (path / rel).resolve()
        if path.resolve() not in folder.parents:
            raise UserInputError(f"{path / MANIFEST}: phase model {phase!r} points outside the artifact ({rel}); "
                                 "the artifact is damaged: retrain or restore it")
        models[phase] = load_model(folder, progress=progress)
    return models
