import numpy as np
import pytest
import SimpleITK as sitk

from fusion_model.errors import UserInputError
from fusion_model.imaging.cache import ImageCache
from fusion_model.imaging.geometry import Geometry, geometry_differences
from fusion_model.imaging.io import read_image, write_dicom_series, write_image
from fusion_model.imaging.preprocess import (
    AIR_HU, LesionVolumes, PreprocessConfig, crop_grid, lesion_centroid, lesion_crop, resample_to_grid, window_hu,
)
from tests.helpers import ct_with_lesion, sphere_mask, to_image


def ct_volume():
    rng = np.random.default_rng(0)
    array = rng.integers(-200, 200, size=(12, 20, 24)).astype(np.int16)
    image = to_image(array, spacing=(0.7, 0.8, 2.5), origin=(-10.0, 5.0, 30.0))
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # a rotation: DICOM cannot hold a mirrored grid
    return image


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_file_formats_round_trip_geometry_and_values(tmp_path, suffix):
    image = ct_volume()
    path = write_image(image, tmp_path / f"ct{suffix}")
    back = read_image(path)
    assert geometry_differences(Geometry.of(image), Geometry.of(back)) == []
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_dicom_series_round_trip(tmp_path):
    image = ct_volume()
    folder = write_dicom_series(image, tmp_path / "series")
    assert len(list(folder.glob("*.dcm"))) == image.GetDepth()
    back = read_image(folder)
    assert geometry_differences(Geometry.of(image), Geometry.of(back)) == []
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_unreadable_file_and_empty_folder_name_the_path(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(UserInputError, match="broken.nii.gz: cannot be read as an image"):
        read_image(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="holds no DICOM series"):
        read_image(tmp_path / "empty")


def test_crop_is_centred_on_the_lesion_and_isotropic():
    mask = sphere_mask(shape=(20, 40, 40), centre=(8, 25, 14), radius_vox=3)
    spacing = (0.8, 0.8, 2.0)
    volumes = LesionVolumes(
        phases={"unenhanced": sitk.Cast(to_image(ct_with_lesion(mask, 40.0, -50.0), spacing), sitk.sitkFloat32)},
        mask=to_image(mask, spacing), reference_phase="unenhanced",
    )
    config = PreprocessConfig(spacing_mm=1.0, crop_size_mm=16.0)
    crop = lesion_crop(volumes, ["unenhanced", "mask"], config)
    assert crop.shape == (2, 16, 16, 16) and crop.dtype == np.float16
    m = crop[1].astype(float)
    centre_of_mass = np.array([np.average(np.indices(m.shape)[i], weights=m) for i in range(3)])
    assert np.allclose(centre_of_mass, 7.5, atol=0.6)
    lesion_value = window_hu(np.array([40.0]), config.hu_window)[0]
    assert np.isclose(float(crop[0][8, 8, 8]), lesion_value, atol=1e-3)


def test_depth_channel_is_each_voxels_distance_to_the_surface():
    from fusion_model.imaging.preprocess import DEPTH_SCALE_MM, crop_channels

    assert crop_channels(["unenhanced"], True, depth_channel=True) == ["unenhanced", "depth", "mask"]
    assert crop_channels(["unenhanced"], False, depth_channel=True) == ["depth", "mask"]
    assert crop_channels(["unenhanced"], False) == ["mask"]
    mask = sphere_mask(shape=(40, 40, 40), centre=(20, 20, 20), radius_vox=8)
    volumes = LesionVolumes(phases={}, mask=to_image(mask, (0.5, 0.5, 0.5)), reference_phase="unenhanced")
    crop = lesion_crop(volumes, ["depth", "mask"], PreprocessConfig(spacing_mm=0.5, crop_size_mm=20.0))
    depth, inside = crop[0].astype(float), crop[1] > 0
    assert (depth[~inside] == 0).all() and (depth[inside] > 0).all()
    # a ball of radius 4 mm: 4 mm deep at its centre (within a voxel), shallower towards its surface
    assert depth.max() * DEPTH_SCALE_MM == pytest.approx(4.0, abs=0.5)
    assert depth[20, 20, 20] > depth[20, 20, 16] > depth[20, 20, 14] > 0


def test_crop_pads_with_air_beyond_the_scan():
    mask = sphere_mask(shape=(10, 10, 10), centre=(1, 5, 5), radius_vox=1)  # lesion at the volume border
    ct = sitk.Cast(to_image(ct_with_lesion(mask, 40.0, 0.0)), sitk.sitkFloat32)
    grid = crop_grid(lesion_centroid(to_image(mask)), 12, 1.0, ct.GetDirection())
    values = resample_to_grid(ct, grid, is_mask=False)
    assert values.min() == AIR_HU  # outside the scan
    assert window_hu(np.array([AIR_HU]), (-200, 300))[0] == 0.0


def test_window_hu_clips_and_scales():
    assert np.allclose(window_hu(np.array([-500.0, -200.0, 50.0, 300.0, 900.0]), (-200.0, 300.0)),
                       [0, 0, 0.5, 1, 1])
    with pytest.raises(ValueError):
        PreprocessConfig(hu_window=(300, -200))


def test_cache_is_keyed_by_content_and_settings(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"one")
    cache = ImageCache(tmp_path / "cache")
    calls = []

    def compute():
        calls.append(1)
        return np.arange(4, dtype=np.float16)

    key = cache.key([f], {"spacing": 1})
    assert np.array_equal(cache.array(key, compute), cache.array(key, compute))
    assert len(calls) == 1 and cache.hits == 1
    assert cache.key([f], {"spacing": 2}) != key
    f.write_bytes(b"two")
    assert cache.key([f], {"spacing": 1}) != key


def test_writing_a_dicom_series_keeps_the_process_locale(tmp_path):
    """GDCM's writer sets the C locale; text decoding elsewhere in the process must not change."""
    import locale

    before = locale.setlocale(locale.LC_ALL)
    write_dicom_series(to_image(np.zeros((4, 8, 8), np.int16)), tmp_path / "series")
    assert locale.setlocale(locale.LC_ALL) == before


def test_a_cached_crop_is_read_into_its_row_or_refused_when_damaged(tmp_path):
    from fusion_model.imaging.extract import read_npy_into

    crop = np.arange(2 * 4 * 4 * 4, dtype=np.float16).reshape(2, 4, 4, 4)
    np.save(tmp_path / "crop.npy", crop)
    rows = np.zeros((3, 2, 4, 4, 4), np.float16)
    assert read_npy_into(tmp_path / "crop.npy", rows[1]) and np.array_equal(rows[1], crop) and not rows[0].any()
    data = (tmp_path / "crop.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:-10])
    (tmp_path / "longer.npy").write_bytes(data + b"\0\0")
    np.save(tmp_path / "other.npy", crop.astype(np.float32))
    np.save(tmp_path / "shape.npy", crop[:1])
    (tmp_path / "text.npy").write_text("not an array")
    for name in ("cut", "longer", "other", "shape", "text", "missing"):
        assert not read_npy_into(tmp_path / f"{name}.npy", rows[2]), name
