"""Segmenter inference: sliding-window probabilities, back on the scan's own grid, connected components with a
probability each, their distance to the adrenal glands (given by a region or learned by the detector: components
far from any gland are suppressed), and each kept component re-outlined by the refiner. Matching components to
the table's lesions is :mod:`fusion_model.segment.matching`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference

from fusion_model.config import SegmentConfig
from fusion_model.segment.matching import Component, LesionQuery, Match, match_lesions
from fusion_model.segment.network import flip_averaged_probability
from fusion_model.segment.refine import difference_pair, refine_component
from fusion_model.segment.scans import ScanVolume, body_midline_x

GLAND_PROBABILITY = 0.5  # the learned gland region: voxels at or above this
FAR = 1.0e4  # mm: the distance outside the grid the glands were measured on


def patch_zyx(config: SegmentConfig) -> tuple[int, int, int]:
    """The patch in array order (z, y, x); the config gives it as x, y, z."""
    x, y, z = config.patch_voxels
    return (z, y, x)


@torch.no_grad()
def probability_map(network: torch.nn.Module, image: np.ndarray, config: SegmentConfig,
                    device: torch.device, sw_batch_size: int = 4) -> np.ndarray:
    """Probabilities (k, z, y, x) float32 on the segmenter's grid, by Gaussian-weighted sliding windows: the
    lesion's, then the gland region's when the detector learned it."""
    inputs = torch.from_numpy(np.ascontiguousarray(image))[None].to(device)

    def predictor(x: torch.Tensor) -> torch.Tensor:
        return sliding_window_inference(x, patch_zyx(config), sw_batch_size, network, overlap=config.overlap,
                                        mode="gaussian", padding_mode="constant", cval=0.0)

    return flip_averaged_probability(network, predictor, inputs, 1, device)


def to_native(probability: np.ndarray, volume: ScanVolume, outside: float = 0.0) -> np.ndarray:
    """A map on the segmenter's grid resampled (linearly) onto the reference phase's own grid; ``outside``
    beyond the region."""
    image = sitk.GetImageFromArray(probability.astype(np.float32))
    image.CopyInformation(volume.grid)
    native = sitk.Resample(image, volume.reference, sitk.Transform(), sitk.sitkLinear, outside, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(native)


def gland_region(volume: ScanVolume, gland_probability: np.ndarray | None) -> tuple[np.ndarray | None, str | None]:
    """The adrenal glands on the segmenter's grid and where they come from: the given region's outlines
    ("given"), else the detector's learned gland region ("learned"); (None, None) when neither is known."""
    if volume.glands is not None and volume.glands.any():
        return volume.glands > 0, "given"
    if gland_probability is not None:
        region = gland_probability >= GLAND_PROBABILITY
        if region.any():
            return region, "learned"
    return None, None


def gland_distance(region: np.ndarray, volume: ScanVolume) -> np.ndarray:
    """Distance (mm) of every voxel of the reference grid to the nearest gland voxel."""
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(~region, sampling=volume.grid.GetSpacing()[::-1]).astype(np.float32)
    return to_native(distance, volume, FAR)


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
            box = stats.GetBoundingBox(label)
            diameter = float(max(box[3] * reference.GetSpacing()[0], box[4] * reference.GetSpacing()[1]))
            found.append((float(peak[label]), label, volume, centroid, diameter))
    found.sort(key=lambda item: -item[0])
    rank_of = np.zeros(int(labels.max()) + 1, dtype=np.uint16)  # connected-component label -> rank (0: dropped)
    components = []
    for rank, (peak_p, label, volume, centroid, diameter) in enumerate(found, start=1):
        rank_of[label] = rank
        components.append(Component(rank, volume, peak_p, centroid, "left" if centroid[0] > midline else "right",
                                    diameter))
    return rank_of[labels], components


def axial_extent_mm(mask: np.ndarray, spacing_xyz) -> float:
    """Largest axial (x or y) extent of a 0/1 array (z, y, x), mm."""
    idx = np.argwhere(mask)
    extent = idx.max(axis=0) - idx.min(axis=0) + 1
    return float(max(extent[2] * spacing_xyz[0], extent[1] * spacing_xyz[1]))


def refine_components(refiner: torch.nn.Module, volume: ScanVolume, labels: np.ndarray,
                      components: list[Component], config: SegmentConfig, device: torch.device,
                      midline_x: float, phases: list[str]) -> tuple[np.ndarray, list[Component]]:
    """Each component re-outlined by the lesion-centred refiner; with ``refine_confirms`` its probability becomes
    the detector's times the refiner's confidence (a second look at a finer grid: a normal gland's limb or a piece
    of liver the detector took for a lesion is seldom outlined by the refiner). Components keep their gland
    distances; volumes, extents, centroids and sides are measured again; the most probable keeps contested voxels,
    and labels run 1..n most probable first. A component the refiner outlines nothing at keeps its own voxels."""
    difference = difference_pair(phases, config)
    outlines = []
    for component in components:
        voxels = labels == component.label
        refined = refine_component(refiner, volume.phase_images, voxels, volume.reference, config, device, difference)
        probability = component.probability * refined.confidence if config.refine_confirms else component.probability
        outlines.append((probability, component, voxels if refined.mask is None else refined.mask,
                         refined.confidence))
    out = np.zeros(labels.shape, dtype=np.uint16)
    refined_components = []
    for probability, component, outline, confidence in sorted(outlines, key=lambda item: -item[0]):
        mask = outline & (out == 0)
        if not mask.any():
            continue
        label = len(refined_components) + 1
        out[mask] = label
        refined_components.append(replace(
            component_of(mask, label, probability, volume.reference, midline_x, component.gland_distance_mm),
            detector_probability=component.probability, refiner_confidence=confidence))
    return out, refined_components


def component_of(mask: np.ndarray, label: int, probability: float, reference: sitk.Image, midline_x: float,
                 gland_distance_mm: float | None) -> Component:
    """The component record of a mask (bool, reference grid): its volume, centroid, side and extent measured."""
    zyx = np.argwhere(mask).mean(axis=0)
    centroid = tuple(float(v) for v in reference.TransformContinuousIndexToPhysicalPoint([float(v) for v in zyx[::-1]]))
    return Component(label, float(mask.sum()) * float(np.prod(reference.GetSpacing())), probability, centroid,
                     "left" if centroid[0] > midline_x else "right", axial_extent_mm(mask, reference.GetSpacing()),
                     gland_distance_mm)


@dataclass
class SegmentedScan:
    """One scan's components: the label array on its own grid (kept components 1..n, most probable first), the
    kept components, those suppressed for lying far from the glands (not in the array), and where the glands
    came from ("given", "learned" or None: not checked)."""

    labels: np.ndarray
    components: list[Component]
    suppressed: list[Component] = field(default_factory=list)
    gland_source: str | None = None
    gland_distance: np.ndarray | None = None  # mm to the nearest gland voxel, on the reference grid
    midline_x: float = 0.0


def segment_scan(network: torch.nn.Module, refiner: torch.nn.Module | None, volume: ScanVolume,
                 config: SegmentConfig, device: torch.device, phases: list[str]) -> SegmentedScan:
    """Components of one loaded scan: whole-scan sliding window, components, their distance to the glands (those
    farther than ``gland_margin_mm`` suppressed), then each kept one re-outlined by the refiner when there is
    one."""
    probabilities = probability_map(network, volume.image, config, device)
    native = to_native(probabilities[0], volume)
    midline = body_midline_x(volume.reference)
    labels, components = find_components(native, volume.reference, config, midline)
    region, source = gland_region(volume, probabilities[1] if len(probabilities) > 1 else None)
    suppressed = []
    distance = gland_distance(region, volume) if region is not None else None
    if distance is not None and components:
        from scipy import ndimage

        nearest = ndimage.minimum(distance, labels, index=[c.label for c in components])
        components = [replace(c, gland_distance_mm=float(d)) for c, d in zip(components, np.atleast_1d(nearest))]
        suppressed = [replace(c, label=0) for c in components if c.gland_distance_mm > config.gland_margin_mm]
        kept = [c for c in components if c.gland_distance_mm <= config.gland_margin_mm]
        rank = np.zeros(len(components) + 1, dtype=np.uint16)
        for new, c in enumerate(kept, start=1):
            rank[c.label] = new
        labels = rank[labels]
        components = [replace(c, label=new) for new, c in enumerate(kept, start=1)]
    if refiner is not None and components:
        labels, components = refine_components(refiner, volume, labels, components, config, device, midline, phases)
    return SegmentedScan(labels, components, suppressed, source, distance, midline)


CORE_MM = 6.0  # an oversized component's voxels this close to a gland are where the table's lesion sits


def outline_at_size(refiner: torch.nn.Module, volume: ScanVolume, found: SegmentedScan, parent: Component,
                    size_mm: float, config: SegmentConfig, device: torch.device,
                    phases: list[str]) -> np.ndarray | None:
    """A lesion the table gives as ``size_mm`` where the detector's component is far larger (a lesion merged with
    liver or spleen) or far smaller (a lesion only partly found): the refiner re-outlines it on a crop scaled to
    ``size_mm``, centred on the component's voxels nearest a gland (or on its centre when no gland is known). The
    outline (bool, reference grid; the parent component's voxels or background, never another component's) or
    None when the refiner finds nothing of a plausible size there."""
    inside = found.labels == parent.label
    if found.gland_distance is not None:
        near = inside & (found.gland_distance <= max(CORE_MM, float(found.gland_distance[inside].min()) + CORE_MM))
    else:
        near = inside
    if not near.any():
        return None
    zyx = np.argwhere(near).mean(axis=0)
    reference = volume.reference
    spacing = np.array(reference.GetSpacing())[::-1]
    grid = np.indices(inside.shape, sparse=True)
    ball = sum(((axis - c) * s) ** 2 for axis, c, s in zip(grid, zyx, spacing)) <= (size_mm / 2) ** 2
    outline = refine_component(refiner, volume.phase_images, ball, reference, config, device,
                               difference_pair(phases, config), grow=False).mask
    if outline is None:  # the refiner found nothing there
        return None
    outline = outline & ((found.labels == 0) | inside)
    if not outline.any():
        return None
    if parent.diameter_mm < size_mm and (outline & inside).sum() < 0.5 * inside.sum():
        return None  # grown from a part of the lesion, the outline must hold that part
    extent = axial_extent_mm(outline, reference.GetSpacing())
    ratio = extent / size_mm
    return outline if 1 / config.match_size_ratio <= ratio <= config.match_size_ratio else None


def found_component(mask: np.ndarray, label: int, probability: float, volume: ScanVolume,
                    found: SegmentedScan, parent: Component | None = None) -> Component:
    """The record of a mask re-outlined after segmentation, its distance to the glands measured on ``found``'s;
    the detector's and refiner's scores those of the ``parent`` component it was outlined from."""
    distance = None if found.gland_distance is None else float(found.gland_distance[mask].min())
    component = component_of(mask, label, probability, volume.reference, found.midline_x, distance)
    if parent is None:
        return component
    return replace(component, detector_probability=parent.detector_probability,
                   refiner_confidence=parent.refiner_confidence)


def apparent_size_mm(component: Component) -> float:
    """How large a component is, to set against a table's ``size_mm``: its largest axial extent, or the diameter of
    the sphere of its volume when that is smaller (a thin sliver along a lesion's edge is 29 mm across and 2 mL)."""
    sphere_mm = (6.0 * component.volume_mm3 / np.pi) ** (1.0 / 3.0)
    return float(min(component.diameter_mm, sphere_mm)) if np.isfinite(component.diameter_mm) else float(sphere_mm)


def size_miss(component: Component, size_mm: float) -> float:
    """How far (a log ratio, either way) a component's apparent size is from a table's ``size_mm``."""
    return abs(float(np.log(apparent_size_mm(component) / size_mm)))


def regrow_undersized(refiner: torch.nn.Module, volume: ScanVolume, found: SegmentedScan,
                      queries: list[LesionQuery], matches: list[Match], config: SegmentConfig,
                      device: torch.device, phases: list[str]) -> tuple[SegmentedScan, list[Match]]:
    """Each lesion whose matched component is more than ``regrow_undersized_ratio`` smaller than its ``size_mm``
    (:func:`apparent_size_mm`: the detector found part of it, and the refiner's crop, scaled to that part, held no
    more) re-outlined at its size around the component (:func:`outline_at_size`). The component grows by the new
    outline (background voxels only; never another component's) when that comes nearer ``size_mm`` than the
    component was, and the row's reason says so; otherwise it stays as found."""
    ratio = config.regrow_undersized_ratio
    if ratio is None:
        return found, matches
    labels, components, matches = found.labels.copy(), {c.label: c for c in found.components}, list(matches)
    for i, (query, match) in enumerate(zip(queries, matches)):
        parent = components.get(match.label) if match.label is not None else None
        if parent is None or not query.size_mm or not apparent_size_mm(parent) * ratio < query.size_mm:
            continue
        outline = outline_at_size(refiner, volume, replace(found, labels=labels), parent, query.size_mm, config,
                                  device, phases)
        if outline is None:
            continue
        grown = outline | (labels == parent.label)
        candidate = found_component(grown, parent.label, parent.probability, volume, found, parent)
        if size_miss(candidate, query.size_mm) >= size_miss(parent, query.size_mm):
            continue
        labels[grown] = parent.label
        components[parent.label] = candidate
        matches[i] = Match(parent.label, f"{match.reason}; found {parent.volume_mm3 / 1000:.1f} mL, "
                                         f"{apparent_size_mm(parent):.0f} mm in size against size_mm "
                                         f"{query.size_mm:g}, re-outlined at the table's size around it: "
                                         f"{candidate.describe()}", match.refused)
    return replace(found, labels=labels, components=sorted(components.values(), key=lambda c: c.label)), matches


def reoutline_at_table_size(refiner: torch.nn.Module, volume: ScanVolume, found: SegmentedScan,
                            queries: list[LesionQuery], matches: list[Match], threshold: float, config: SegmentConfig,
                            device: torch.device, phases: list[str]) -> tuple[SegmentedScan, list[Match]]:
    """For each lesion left without a component while a free one on its side is far larger than its ``size_mm``
    (merged with a neighbouring organ) or far smaller (only part of the lesion found; but not smaller than
    ``size_mm`` over twice ``match_size_ratio``: a speck is no part of a lesion five times its size), the lesion
    re-outlined at its size there (:func:`outline_at_size`): a new component (its voxels taken from the large
    one, or grown from the small one and holding it), and a reason saying so."""
    labels, components, matches = found.labels.copy(), list(found.components), list(matches)
    taken = {m.label for m in matches if m.label is not None}
    voxel_mm3 = float(np.prod(volume.reference.GetSpacing()))
    for i, (query, match) in enumerate(zip(queries, matches)):
        if match.label is not None or not query.size_mm:
            continue
        candidates = [c for c in sorted(components, key=lambda c: -c.probability)
                      if c.label not in taken and c.probability >= threshold
                      and (query.side is None or c.side == query.side)
                      and (c.diameter_mm > config.match_size_ratio * query.size_mm
                           or c.diameter_mm * config.match_size_ratio < query.size_mm
                           <= c.diameter_mm * config.match_size_ratio * 2)]
        for parent in candidates:
            outline = outline_at_size(refiner, volume, replace(found, labels=labels), parent, query.size_mm, config,
                                      device, phases)
            if outline is None:
                continue
            rest = (labels == parent.label) & ~outline
            label = int(labels.max()) + 1 if rest.any() else parent.label  # keeps labels 1..n
            labels[outline] = label
            new = found_component(outline, label, parent.probability, volume, found, parent)
            components = [c if c.label != parent.label else replace(
                c, volume_mm3=float(rest.sum()) * voxel_mm3, diameter_mm=axial_extent_mm(
                    rest, volume.reference.GetSpacing())) for c in components if rest.any() or c.label != label]
            components.append(new)
            taken.add(label)
            where = "inside" if parent.diameter_mm > query.size_mm else "around"
            matches[i] = Match(label, f"component {label} ({new.describe()}): re-outlined at the table's size {where} "
                                      f"component {parent.label} ({parent.describe()}), which is "
                                      f"{parent.diameter_mm:.0f} mm across against size_mm {query.size_mm:g}",
                               match.refused)
            break
    return replace(found, labels=labels, components=sorted(components, key=lambda c: c.label)), matches


def match_table_lesions(refiner: torch.nn.Module | None, volume: ScanVolume, found: SegmentedScan,
                        queries: list[LesionQuery], threshold: float, config: SegmentConfig, device: torch.device,
                        phases: list[str]) -> tuple[SegmentedScan, list[Match]]:
    """The table's lesions matched to the scan's plausible components (:func:`match_lesions`); with a refiner,
    rows left without one re-outlined at the table's size (:func:`reoutline_at_table_size`) and rows whose
    component is far smaller than their size regrown (:func:`regrow_undersized`)."""
    matches = match_lesions(queries, found.components, threshold, config.match_size_ratio, config.gland_margin_mm,
                            found.suppressed)
    if refiner is None:
        return found, matches
    if any(m.label is None for m in matches):
        found, matches = reoutline_at_table_size(refiner, volume, found, queries, matches, threshold, config, device,
                                                 phases)
    return regrow_undersized(refiner, volume, found, queries, matches, config, device, phases)
