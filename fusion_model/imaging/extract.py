"""One pass over lesions' images: crops and radiological features, cached.

Lesions (:class:`~fusion_model.records.LesionRecord`) are read one at a time. A lesion that cannot be read goes to the errors table and
the pass goes on, unless ``strict``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fusion_model.config import PreprocessConfig
from fusion_model.errors import UserInputError
from fusion_model.features.radiological import radiological_features
from fusion_model.imaging.cache import ImageCache
from fusion_model.imaging.preprocess import LesionVolumes, crop_channels, lesion_crop, load_lesion_volumes
from fusion_model.progress import track
from fusion_model.records import LesionRecord

FEATURES_VERSION = 3  # 2: thickness features; 3: the shape profile of mask-only cohorts


@dataclass
class LesionError:
    """A lesion that could not be read, and why."""

    lesion_id: str
    row: int
    message: str


@dataclass
class CohortImages:
    """Crops and radiological features of the readable lesions, and the errors of the others."""

    lesion_ids: list[str]
    channels: list[str]
    crops: np.ndarray | None  # (lesions, channels, z, y, x) float16, rows follow lesion_ids
    features: pd.DataFrame  # index lesion_id
    errors: list[LesionError] = field(default_factory=list)

    def errors_frame(self) -> pd.DataFrame:
        """The errors as a table (lesion_id, row, message)."""
        return pd.DataFrame([e.__dict__ for e in self.errors], columns=["lesion_id", "row", "message"])


def _files(lesion: LesionRecord) -> list:
    return [*lesion.phase_paths.values(), lesion.require_mask()]


def _lazy_volumes(lesion: LesionRecord, phases, config: PreprocessConfig,
                  ct_intensities: bool) -> Callable[[], LesionVolumes]:
    """Read the lesion's volumes on first use only (a cache hit needs no image)."""

    @functools.cache
    def load() -> LesionVolumes:
        return load_lesion_volumes(lesion.phase_paths, lesion.mask_path, lesion.mask_label, phases,
                                   config.resample_mismatched,
                                   where=lesion.where, ct_intensities=ct_intensities)

    return load


def extract_lesion_images(
    lesions: Sequence[LesionRecord],
    phases: Sequence[str],
    ct_intensities: bool,
    config: PreprocessConfig,
    cache: ImageCache,
    crops: bool = True,
    features: bool = True,
    strict: bool = False,
    progress: bool = True,
) -> CohortImages:
    """Crops (channels: ``phases`` when they hold HU, then the mask) and features of each lesion, cached."""
    channels = crop_channels(phases, ct_intensities, config.depth_channel)
    crop_settings = {"kind": "crop", "config": config.model_dump(mode="json"), "channels": channels}
    feature_settings = {"kind": "features", "version": FEATURES_VERSION, "ct": ct_intensities,
                        "resample": config.resample_mismatched}
    ids, arrays, rows, errors = [], [], [], []
    for lesion in track(lesions, "reading lesions", total=len(lesions), enabled=progress):
        load = _lazy_volumes(lesion, phases, config, ct_intensities)
        try:
            files = _files(lesion)
            if crops:
                key = cache.key(files, {**crop_settings, "mask_label": lesion.mask_label})
                arrays.append(cache.array(key, lambda load=load: lesion_crop(load(), channels, config)))
            if features:
                key = cache.key(files, {**feature_settings, "mask_label": lesion.mask_label})
                rows.append(cache.json(key, lambda load=load: radiological_features(
                    load().phases, load().mask, ct_intensities)))
            ids.append(lesion.lesion_id)
        except UserInputError as err:
            if strict:
                raise
            if crops and len(arrays) > len(ids):
                arrays.pop()
            errors.append(LesionError(lesion.lesion_id, lesion.row, str(err)))
    crop_array = np.stack(arrays) if crops and arrays else None
    feature_frame = pd.DataFrame(rows, index=pd.Index(ids, name="lesion_id")) if features else \
        pd.DataFrame(index=pd.Index(ids, name="lesion_id"))
    return CohortImages(ids, channels, crop_array, feature_frame, errors)
