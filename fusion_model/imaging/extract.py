"""One pass over lesions' images: crops and radiological features, cached.

Lesions (:class:`~fusion_model.records.LesionRecord`) are read one at a time. A lesion that cannot be read goes to the errors table and
the pass goes on, unless ``strict``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fusion_model.config import PreprocessConfig
from fusion_model.engine import Engine
from fusion_model.errors import UserInputError
from fusion_model.features.radiological import radiological_features
from fusion_model.imaging.cache import ImageCache
from fusion_model.imaging.preprocess import LesionVolumes, crop_channels, lesion_crop, load_lesion_volumes
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


@dataclass
class LesionImages:
    """One lesion's crop and features (None where not asked for), or why it could not be read; and how many of
    its cache entries were read rather than computed."""

    lesion_id: str
    crop: np.ndarray | None = None
    crop_path: Path | None = None  # the crop in the shared cache, when the task was asked for its path
    features: dict | None = None
    error: LesionError | None = None
    cache_hits: int = 0
    cache_misses: int = 0


def lesion_images(lesion: LesionRecord, phases: Sequence[str], ct_intensities: bool, config: PreprocessConfig,
                  cache: ImageCache, crops: bool = True, features: bool = True,
                  crop_by_path: bool = False) -> LesionImages:
    """One lesion's crop (channels: ``phases`` when they hold HU, then the mask) and radiological features, read
    from the cache or computed into it; an unreadable lesion gives its error instead (a task of a pass: pure, the
    same on any worker). ``crop_by_path`` (a cache on disk): the crop's path in the cache instead of the array."""
    channels = crop_channels(phases, ct_intensities, config.depth_channel)
    cache = cache.counting()
    load = _lazy_volumes(lesion, phases, config, ct_intensities)
    result = LesionImages(lesion.lesion_id)
    try:
        files = _files(lesion)
        if crops:
            settings = {"kind": "crop", "config": config.model_dump(mode="json"), "channels": channels}
            key = cache.key(files, {**settings, "mask_label": lesion.mask_label})

            def compute() -> np.ndarray:  # the volumes are read on a miss only
                return lesion_crop(load(), channels, config)

            if crop_by_path and cache.root is not None:
                result.crop_path = cache.array_path(key, compute)
            else:
                result.crop = cache.array(key, compute)
        if features:
            settings = {"kind": "features", "version": FEATURES_VERSION, "ct": ct_intensities,
                        "resample": config.resample_mismatched}
            key = cache.key(files, {**settings, "mask_label": lesion.mask_label})
            result.features = cache.json(key, lambda: radiological_features(load().phases, load().mask,
                                                                            ct_intensities))
    except UserInputError as err:
        result = LesionImages(lesion.lesion_id, error=LesionError(lesion.lesion_id, lesion.row, str(err)))
    result.cache_hits, result.cache_misses = cache.hits, cache.misses
    return result


def read_npy_into(path: Path, out: np.ndarray) -> bool:
    """Read a .npy file of ``out``'s shape and dtype straight into ``out``; False (``out`` undefined) when the
    file is unreadable, damaged or holds another array."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = reader(handle)
            if tuple(shape) != out.shape or dtype != out.dtype or fortran_order or not out.flags.c_contiguous:
                return False
            return handle.readinto(memoryview(out.reshape(-1).view(np.uint8))) == out.nbytes and not handle.read(1)
    except (ValueError, OSError):
        return False


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
    engine: Engine | None = None,
) -> CohortImages:
    """Crops (channels: ``phases`` when they hold HU, then the mask) and features of each lesion, cached; one
    :func:`lesion_images` task per lesion on ``engine`` (default: this process). On a Dask cluster the workers
    must see the lesions' files and write the cache (checked before the pass)."""
    channels = crop_channels(phases, ct_intensities, config.depth_channel)
    engine = engine or Engine()
    lesions = list(lesions)
    if engine.on_cluster:
        engine.check_paths({f.parent for lesion in lesions for f in lesion.phase_paths.values()}
                           | {lesion.mask_path.parent for lesion in lesions if lesion.mask_path is not None},
                           "the cohort's folder")
    if cache.root is not None:
        engine.check_writable([cache.root], "the image cache")
    # on a cluster with a shared cache the workers write the crops there and the arrays are read here, not sent
    by_path = engine.on_cluster and cache.root is not None
    task = functools.partial(lesion_images, phases=list(phases), ct_intensities=ct_intensities, config=config,
                             cache=cache, crops=crops, features=features, crop_by_path=by_path)
    # one array for all crops, filled as the lesions come (no list of crops stacked at the end: a second copy)
    crop_shape = (len(channels), *([config.crop_voxels] * 3))
    crop_array = np.empty((len(lesions), *crop_shape), dtype=np.float16) if crops else None
    ids, rows, errors = [], [], []
    for lesion, result in zip(lesions, engine.map(task, lesions, "reading lesions", progress)):
        if result.crop_path is not None and not read_npy_into(result.crop_path, crop_array[len(ids)]):
            result.crop_path.unlink(missing_ok=True)  # damaged in the shared cache: computed again here
            result = lesion_images(lesion, list(phases), ct_intensities, config, cache, crops, features)
        cache.hits += result.cache_hits
        cache.misses += result.cache_misses
        if result.error is not None:
            if strict:
                raise UserInputError(result.error.message)
            errors.append(result.error)
            continue
        if crops and result.crop is not None:
            crop_array[len(ids)] = result.crop
        ids.append(result.lesion_id)
        if features:
            rows.append(result.features)
    crop_array = crop_array[:len(ids)] if crops and ids else None  # the rows of unread lesions are never touched
    feature_frame = pd.DataFrame(rows, index=pd.Index(ids, name="lesion_id")) if features else \
        pd.DataFrame(index=pd.Index(ids, name="lesion_id"))
    return CohortImages(ids, channels, crop_array, feature_frame, errors)
