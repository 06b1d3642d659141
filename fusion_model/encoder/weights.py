"""The pre-trained encoder's weight file (safetensors, tensors only) and its checks.

The file holds the network without its malignancy layer and input skip (those start afresh on the user's cohort)
and, as metadata, the network's architecture settings, the crop's channels and geometry, the pre-training
settings and its held-out figures, so that a mismatched experiment is refused with a message before any
training, not loaded into the wrong shapes. Written by ``fusion-model pretrain-encoder``
(:mod:`fusion_model.encoder.pretrain`); read by every network of an experiment with ``encoder.pretrained``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from fusion_model.config import ExperimentConfig
from fusion_model.errors import UserInputError
from fusion_model.fileio import atomic_write, sha256_file

FORMAT = "fusion-model pretrained encoder 1"
METADATA_KEY = "fusion_model"
# fresh on the user's cohort: the malignancy layer (another label's meaning) and the input skip (fitted there)
NOT_TRANSFERRED = ("head.", "input_skip.", "statistics_mean", "statistics_scale")


def check_output(path: Path, overwrite: bool = False) -> None:
    """Refuse a weight file name that is not *.safetensors, or one that exists (unless ``overwrite``)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UserInputError(f"--out {path}: name the weight file *.safetensors")
    if path.exists() and not overwrite:
        raise UserInputError(f"{path}: already exists; choose another --out or pass --overwrite")
    if path.is_dir():
        raise UserInputError(f"{path}: is a folder; give a file name *.safetensors")


def save_pretrained(model: nn.Module, metadata: dict, path: Path, overwrite: bool = False) -> Path:
    """Write the network (without what starts afresh) and its metadata (``FORMAT``, architecture, channels,
    geometry, settings, figures), atomically."""
    path = Path(path)
    check_output(path, overwrite)
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()
               if not k.startswith(NOT_TRANSFERRED)}
    metadata = {METADATA_KEY: json.dumps(metadata, default=float)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_pretrained_metadata(path: Path, setting: str = "encoder.pretrained") -> dict:
    """The metadata of a weight file written by :func:`save_pretrained`; anything else is refused."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{setting}: {path} does not exist (relative paths are read from the current "
                             f"directory, here {Path.cwd()}); write it with 'fusion-model pretrain-encoder'")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = json.loads((handle.metadata() or {})[METADATA_KEY])
    except (SafetensorError, KeyError, ValueError, OSError) as err:
        raise UserInputError(f"{setting}: {path} is not a weight file of 'fusion-model pretrain-encoder' "
                             f"({type(err).__name__}: {err})") from None
    if metadata.get("format") != FORMAT:
        raise UserInputError(f"{setting}: {path} has format {metadata.get('format')!r}, this version reads "
                             f"{FORMAT!r}; write it again with 'fusion-model pretrain-encoder'")
    return metadata


def describe_pretrained(path: str | Path) -> dict:
    """What a model records about the weights its networks started from: the file, its SHA-256, how it was
    pre-trained and its held-out figures."""
    metadata = read_pretrained_metadata(Path(path))
    return {"file": str(path), "sha256": sha256_file(Path(path)), "settings": metadata["settings"],
            "figures": metadata["figures"]}


def check_pretrained(experiment: ExperimentConfig, channels: list[str]) -> None:
    """Refuse, before any training, a weight file made for another network or other crops."""
    path = experiment.encoder.pretrained
    if not path:
        return
    metadata = read_pretrained_metadata(Path(path))
    pre, architecture = experiment.preprocess, experiment.encoder.architecture()
    differences = [f"encoder.{k}: {v!r} in the file, {architecture[k]!r} here"
                   for k, v in metadata["architecture"].items() if architecture.get(k) != v]
    if metadata["channels"] != channels:
        differences.append(f"crop channels {metadata['channels']} in the file, {channels} for this cohort")
    if not math.isclose(metadata["spacing_mm"], pre.spacing_mm) or metadata["crop_voxels"] != pre.crop_voxels:
        differences.append(f"crops of {metadata['crop_voxels']}^3 voxels at {metadata['spacing_mm']:g} mm in the "
                           f"file, {pre.crop_voxels}^3 at {pre.spacing_mm:g} mm here")
    has_ct = any(c not in ("depth", "mask") for c in channels)  # the window only matters for CT channels
    if has_ct and [float(v) for v in metadata["hu_window"]] != [float(v) for v in pre.hu_window]:
        differences.append(f"HU window {metadata['hu_window']} in the file, {list(pre.hu_window)} here")
    if differences:
        phases = [c for c in channels if c not in ("depth", "mask")]
        raise UserInputError(
            f"encoder.pretrained: {path} was pre-trained for another network or other crops ({'; '.join(differences)}); "
            f"pre-train for this experiment: fusion-model pretrain-encoder --config EXPERIMENT.yaml "
            + "".join(f"--phase {p} " for p in phases) + "--out FILE.safetensors")


def load_pretrained(model: nn.Module, path: str | Path) -> None:
    """Put a weight file's tensors into ``model`` (its malignancy layer and input skip keep their fresh values)."""
    path = Path(path)
    read_pretrained_metadata(path)
    tensors = load_file(str(path))
    own = model.state_dict()
    expected = {k for k in own if not k.startswith(NOT_TRANSFERRED)}
    wrong_shape = [k for k in expected & tensors.keys() if tuple(tensors[k].shape) != tuple(own[k].shape)]
    if expected != set(tensors) or wrong_shape:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise UserInputError(f"encoder.pretrained: {path} does not fit this network (missing {missing[:3]}, "
                             f"unexpected {extra[:3]}, other shapes {wrong_shape[:3]}); pre-train again with this "
                             "experiment's encoder settings")
    model.load_state_dict({**own, **{k: v.to(own[k].device, own[k].dtype) for k, v in tensors.items()}})
