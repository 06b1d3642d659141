"""The second, lesion-centred stage: re-outline each found component on a crop scaled to its size.

The whole-scan U-Net finds lesions at the segmenter's coarse spacing; its outline of a 12 mm adenoma spans a few
voxels and a 12 cm carcinoma does not fit in one patch. The refiner sees a cube of ``refine_voxels``^3 centred on
the lesion whose edge is ``refine_context`` times the lesion's extent (at least ``refine_min_mm``), so every
lesion is outlined at about the same relative resolution. It is trained on crops around the reference lesions
with random shifts and scales (so it tolerates the first stage's imprecise boxes); at inference a refined
outline that touches the crop's border is outlined again on a larger crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from fusion_model.config import SegmentConfig
from fusion_model.imaging.preprocess import crop_grid, window_hu
from fusion_model.segment.network import flip_averaged_probability
from fusion_model.segment.scans import AIR_HU

GROW_FACTOR = 1.6
MAX_GROWTHS = 2


def lesion_box_mm(mask: np.ndarray, reference: sitk.Image) -> tuple[np.ndarray, float]:
    """Physical centre (mm) of a 0/1 array's bounding box on the reference grid, and its largest extent (mm)."""
    idx = np.argwhere(mask)
    lo, hi = idx.min(axis=0)[::-1], idx.max(axis=0)[::-1]  # x, y, z indices
    a = np.array(reference.TransformContinuousIndexToPhysicalPoint([float(v) for v in lo]))
    b = np.array(reference.TransformContinuousIndexToPhysicalPoint([float(v) for v in hi]))
    extent = float(np.max((hi - lo + 1) * np.array(reference.GetSpacing())))
    return (a + b) / 2, extent


def crop_edge_mm(extent_mm: float, config: SegmentConfig) -> float:
    """The edge of the refinement crop for a lesion of this extent."""
    return max(config.refine_min_mm, config.refine_context * extent_mm)


def difference_pair(phases: list[str], config: SegmentConfig) -> tuple[int, int] | None:
    """Indices (contrast phase, unenhanced) of the refiner's enhancement channel, or None when it has none."""
    if not config.refine_difference or "unenhanced" not in phases or len(phases) < 2:
        return None
    contrast = "venous" if "venous" in phases else [p for p in phases if p != "unenhanced"][-1]
    return phases.index(contrast), phases.index("unenhanced")


def refiner_channels(phases: list[str], config: SegmentConfig) -> int:
    """Input channels of the refiner: the phases (twice with a soft-tissue window), and the enhancement when
    there is one."""
    windows = 1 + (config.refine_soft_tissue_window is not None)
    return windows * len(phases) + (difference_pair(phases, config) is not None)


def crop_on(images: list[sitk.Image], centre_mm, edge_mm: float, config: SegmentConfig,
            direction, difference: tuple[int, int] | None = None) -> tuple[np.ndarray, sitk.Image]:
    """(channels, n, n, n) crop of the phases (HU-windowed; again in the soft-tissue window when the config has
    one) and, with ``difference`` (indices of a contrast phase and the unenhanced one), their difference mapped
    from ``refine_difference_window``; and its grid."""
    n = config.refine_voxels
    grid = crop_grid(centre_mm, n, edge_mm / n, direction)
    hu = [sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, AIR_HU,
                                               sitk.sitkFloat32)) for image in images]
    channels = [window_hu(values, config.hu_window) for values in hu]
    if config.refine_soft_tissue_window is not None:
        channels += [window_hu(values, config.refine_soft_tissue_window) for values in hu]
    if difference is not None:
        channels.append(window_hu(hu[difference[0]] - hu[difference[1]], config.refine_difference_window))
    return np.stack(channels).astype(np.float32), grid


def target_on(mask01: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """A 0/1 mask on a crop grid (linear interpolation of the 0/1 values, >= 0.5)."""
    resampled = sitk.Resample(sitk.Cast(mask01, sitk.sitkFloat32), grid, sitk.Transform(), sitk.sitkLinear, 0.0,
                              sitk.sitkFloat32)
    return (sitk.GetArrayFromImage(resampled) >= 0.5).astype(np.uint8)


def training_crops(images: list[sitk.Image], lesion_masks: np.ndarray, reference: sitk.Image, config: SegmentConfig,
                   rng: np.random.Generator, jitter: bool = True,
                   difference: tuple[int, int] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Crops (image float16, target uint8) around each lesion of a scan: ``refine_crops_per_lesion`` randomly
    shifted and scaled ones, or one exact crop per lesion without ``jitter``."""
    union = sitk.GetImageFromArray(np.any(lesion_masks, axis=0).astype(np.uint8))
    union.CopyInformation(reference)
    out = []
    for mask in lesion_masks:
        centre, extent = lesion_box_mm(mask, reference)
        for _ in range(config.refine_crops_per_lesion if jitter else 1):
            edge = crop_edge_mm(extent, config)
            shifted = centre
            if jitter:
                edge *= float(np.exp(rng.uniform(-config.refine_scale_jitter, config.refine_scale_jitter)))
                shifted = centre + rng.normal(0, config.refine_shift_jitter * extent, 3)
            image, grid = crop_on(images, shifted, edge, config, reference.GetDirection(), difference)
            out.append((image.astype(np.float16), target_on(union, grid)))
    return out


def _touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
                or mask[:, :, 0].any() or mask[:, :, -1].any())


@dataclass(frozen=True)
class RefinedOutline:
    """The refiner's outline of a component and how sure it is that a lesion is there."""

    mask: np.ndarray | None  # bool, reference grid; None: the refiner outlined nothing at the component
    confidence: float  # the refiner's highest probability over the component's own voxels


@torch.no_grad()
def refine_component(refiner: torch.nn.Module, images: list[sitk.Image], component: np.ndarray,
                     reference: sitk.Image, config: SegmentConfig, device: torch.device,
                     difference: tuple[int, int] | None = None, grow: bool = True) -> RefinedOutline:
    """The refined outline of one component (the connected pieces of the refiner's mask that overlap it, or the
    largest when none does) and the refiner's confidence there. An outline touching the crop's border is outlined
    again on a larger crop, unless not ``grow`` (a lesion of known size)."""
    from scipy import ndimage

    centre, extent = lesion_box_mm(component, reference)
    edge = crop_edge_mm(extent, config)
    refiner.eval()
    for _ in range(MAX_GROWTHS + 1 if grow else 1):
        image, grid = crop_on(images, centre, edge, config, reference.GetDirection(), difference)
        probability = flip_averaged_probability(refiner, refiner, torch.from_numpy(image)[None].to(device),
                                                config.refine_test_time_flips, device)[0]
        inside = probability >= config.voxel_threshold
        if not _touches_border(inside):
            break
        edge *= GROW_FACTOR
    crop = sitk.GetImageFromArray(probability.astype(np.float32))
    crop.CopyInformation(grid)
    resampled = sitk.GetArrayFromImage(sitk.Resample(crop, reference, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                     sitk.sitkFloat32))
    confidence = float(resampled[component].max()) if component.any() else 0.0
    native = resampled >= config.voxel_threshold
    if not native.any():
        return RefinedOutline(None, confidence)
    pieces, _ = ndimage.label(native)
    keep = np.unique(pieces[component & native])
    keep = keep[keep > 0]
    if not len(keep):  # the refined outline misses the component: keep its largest piece
        sizes = np.bincount(pieces.ravel())
        sizes[0] = 0
        keep = [int(np.argmax(sizes))]
    return RefinedOutline(np.isin(pieces, keep), confidence)
