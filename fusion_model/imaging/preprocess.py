"""Lesion-centred crops: resample, crop, pad and window in one step per channel.

Rather than resampling a whole CT volume to isotropic spacing and then cutting out the
lesion, each channel is resampled directly onto a small isotropic grid centred on the
lesion's centroid (``sitk.Resample`` onto a reference grid). Voxels of the crop that fall
outside the scan get air (-1000 HU) for CT and 0 for the mask. Linear interpolation for CT,
nearest neighbour for masks. Channels: the cohort's phases (canonical order), the depth map if
configured (each voxel's distance to the mask's surface, mm / ``DEPTH_SCALE_MM``), then the mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from fusion_model.config import PreprocessConfig
from fusion_model.errors import UserInputError
from fusion_model.imaging.dicom_masks import is_dicom_mask, read_dicom_mask
from fusion_model.imaging.geometry import Geometry, geometry_differences, resample_onto
from fusion_model.imaging.io import read_image
from fusion_model.imaging.quality import ct_value_problems

AIR_HU = -1000.0
DEPTH_SCALE_MM = 16.0  # the depth channel's 1: a nodule of 32 mm or more saturates at its centre


def crop_channels(phases: Sequence[str], ct_intensities: bool, depth_channel: bool = False) -> list[str]:
    """Channel names of a crop: phases (when they hold HU values), the depth map if asked for, then the mask."""
    return [*(phases if ct_intensities else ()), *(("depth",) if depth_channel else ()), "mask"]


def depth_map(mask: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Each inside voxel's distance to the mask's surface (mm, half a voxel less than to the nearest outside
    voxel's centre) over ``DEPTH_SCALE_MM``, clipped to [0, 1]; 0 outside. ``mask`` (z, y, x) 0/1."""
    from fusion_model.features.radiological import surface_depth_mm

    return np.clip(surface_depth_mm(mask, (spacing_mm,) * 3) / DEPTH_SCALE_MM, 0.0, 1.0)  # the crop's edge: outside


def binary_mask(mask: sitk.Image, label: int | None) -> sitk.Image:
    """The lesion as a 0/1 uint8 image: voxels equal to ``label``, or all non-zero voxels."""
    out = sitk.Equal(mask, label) if label is not None else sitk.NotEqual(mask, 0)
    return sitk.Cast(out, sitk.sitkUInt8)


def read_lesion_mask(mask_path, mask_label: int | None, reference: sitk.Image, ct_paths=()) -> sitk.Image:
    """The lesion as a 0/1 mask: from a label image (``mask_label`` or any non-zero voxel), or from a DICOM
    SEG / RTSTRUCT (``mask_label`` = segment / ROI number) put on the ``reference`` CT's grid, after checking
    that it was drawn on one of ``ct_paths`` (the lesion's CT phases) where they are DICOM."""
    if is_dicom_mask(mask_path):
        return read_dicom_mask(mask_path, mask_label, reference, ct_paths)
    return binary_mask(read_image(mask_path), mask_label)


def lesion_centroid(mask01: sitk.Image) -> tuple[float, float, float]:
    """Physical centre (mm) of the lesion in a 0/1 mask."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask01)
    if not stats.HasLabel(1):
        raise UserInputError("the lesion mask is empty")
    return stats.GetCentroid(1)


def crop_grid(centre_mm: Sequence[float], voxels: int, spacing_mm: float, direction: Sequence[float]) -> sitk.Image:
    """An empty isotropic cube of ``voxels``^3 centred on ``centre_mm`` with the given direction."""
    grid = sitk.Image([voxels] * 3, sitk.sitkUInt8)
    grid.SetSpacing([spacing_mm] * 3)
    grid.SetDirection(tuple(direction))
    half = (voxels - 1) / 2.0 * spacing_mm
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    grid.SetOrigin(tuple(np.asarray(centre_mm, dtype=float) - d @ np.full(3, half)))
    return grid


def resample_to_grid(image: sitk.Image, grid: sitk.Image, is_mask: bool) -> np.ndarray:
    """Array (z, y, x) of ``image`` on ``grid``; air / 0 outside the scan."""
    default = 0.0 if is_mask else AIR_HU
    interpolator = sitk.sitkNearestNeighbor if is_mask else sitk.sitkLinear
    out_type = sitk.sitkUInt8 if is_mask else sitk.sitkFloat32
    resampled = sitk.Resample(image, grid, sitk.Transform(), interpolator, default, out_type)
    return sitk.GetArrayFromImage(resampled)


def window_hu(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Map HU to [0, 1]: ``window[0]`` and below to 0, ``window[1]`` and above to 1."""
    lo, hi = window
    return np.clip((values.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


@dataclass
class LesionVolumes:
    """A lesion's phases (HU, float32) and its 0/1 mask, all on the reference grid."""

    phases: dict[str, sitk.Image]
    mask: sitk.Image
    reference_phase: str


def load_lesion_volumes(
    phase_paths: dict[str, "object"], mask_path, mask_label: int | None, phase_order: Sequence[str],
    resample_mismatched: bool, where: str, ct_intensities: bool = True,
) -> LesionVolumes:
    """Read one lesion's phases and mask; put them on one grid or refuse with a clear message.

    Every phase must hold finite values; with ``ct_intensities`` they must also look like HU of that
    phase (see :func:`fusion_model.imaging.quality.ct_value_problems`).
    """
    present = [p for p in phase_order if p in phase_paths]
    if not present:
        raise UserInputError(f"{where}: no CT phase file for this lesion")
    reference_phase = present[0]
    phases = {p: read_image(phase_paths[p], sitk.sitkFloat32) for p in present}
    reference = phases[reference_phase]
    try:
        mask = read_lesion_mask(mask_path, mask_label, reference, [phase_paths[p] for p in present])
    except UserInputError as err:
        message = str(err)
        raise UserInputError(message if message.startswith(where) else f"{where}: {message}") from None
    if not np.any(sitk.GetArrayViewFromImage(mask)):
        raise UserInputError(f"{where}: mask {mask_path} has no voxel of this lesion")
    ref_geometry = Geometry.of(reference)
    for name in [*present[1:], "mask"]:
        image = mask if name == "mask" else phases[name]
        differences = geometry_differences(ref_geometry, Geometry.of(image))
        if not differences:
            continue
        if not resample_mismatched:
            raise UserInputError(
                f"{where}: {name} and the {reference_phase} phase do not share physical space "
                f"({'; '.join(differences)}); re-export them on one grid or enable resampling (--resample)"
            )
        resampled = resample_onto(image, reference, is_mask=name == "mask", default_value=0 if name == "mask"
                                  else AIR_HU)
        if name == "mask":
            mask = resampled
        else:
            phases[name] = resampled
    for name, image in phases.items():
        problems = ct_value_problems(image, name, mask, hounsfield=ct_intensities)
        if problems:
            raise UserInputError(f"{where}: {name} phase ({Path(phase_paths[name]).name}): {'; '.join(problems)}")
    return LesionVolumes(phases=phases, mask=mask, reference_phase=reference_phase)


def lesion_crop(volumes: LesionVolumes, channels: Sequence[str], config: PreprocessConfig) -> np.ndarray:
    """The crop as float16 (channels, z, y, x) in [0, 1]; a phase the lesion lacks is refused."""
    grid = crop_grid(lesion_centroid(volumes.mask), config.crop_voxels, config.spacing_mm,
                     volumes.mask.GetDirection())
    out = np.empty((len(channels), *([config.crop_voxels] * 3)), dtype=np.float16)
    mask = resample_to_grid(volumes.mask, grid, is_mask=True)
    for c, name in enumerate(channels):
        if name == "mask":
            out[c] = mask
        elif name == "depth":
            out[c] = depth_map(mask, config.spacing_mm)
        elif name in volumes.phases:
            out[c] = window_hu(resample_to_grid(volumes.phases[name], grid, is_mask=False), config.hu_window)
        else:
            raise UserInputError(f"the {name} phase is missing for this lesion; the crop needs channels {channels}")
    return out
