import math

import numpy as np
import pytest
import SimpleITK as sitk

from fusion_model.features.radiological import (
    attenuation_features, enhancement_features, fill_from_features, radiological_features, shape_features,
)


def ellipsoid(semi_mm, spacing, size_mm=64.0):
    n = [int(round(size_mm / s)) for s in spacing]  # x, y, z
    axes = [(np.arange(n[i]) + 0.5) * spacing[i] - size_mm / 2 for i in range(3)]
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    inside = (x / semi_mm[0]) ** 2 + (y / semi_mm[1]) ** 2 + (z / semi_mm[2]) ** 2 <= 1
    image = sitk.GetImageFromArray(inside.astype(np.uint8))
    image.SetSpacing(spacing)
    return image


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.7, 2.5), (1.5, 1.5, 3.0)])
def test_sphere_of_20_mm(spacing):
    f = shape_features(ellipsoid((10, 10, 10), spacing))
    voxel = max(spacing)
    assert abs(f["max_diameter_3d_mm"] - 20) <= voxel
    assert abs(f["max_axial_diameter_mm"] - 20) <= max(spacing[:2])
    assert f["volume_ml"] == pytest.approx(4 / 3 * math.pi * 1000 / 1000, rel=0.05)
    assert f["elongation"] == pytest.approx(1, abs=0.1) and f["flatness"] == pytest.approx(1, abs=0.1)
    assert f["sphericity"] == pytest.approx(1, abs=0.1)


@pytest.mark.parametrize("spacing", [(0.8, 0.8, 2.0), (1.2, 0.9, 1.5)])
def test_ellipsoid_on_anisotropic_grid(spacing):
    semi = (15.0, 10.0, 6.0)
    f = shape_features(ellipsoid(semi, spacing))
    # the largest axial section is on the slice nearest the equator, half a slice away here
    z_nearest = spacing[2] / 2 if round(64 / spacing[2]) % 2 == 0 else 0.0
    expected_axial = 2 * semi[0] * math.sqrt(1 - (z_nearest / semi[2]) ** 2)
    assert abs(f["max_axial_diameter_mm"] - expected_axial) <= max(spacing[:2])
    assert abs(f["max_diameter_3d_mm"] - 30) <= max(spacing)
    assert f["volume_ml"] == pytest.approx(4 / 3 * math.pi * 15 * 10 * 6 / 1000, rel=0.05)
    assert f["elongation"] == pytest.approx(1.5, rel=0.1)
    assert f["flatness"] == pytest.approx(10 / 6, rel=0.1)
    assert f["sphericity"] < 0.95


def test_attenuation_statistics_on_a_known_distribution():
    mask = ellipsoid((10, 10, 10), (1, 1, 1))
    values = np.where(np.indices(sitk.GetArrayFromImage(mask).shape)[2] % 2 == 0, 0.0, 40.0).astype(np.float32)
    image = sitk.GetImageFromArray(values)
    f = attenuation_features(image, mask, "unenhanced", detailed=True)
    assert f["unenhanced_mean_hu"] == pytest.approx(20, abs=1.5)
    assert f["unenhanced_p10_hu"] == 0 and f["unenhanced_p90_hu"] == 40
    assert f["unenhanced_fraction_le_10hu"] == pytest.approx(0.5, abs=0.05)
    assert f["unenhanced_sd_hu"] == pytest.approx(20, abs=1)


def test_enhancement_and_washout():
    out = enhancement_features({"unenhanced": 20.0, "venous": 100.0, "delayed": 40.0})
    assert out["venous_enhancement_hu"] == 80
    assert out["absolute_washout_percent"] == pytest.approx(75)
    assert out["relative_washout_percent"] == pytest.approx(60)
    assert enhancement_features({"venous": 100.0}) == {}


def test_phase_means_and_mask_only_cohorts():
    mask = ellipsoid((8, 8, 8), (1, 1, 1))
    phases = {p: sitk.Cast(mask, sitk.sitkFloat32) * hu for p, hu in (("unenhanced", 10.0), ("venous", 90.0))}
    f = radiological_features(phases, mask, ct_intensities=True)
    assert f["venous_mean_hu"] == pytest.approx(90) and f["venous_enhancement_hu"] == pytest.approx(80)
    assert "unenhanced_mean_hu" not in radiological_features(phases, mask, ct_intensities=False)
    from fusion_model.features.radiological import SHAPE_PROFILE_FEATURES

    assert set(SHAPE_PROFILE_FEATURES) <= set(radiological_features(phases, mask, ct_intensities=False))
    assert not set(SHAPE_PROFILE_FEATURES) & set(f)  # CT cohorts keep the basic shape features


def test_table_values_filled_or_compared():
    feats = {"max_axial_diameter_mm": 30.0, "unenhanced_mean_hu": 25.0}
    filled, notes = fill_from_features({"size_mm": float("nan"), "unenhanced_hu": None}, feats)
    assert filled["size_mm"] == 30 and filled["unenhanced_hu"] == 25 and notes == []
    kept, notes = fill_from_features({"size_mm": 20.0, "unenhanced_hu": 5.0}, feats)
    assert kept["size_mm"] == 20 and len(notes) == 2
    _, notes = fill_from_features({"size_mm": 28.0, "unenhanced_hu": 20.0}, feats)
    assert notes == []


def test_thickness_of_a_sphere_and_of_a_thin_sheet():
    from fusion_model.features.radiological import thickness_features
    from tests.helpers import sphere_mask, to_image

    sphere = sitk.Cast(to_image(sphere_mask((40, 40, 40), (20, 20, 20), 10), (0.8, 0.8, 0.8)), sitk.sitkUInt8)
    t = thickness_features(sphere)
    assert t["max_inscribed_radius_mm"] == pytest.approx(10.5 * 0.8, abs=1.0 * 0.8)  # within a voxel
    assert t["mean_half_thickness_mm"] == pytest.approx(10.5 * 0.8 / 4, rel=0.2)  # mean depth of a ball: R/4
    sheet = np.zeros((30, 30, 30), np.uint8)
    sheet[14:16, 5:25, 5:25] = 1  # 2 voxels = 2 mm thick, like a normal adrenal limb
    s = thickness_features(sitk.Cast(to_image(sheet), sitk.sitkUInt8))
    assert s["max_inscribed_radius_mm"] == pytest.approx(1.0, abs=0.5) and s["core_fraction_2mm"] == 0.0


def test_feret_diameter_from_the_convex_hull_equals_itks():
    from fusion_model.features.radiological import feret_diameter_mm

    rng = np.random.default_rng(0)
    blob = np.zeros((30, 40, 50), np.uint8)
    for _ in range(6):  # an irregular union of balls
        c = rng.integers(8, 22, 3)
        r = rng.uniform(3, 7)
        z, y, x = np.ogrid[:30, :40, :50]
        blob |= (((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) <= r * r).astype(np.uint8)
    image = sitk.GetImageFromArray(blob)
    image.SetSpacing((0.8, 0.7, 2.0))
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.ComputeFeretDiameterOn()
    stats.Execute(image)
    expected = stats.GetFeretDiameter(1) + 0.5 * np.mean((0.8, 0.7, 2.0))
    assert feret_diameter_mm(blob > 0, (2.0, 0.7, 0.8)) == pytest.approx(expected, abs=1e-9)
    flat = np.zeros((5, 20, 20), bool)
    flat[2, 5:15, 8] = True  # a line: the hull is degenerate
    assert feret_diameter_mm(flat, (1.0, 1.0, 1.0)) == pytest.approx(9.0 + 0.5)


def _box(shape_zyx, spacing_zyx, box_zyx_mm, pad=3):
    """A mask with a box of the given edges (mm) on an anisotropic grid; spacing given as (z, y, x)."""
    n = [int(round(mm / s)) for mm, s in zip(box_zyx_mm, spacing_zyx)]
    array = np.zeros(shape_zyx, np.uint8)
    array[pad:pad + n[0], pad:pad + n[1], pad:pad + n[2]] = 1
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(spacing_zyx)))
    return image


def test_shape_profile_of_a_box_on_an_anisotropic_grid():
    from fusion_model.features.radiological import SHAPE_PROFILE_FEATURES, shape_profile_features

    spacing = (2.0, 1.0, 0.5)  # z, y, x
    f = shape_profile_features(_box((12, 30, 70), spacing, (10.0, 20.0, 30.0)))
    assert set(f) == set(SHAPE_PROFILE_FEATURES)
    assert (f["extent_z_mm"], f["extent_y_mm"], f["extent_x_mm"]) == (10.0, 20.0, 30.0)
    assert f["bounding_box_fill"] == 1.0 and f["component_count"] == 1 and f["largest_component_fraction"] == 1
    assert f["solidity"] == pytest.approx(1.0) and f["convex_hull_volume_ml"] == pytest.approx(6.0)
    # 4 SD of a uniform length L is L * 4 / sqrt(12) (voxel centres: L minus one voxel, nearly)
    assert f["major_axis_mm"] == pytest.approx(30 * 4 / math.sqrt(12), rel=0.03)
    assert f["least_axis_mm"] == pytest.approx(10 * 4 / math.sqrt(12), rel=0.1)
    # each plane sees its own rectangle: axial 20 x 30 mm, coronal 10 x 30, sagittal 10 x 20
    assert (f["axial_area_max_mm2"], f["coronal_area_max_mm2"], f["sagittal_area_max_mm2"]) == (600, 300, 200)
    assert f["axial_half_thickness_max_mm"] == pytest.approx(10.0, abs=1.0)
    assert f["coronal_half_thickness_max_mm"] == pytest.approx(5.0, abs=2.0)
    assert f["sagittal_half_thickness_max_mm"] == pytest.approx(5.0, abs=2.0)
    assert f["axial_area_cv"] == pytest.approx(0.0, abs=1e-12)
    assert f["half_thickness_p99_mm"] == pytest.approx(5.0, abs=2.0)  # the thinnest edge (10 mm) bounds the depth
    # surface: 2 (20x30 + 10x30 + 10x20) = 2200 mm2 (ITK's estimate of a voxelised surface is close, not exact)
    assert f["surface_area_mm2"] == pytest.approx(2200, rel=0.15)


def test_shape_profile_tells_a_thin_limb_from_a_nodule():
    from fusion_model.features.radiological import shape_profile_features
    from tests.helpers import sphere_mask, to_image

    limb = _box((20, 40, 40), (1.0, 1.0, 1.0), (3.0, 30.0, 4.0))  # a thin sheet, like a normal adrenal limb
    nodule = sitk.Cast(to_image(sphere_mask((40, 40, 40), (20, 20, 20), 10)), sitk.sitkUInt8)
    thin, thick = shape_profile_features(limb), shape_profile_features(nodule)
    for plane in ("axial", "coronal", "sagittal"):
        assert thick[f"{plane}_half_thickness_mean_mm"] > 2 * thin[f"{plane}_half_thickness_mean_mm"]
    assert thick["half_thickness_p95_mm"] > 3 * thin["half_thickness_p95_mm"]
    assert thick["surface_to_volume_per_mm"] < thin["surface_to_volume_per_mm"]
    assert thick["solidity"] > 0.9


def test_shape_profile_of_two_pieces_and_of_an_empty_mask():
    from fusion_model.features.radiological import shape_profile_features

    array = np.zeros((20, 20, 40), np.uint8)
    array[5:15, 5:15, 2:12] = 1  # 1000 voxels
    array[8:12, 8:12, 30:34] = 1  # 64 voxels, apart: the hull spans the gap
    f = shape_profile_features(sitk.GetImageFromArray(array))
    assert f["component_count"] == 2 and f["largest_component_fraction"] == pytest.approx(1000 / 1064)
    assert f["solidity"] < 0.6 and f["bounding_box_fill"] < 0.5
    flat = np.zeros((10, 10, 10), np.uint8)
    flat[1:9, 5, 1] = flat[8, 5, 1:9] = 1  # an L one voxel thick: 15 voxels, its hull a triangle of 36
    assert shape_profile_features(sitk.GetImageFromArray(flat))["solidity"] == pytest.approx(15 / 36)
    with pytest.raises(ValueError, match="empty"):
        shape_profile_features(sitk.GetImageFromArray(np.zeros((5, 5, 5), np.uint8)))


def test_discrete_convex_hull_counts_the_voxels_a_brute_force_test_finds():
    from scipy.spatial import Delaunay

    from fusion_model.features.radiological import _convex_hull_voxels

    rng = np.random.default_rng(1)
    blob = np.zeros((18, 22, 26), bool)
    z, y, x = np.ogrid[:18, :22, :26]
    for _ in range(4):
        c, r = rng.integers(5, 14, 3), rng.uniform(2, 5)
        blob |= (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r
    spacing = (2.0, 0.8, 0.6)
    scale = np.asarray(spacing)
    points = np.argwhere(blob) * scale
    grid = np.indices(blob.shape).reshape(3, -1).T * scale
    expected = int((Delaunay(points).find_simplex(grid, tol=1e-9) >= 0).sum())
    assert _convex_hull_voxels(blob, spacing) == expected
