"""The trained segmenter on disk, pickle-free: ``segmenter.json`` (settings, phases, the scan spacings it was
trained on, the operating point, training figures) and ``segmenter.safetensors`` (the network's weights)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fusion_model import __version__
from fusion_model.config import SegmentConfig
from fusion_model.configbase import parse_model
from fusion_model.errors import UserInputError
from fusion_model.fileio import atomic_directory, json_safe
from fusion_model.segment.manifest import FORMAT, FORMAT_VERSION, MANIFEST, read_segmenter_manifest
from fusion_model.segment.network import build_segmenter, channels_last
from fusion_model.segment.refine import refiner_channels

WEIGHTS = "segmenter.safetensors"
REFINER_WEIGHTS = "refiner.safetensors"


@dataclass
class Segmenter:
    """A trained lesion segmenter: network, settings, input phases, training spacing range, operating point."""

    network: torch.nn.Module
    config: SegmentConfig
    phases: list[str]
    spacing_range: tuple[list[float], list[float]]  # per-axis (x, y, z) min and max voxel edge seen in training
    threshold: float  # component-probability operating point
    info: dict = field(default_factory=dict)
    refiner: torch.nn.Module | None = None  # the lesion-centred second stage (config.refine)

    @property
    def match_threshold(self) -> float:
        """The least component probability a lesion of the table may be matched to."""
        minimum = self.config.match_min_probability
        return self.threshold if minimum is None else min(minimum, self.threshold)

    @property
    def learned_glands(self) -> bool:
        """Whether the detector outputs the adrenal-gland region (learned from gland outlines)."""
        return bool(self.info.get("training", {}).get("learned_glands"))

    def to(self, device: torch.device) -> Segmenter:
        """Move the networks to a device."""
        channels_last(self.network.to(device))
        if self.refiner is not None:
            channels_last(self.refiner.to(device))
        return self

    def save(self, out: Path, overwrite: bool = False) -> Path:
        """Write the segmenter directory atomically."""
        with atomic_directory(Path(out), overwrite=overwrite) as staging:
            state = {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}
            save_file(state, str(staging / WEIGHTS))
            if self.refiner is not None:
                save_file({k: v.detach().cpu().contiguous() for k, v in self.refiner.state_dict().items()},
                          str(staging / REFINER_WEIGHTS))
            manifest = json_safe({
                "format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__,
                "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "config": self.config.model_dump(mode="json"), "phases": self.phases,
                "spacing_range_mm": {"min": self.spacing_range[0], "max": self.spacing_range[1]},
                "component_threshold": self.threshold, **self.info,
            })
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        return Path(out)


def load_segmenter(path: Path) -> Segmenter:
    """Read a segmenter directory written by ``fusion-model segment train``."""
    path = Path(path)
    manifest_path = path / MANIFEST
    manifest = read_segmenter_manifest(path)
    # segmenters written before the refiner's soft-tissue window was a setting saw the wide window only, and their
    # operating points were set on the detector's probabilities alone
    settings = {"refine_soft_tissue_window": None, "refine_confirms": False, **manifest["config"]}
    config = parse_model(SegmentConfig, settings, str(manifest_path))
    phases = list(manifest["phases"])
    learned_glands = bool(manifest.get("training", {}).get("learned_glands"))
    network = _load_network(config, len(phases), path / WEIGHTS, 3 if learned_glands else 2)
    refiner = _load_network(config, refiner_channels(phases, config), path / REFINER_WEIGHTS) if config.refine \
        else None
    spacing = manifest["spacing_range_mm"]
    info = {k: v for k, v in manifest.items() if k not in ("format", "format_version", "config", "phases",
                                                           "spacing_range_mm", "component_threshold")}
    return Segmenter(network, config, phases, (spacing["min"], spacing["max"]),
                     float(manifest["component_threshold"]), info, refiner)


def _load_network(config: SegmentConfig, in_channels: int, weights: Path, out_channels: int = 2) -> torch.nn.Module:
    network = build_segmenter(config, in_channels, out_channels)
    try:
        network.load_state_dict(load_file(str(weights)))
    except (SafetensorError, FileNotFoundError, RuntimeError, OSError) as err:
        raise UserInputError(f"{weights}: the segmenter weights cannot be read ({str(err).splitlines()[0]}); "
                             "retrain the segmenter") from None
    return channels_last(network).eval()
