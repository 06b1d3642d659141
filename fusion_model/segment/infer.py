"""Segmenter inference: sliding-window probabilities, back on the scan's own grid, connected components with a
probability each, and the matching of components to the table's lesions (by side where given)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference

from fusion_model.config import SegmentConfig
from fusion_model.segment.network import flip_averaged_probability
from fusion_model.segment.refine import refine_component
from fusion_model.segment.scans import ScanVolume, body_midline_x


def patch_zyx(config: SegmentConfig) -> tuple[int, int, int]:
    """The patch in array order (z, y, x); the config gives it as x, y, z."""
    x, y, z = config.patch_voxels
    return (z, y, x)


@torch.no_grad()
def probability_map(network: torch.nn.Module, image: np.ndarray, config: SegmentConfig,
                    device: torch.device, sw_batch_size: int = 4) -> np.ndarray:
    """Foreground probability (z, y, x) float32 on the segmenter's grid, by Gaussian-weighted sliding windows."""
    inputs = torch.from_numpy(np.ascontiguousarray(image))[None].to(device)

    def predictor(x: torch.Tensor) -> torch.Tensor:
        return sliding_window_inference(x, patch_zyx(config), sw_batch_size, network, overlap=config.overlap,
                                        mode="gaussian", padding_mode="constant", cval=0.0)

    return flip_averaged_probability(network, predictor, inputs, 1, device)


def to_native(probability: np.ndarray, volume: ScanVolume) -> np.ndarray:
    """The probability map resampled (linearly) onto the reference phase's own grid; 0 outside the region."""
    image = sitk.GetImageFromArray(probability.astype(np.float32))
    image.CopyInformation(volume.grid)
    native = sitk.Resample(image, volume.reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(native)


@dataclass(frozen=True)
class Component:
    """A connected component of the thresholded probability map."""

    label: int  # value in the component label array
    volume_mm3: float
    probability: float  # highest voxel probability inside
    centroid_mm: tuple[float, float, float]
    side: str  # "left" / "right" of the body midline (LPS x: + is the patient's left)


def find_components(probability: np.ndarray, reference: sitk.Image, config: SegmentConfig,
                    midline_x: float | None = None) -> tuple[np.ndarray, list[Component]]:
    """Label array (z, y, x; 0 background, components 1..n most probable first) and the components, after
    dropping those under ``min_component_mm3``; sides relative to ``midline_x`` (default: the body's)."""
    binary = sitk.GetImageFromArray((probability >= config.voxel_threshold).astype(np.uint8))
    binary.CopyInformation(reference)
    labelled = sitk.ConnectedComponent(binary, True)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(labelled)
    labels = sitk.GetArrayFromImage(labelled)
    voxel_mm3 = float(np.prod(reference.GetSpacing()))
    midline = body_midline_x(reference) if midline_x is None else midline_x
    found = []
    if stats.GetNumberOfLabels():
        peak = np.zeros(labels.max() + 1)
        np.maximum.at(peak, labels.ravel(), probability.ravel())
        for label in stats.GetLabels():
            volume = stats.GetNumberOfPixels(label) * voxel_mm3
            if volume < config.min_component_mm3:
                continue
            centroid = tuple(float(v) for v in stats.GetCentroid(label))
            found.append((float(peak[label]), label, volume, centroid))
    found.sort(key=lambda item: -item[0])
    rank_of = np.zeros(int(labels.max()) + 1, dtype=np.uint16)  # connected-component label -> rank (0: dropped)
    components = []
    for rank, (peak_p, label, volume, centroid) in enumerate(found, start=1):
        rank_of[label] = rank
        components.append(Component(rank, volume, peak_p, centroid, "left" if centroid[0] > midline else "right"))
    return rank_of[labels], components


def refine_components(refiner: torch.nn.Module, volume: ScanVolume, labels: np.ndarray,
                      components: list[Component], config: SegmentConfig, device: torch.device,
                      midline_x: float) -> tuple[np.ndarray, list[Component]]:
    """Each component re-outlined by the lesion-centred refiner (most probable first keeps contested voxels);
    probabilities stay the first stage's, volumes, centroids and sides are measured again."""
    out = np.zeros(labels.shape, dtype=np.uint16)
    voxel_mm3 = float(np.prod(volume.reference.GetSpacing()))
    refined = []
    for component in components:
        mask = refine_component(refiner, volume.phase_images, labels == component.label, volume.reference, config,
                                device) & (out == 0)
        if not mask.any():
            continue
        label = len(refined) + 1
        out[mask] = label
        zyx = np.argwhere(mask).mean(axis=0)
        centroid = tuple(float(v) for v in volume.reference.TransformContinuousIndexToPhysicalPoint(
            [float(v) for v in zyx[::-1]]))
        refined.append(Component(label, float(mask.sum()) * voxel_mm3, component.probability, centroid,
                                 "left" if centroid[0] > midline_x else "right"))
    return out, refined


def segment_scan(network: torch.nn.Module, refiner: torch.nn.Module | None, volume: ScanVolume,
                 config: SegmentConfig, device: torch.device) -> tuple[np.ndarray, list[Component]]:
    """Components (label array on the scan's own grid, and their figures) of one loaded scan: whole-scan
    sliding window, components, then each re-outlined by the refiner when there is one."""
    native = to_native(probability_map(network, volume.image, config, device), volume)
    midline = body_midline_x(volume.reference)
    labels, components = find_components(native, volume.reference, config, midline)
    if refiner is not None and components:
        labels, components = refine_components(refiner, volume, labels, components, config, device, midline)
    return labels, components


def match_lesions(sides: list[str | None], components: list[Component], threshold: float) -> list[int | None]:
    """For each lesion of a scan, the label of its component (None: nothing found).

    Candidates are components at or above ``threshold``. Lesions with a side take the most probable free
    candidate on that side first; the others then take the most probable free candidate anywhere.
    """
    candidates = [c for c in components if c.probability >= threshold]
    taken: set[int] = set()
    matched: list[int | None] = [None] * len(sides)
    for pass_with_side in (True, False):
        for i, side in enumerate(sides):
            if matched[i] is not None or (side is not None) != pass_with_side:
                continue
            for component in candidates:
                if component.label not in taken and (side is None or component.side == side):
                    matched[i] = component.label
                    taken.add(component.label)
                    break
    return matched
