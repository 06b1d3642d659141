"""Radiological features from a lesion mask and its CT phases (SimpleITK filters).

Shape (``sitk.LabelShapeStatisticsImageFilter``): maximal 3D diameter (Feret), maximal axial
diameter (Feret diameter of each axial slice), volume, elongation, flatness, roundness
(sphericity: surface of the equal-volume sphere over the lesion's surface), thickness; for cohorts
that are masks only, also the detailed shape profile (``SHAPE_PROFILE_FEATURES``).
Attenuation (``sitk.LabelIntensityStatisticsImageFilter``) on the unenhanced phase: mean,
median, SD, 10th / 90th percentile, fraction of voxels <= 10 HU; mean HU per phase;
enhancement (venous or arterial minus unenhanced) and, with a delayed phase, absolute and
relative washout.

Diameters are measured between the outermost voxel centres (ITK's Feret diameter), which lie
on average half a voxel inside the true boundary, and are extended by half a voxel: the
unbiased estimate, within a fraction of a voxel of the analytic diameter in the tests.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from clinical_schema import PHASES

SIZE_DISAGREEMENT_FRACTION = 0.20
HU_DISAGREEMENT = 10.0

SHAPE_FEATURES = (
    "max_axial_diameter_mm", "max_diameter_3d_mm", "volume_ml", "elongation", "flatness", "sphericity",
    "max_inscribed_radius_mm", "mean_half_thickness_mm", "p90_half_thickness_mm", "core_fraction_2mm",
)


def _shape_filter(mask01: sitk.Image) -> sitk.LabelShapeStatisticsImageFilter:
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.ComputePerimeterOn()
    stats.Execute(mask01)
    return stats


def feret_diameter_mm(mask: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Largest distance between two voxel centres of a 2D or 3D mask, plus half a voxel.

    The same quantity as ITK's Feret diameter, computed on the vertices of the convex hull of
    the mask's edge voxels instead of on every pair of edge voxels: milliseconds instead of a
    second for a 10 cm carcinoma. ``spacing`` follows the array's axes. Half a voxel is added
    because the outermost voxel centres lie on average half a voxel inside the true outline.
    """
    from scipy import ndimage
    from scipy.spatial import ConvexHull, QhullError
    from scipy.spatial.distance import pdist

    mask = np.asarray(mask, dtype=bool)
    edge = mask & ~ndimage.binary_erosion(mask)
    points = np.argwhere(edge) * np.asarray(spacing, dtype=float)
    half_voxel = 0.5 * float(np.mean(spacing))
    if len(points) < 2:
        return half_voxel
    if len(points) > mask.ndim + 1:
        try:
            points = points[ConvexHull(points).vertices]
        except QhullError:  # all points on a line or a plane: the distances among them are few enough
            pass
    return float(pdist(points).max()) + half_voxel


def max_axial_diameter_mm(mask01: sitk.Image) -> float:
    """Largest Feret diameter over the axial slices (index k = third image axis)."""
    array = sitk.GetArrayViewFromImage(mask01) > 0
    spacing_yx = tuple(float(s) for s in reversed(mask01.GetSpacing()[:2]))
    slices = np.flatnonzero(array.reshape(array.shape[0], -1).any(axis=1))
    return max((feret_diameter_mm(array[k], spacing_yx) for k in slices), default=0.0)


def surface_depth_mm(mask: np.ndarray, spacing_zyx: tuple[float, ...], within_slices_across: int | None = None
                     ) -> np.ndarray:
    """Each inside voxel's distance (mm) to the surface of a 0/1 mask (z, y, x): half a voxel less than to the
    nearest outside voxel's centre, the array's edge counting as outside; 0 outside. With
    ``within_slices_across=axis``, the distance to the outline within each slice across that axis."""
    from scipy import ndimage

    spacing = [float(s) for s in spacing_zyx]
    planar = [k for k in range(3) if k != within_slices_across]
    inside = np.pad(np.asarray(mask) > 0, [(1, 1) if k in planar else (0, 0) for k in range(3)])
    if within_slices_across is not None:  # a huge spacing across the slices keeps the nearest outside voxel in them
        spacing[within_slices_across] = 1e6
    half_voxel = 0.5 * float(np.mean([spacing[k] for k in planar]))
    depth = np.where(inside, ndimage.distance_transform_edt(inside, sampling=spacing) - half_voxel, 0.0)
    return depth[tuple(slice(1, -1) if k in planar else slice(None) for k in range(3))]


def thickness_features(mask01: sitk.Image) -> dict[str, float]:
    """How thick the lesion is, from the distance of each inside voxel to the lesion's surface (mm).

    A normal adrenal limb is a thin sheet (a few mm); a nodule or mass is a thick, round region.
    Radius of the largest inscribed sphere, mean and 90th percentile of the local half-thickness,
    and the share of the lesion lying more than 2 mm inside its surface.
    """
    array = sitk.GetArrayViewFromImage(mask01) > 0  # a lesion touching the crop edge has a surface there
    depth = surface_depth_mm(array, tuple(reversed(mask01.GetSpacing())))[array]
    return {
        "max_inscribed_radius_mm": float(depth.max()),
        "mean_half_thickness_mm": float(depth.mean()),
        "p90_half_thickness_mm": float(np.percentile(depth, 90)),
        "core_fraction_2mm": float(np.mean(depth > 2.0)),
    }


def shape_features(mask01: sitk.Image) -> dict[str, float]:
    """Size and shape of a 0/1 mask: diameters, volume, elongation, flatness, sphericity, thickness."""
    stats = _shape_filter(mask01)
    if not stats.HasLabel(1):
        raise ValueError("empty mask")
    return {
        **thickness_features(mask01),
        "max_axial_diameter_mm": max_axial_diameter_mm(mask01),
        "max_diameter_3d_mm": feret_diameter_mm(sitk.GetArrayViewFromImage(mask01) > 0,
                                                tuple(float(v) for v in reversed(mask01.GetSpacing()))),
        "volume_ml": stats.GetPhysicalSize(1) / 1000.0,
        "elongation": float(stats.GetElongation(1)),
        "flatness": float(stats.GetFlatness(1)),
        "sphericity": float(stats.GetRoundness(1)),
    }


# Detailed shape ("profile") features of a mask, for shape-only data (e.g. AdrenalMNIST3D, whose masks are all
# there is): how thickness is distributed in 3D and within each anatomical plane, convexity, extent and
# slice-area profile. A normal gland is thin limbs in every plane; a mass is a thick region in at least one.
# name: (unit, description); the unit is "" for ratios and counts.
SHAPE_PLANES = {"axial": 0, "coronal": 1, "sagittal": 2}  # the array axis (z, y, x) each plane's slices run along
SHAPE_PROFILE_FEATURES: dict[str, tuple[str, str]] = {
    **{f"half_thickness_p{q}_mm": ("mm", f"{q}th percentile over the mask's voxels of the distance to its surface")
       for q in (50, 75, 95, 99)},
    "component_count": ("", "Connected pieces of the mask (face connectivity)."),
    "largest_component_fraction": ("", "Share of the mask's volume in its largest piece."),
    "major_axis_mm": ("mm", "Length of the mask's first principal axis (4 SD of the voxel positions along it)."),
    "minor_axis_mm": ("mm", "Length of the second principal axis (4 SD)."),
    "least_axis_mm": ("mm", "Length of the third principal axis (4 SD)."),
    **{f"extent_{axis}_mm": ("mm", f"Extent of the mask's bounding box along the image's {axis} axis.")
       for axis in ("z", "y", "x")},
    "bounding_box_fill": ("", "Share of the bounding box the mask fills."),
    "convex_hull_volume_ml": ("mL", "Volume of the mask's discrete convex hull (voxels whose centres lie in the "
                                    "convex hull of the mask's voxel centres)."),
    "solidity": ("", "Mask volume over its convex hull's (1 = convex; a branched gland is far below 1)."),
    "surface_area_mm2": ("mm2", "Surface area of the mask (ITK's perimeter estimate)."),
    "surface_to_volume_per_mm": ("1/mm", "Surface area over volume (high for thin limbs)."),
    "axial_area_cv": ("", "Coefficient of variation of the axial slices' mask areas."),
    **{f"{plane}_half_thickness_{stat}_mm": ("mm", f"{label} over the mask's voxels of the in-plane distance to "
                                                   f"the mask's outline within its {plane} slice")
       for plane in SHAPE_PLANES for stat, label in (("mean", "Mean"), ("p90", "90th percentile"), ("max", "Maximum"))},
    **{f"{plane}_area_{stat}_mm2": ("mm2", f"{label} of the mask's area over its {plane} slices")
       for plane in SHAPE_PLANES for stat, label in (("max", "Maximum"), ("p75", "75th percentile"))},
}


def _convex_hull_voxels(mask: np.ndarray, spacing: tuple[float, ...]) -> int:
    """Voxels whose centres lie in the convex hull of the mask's voxel centres (the discrete convex hull, so a
    convex mask has solidity 1 exactly); ``mask`` cut to its bounding box."""
    from scipy import ndimage
    from scipy.spatial import ConvexHull, QhullError

    copies = 1
    for axis in range(3):  # one voxel thick along an axis: two layers have a 3D hull, twice the flat one's voxels
        if mask.shape[axis] == 1:
            mask, copies = np.concatenate([mask, mask], axis=axis), copies * 2
    scale = np.asarray(spacing, dtype=float)
    edge = np.argwhere(mask & ~ndimage.binary_erosion(mask)) * scale
    try:
        hull = ConvexHull(edge)
    except QhullError:  # flat in an oblique plane (a one-voxel diagonal sheet): no volume, call it convex
        return int(mask.sum()) // copies
    # row by row along x: each facet n . p + b <= 0 bounds x from one side, so a row's inside voxels are an interval
    normals, offsets = hull.equations[:, :3], hull.equations[:, 3]
    tolerance = 1e-6 * float(scale.max())
    z, y = (a.ravel() for a in np.indices(mask.shape[:2]))
    room = tolerance - offsets[None, :] - np.outer(z * scale[0], normals[:, 0]) - np.outer(y * scale[1], normals[:, 1])
    nx = normals[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = room / nx
    upper = np.min(np.where(nx > 0, bound, np.inf), axis=1)
    lower = np.max(np.where(nx < 0, bound, -np.inf), axis=1)
    feasible = np.all((nx != 0) | (room >= 0), axis=1)
    first = np.maximum(np.ceil(lower / scale[2]), 0)
    last = np.minimum(np.floor(upper / scale[2]), mask.shape[2] - 1)
    inside = int(np.sum(np.where(feasible, np.maximum(last - first + 1, 0), 0)))
    return max(inside, int(mask.sum())) // copies


def shape_profile_features(mask01: sitk.Image) -> dict[str, float]:
    """The ``SHAPE_PROFILE_FEATURES`` of a 0/1 mask (physical units; any spacing)."""
    from scipy import ndimage

    mask = sitk.GetArrayViewFromImage(mask01) > 0
    if not mask.any():
        raise ValueError("empty mask")
    index = np.argwhere(mask)
    lo, hi = index.min(axis=0), index.max(axis=0)
    mask = mask[tuple(slice(a, b + 1) for a, b in zip(lo, hi))]  # cut to its bounding box: costs less
    index -= lo
    spacing = tuple(float(s) for s in reversed(mask01.GetSpacing()))  # z, y, x like the array
    voxel_mm3 = float(np.prod(spacing))
    volume_mm3 = float(mask.sum()) * voxel_mm3
    depth = surface_depth_mm(mask, spacing)[mask]
    out = {f"half_thickness_p{q}_mm": float(np.percentile(depth, q)) for q in (50, 75, 95, 99)}
    labels, count = ndimage.label(mask)
    pieces = np.bincount(labels.ravel())[1:]
    out["component_count"] = float(count)
    out["largest_component_fraction"] = float(pieces.max() / pieces.sum())
    points = index * np.asarray(spacing)
    variances = np.sort(np.linalg.eigvalsh(np.atleast_2d(np.cov(points.T))))[::-1] if len(points) > 1 else np.zeros(3)
    for name, variance in zip(("major", "minor", "least"), variances):
        out[f"{name}_axis_mm"] = float(4.0 * math.sqrt(max(float(variance), 0.0)))
    extent_voxels = np.asarray(mask.shape)
    for axis, n, s in zip(("z", "y", "x"), extent_voxels, spacing):
        out[f"extent_{axis}_mm"] = float(n * s)
    out["bounding_box_fill"] = float(mask.sum() / np.prod(extent_voxels))
    hull_voxels = _convex_hull_voxels(mask, spacing)
    out["convex_hull_volume_ml"] = hull_voxels * voxel_mm3 / 1000.0
    out["solidity"] = float(mask.sum() / hull_voxels)
    surface = float(_shape_filter(sitk.Cast(mask01 > 0, sitk.sitkUInt8)).GetPerimeter(1))  # on the whole image
    out["surface_area_mm2"] = surface
    out["surface_to_volume_per_mm"] = surface / volume_mm3
    axial_areas = mask.sum(axis=(1, 2))
    axial_areas = axial_areas[axial_areas > 0].astype(float)
    out["axial_area_cv"] = float(axial_areas.std() / axial_areas.mean())
    for plane, axis in SHAPE_PLANES.items():
        in_plane = surface_depth_mm(mask, spacing, within_slices_across=axis)[mask]
        out[f"{plane}_half_thickness_mean_mm"] = float(in_plane.mean())
        out[f"{plane}_half_thickness_p90_mm"] = float(np.percentile(in_plane, 90))
        out[f"{plane}_half_thickness_max_mm"] = float(in_plane.max())
        areas = mask.sum(axis=tuple(k for k in range(3) if k != axis))
        areas = areas[areas > 0] * voxel_mm3 / spacing[axis]
        out[f"{plane}_area_max_mm2"] = float(areas.max())
        out[f"{plane}_area_p75_mm2"] = float(np.percentile(areas, 75))
    return out


def attenuation_features(image: sitk.Image, mask01: sitk.Image, prefix: str, detailed: bool) -> dict[str, float]:
    """Mean HU of the lesion on one phase; with ``detailed`` the full distribution summary."""
    stats = sitk.LabelIntensityStatisticsImageFilter()
    stats.SetNumberOfBins(2048)
    stats.Execute(mask01, image)
    out = {f"{prefix}_mean_hu": float(stats.GetMean(1))}
    if detailed:
        values = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(mask01) > 0]
        p10, p90 = np.percentile(values, [10, 90])
        out.update({
            f"{prefix}_median_hu": float(stats.GetMedian(1)),
            f"{prefix}_sd_hu": float(stats.GetStandardDeviation(1)),
            f"{prefix}_p10_hu": float(p10),
            f"{prefix}_p90_hu": float(p90),
            f"{prefix}_fraction_le_10hu": float(np.mean(values <= 10.0)),
        })
    return out


def enhancement_features(means: dict[str, float]) -> dict[str, float]:
    """Enhancement over unenhanced, and washout when a delayed phase exists (percent)."""
    out: dict[str, float] = {}
    unenhanced = means.get("unenhanced")
    if unenhanced is None:
        return out
    for phase in ("arterial", "venous"):
        if phase in means:
            out[f"{phase}_enhancement_hu"] = means[phase] - unenhanced
    venous, delayed = means.get("venous"), means.get("delayed")
    if venous is not None and delayed is not None:
        enhancement = venous - unenhanced
        out["absolute_washout_percent"] = 100.0 * (venous - delayed) / enhancement if abs(enhancement) > 1e-6 \
            else math.nan
        out["relative_washout_percent"] = 100.0 * (venous - delayed) / venous if abs(venous) > 1e-6 else math.nan
    return out


WASHOUT_PHASES = {"absolute_washout_percent": {"unenhanced", "venous", "delayed"},
                  "relative_washout_percent": {"venous", "delayed"}}


def phases_needed(feature: str, known_phases=PHASES) -> set[str]:
    """The CT phases a radiological feature is computed from (none for the shape features)."""
    if feature in WASHOUT_PHASES:
        return set(WASHOUT_PHASES[feature])
    phase = next((p for p in known_phases if feature.startswith(f"{p}_")), None)
    if phase is None:
        return set()
    return {phase, "unenhanced"} if feature.endswith("_enhancement_hu") else {phase}


def features_seen_with(features, phases, known_phases=PHASES) -> list[str]:
    """The features (in their order) a cohort with only ``phases`` would have: those computed from no phase
    outside them."""
    return [f for f in features if phases_needed(f, known_phases) <= set(phases)]


def lesion_region(mask01: sitk.Image, pad: int = 1) -> tuple[list[int], list[int]]:
    """Index and size (x, y, z) of the lesion's bounding box, padded, inside the image."""
    array = sitk.GetArrayViewFromImage(mask01)
    nonzero = np.nonzero(array)
    if not nonzero[0].size:
        raise ValueError("empty mask")
    lo = [max(0, int(v.min()) - pad) for v in nonzero][::-1]
    hi = [min(n - 1, int(v.max()) + pad) for v, n in zip(nonzero, array.shape)][::-1]
    return lo, [h - l + 1 for l, h in zip(lo, hi)]


def radiological_features(phases: dict[str, sitk.Image], mask01: sitk.Image, ct_intensities: bool) -> dict:
    """All features of one lesion; ``phases`` and ``mask01`` share one grid.

    Images are first cut to the lesion's bounding box (physical coordinates are kept, so no
    feature changes), which makes the filters cost what the lesion costs, not the scan.
    """
    index, size = lesion_region(mask01)
    mask01 = sitk.RegionOfInterest(mask01, size, index)
    phases = {p: sitk.RegionOfInterest(image, size, index) for p, image in phases.items()}
    out = shape_features(mask01)
    if not ct_intensities:  # the outline is all there is: describe it in detail
        return {**out, **shape_profile_features(mask01)}
    means = {}
    for phase, image in phases.items():
        values = attenuation_features(image, mask01, phase, detailed=phase == "unenhanced")
        out.update(values)
        means[phase] = values[f"{phase}_mean_hu"]
    out.update(enhancement_features(means))
    return out


def fill_from_features(row: dict, features: dict) -> tuple[dict, list[str]]:
    """Fill ``size_mm`` / ``unenhanced_hu`` from image features where the table lacks them;
    where both exist keep the table's value and say when they disagree."""
    out, notes = dict(row), []
    pairs = (("size_mm", "max_axial_diameter_mm"), ("unenhanced_hu", "unenhanced_mean_hu"))
    for column, feature in pairs:
        measured = features.get(feature)
        if measured is None or (isinstance(measured, float) and math.isnan(measured)):
            continue
        given = row.get(column)
        if given is None or (isinstance(given, float) and math.isnan(given)):
            out[column] = measured
            continue
        if column == "size_mm" and abs(given - measured) > SIZE_DISAGREEMENT_FRACTION * max(given, measured):
            notes.append(f"size_mm {given:g} in the table vs {measured:.1f} mm from the mask (> 20% apart)")
        if column == "unenhanced_hu" and abs(given - measured) > HU_DISAGREEMENT:
            notes.append(f"unenhanced_hu {given:g} in the table vs {measured:.1f} HU from the image (> 10 HU apart)")
    return out, notes
