"""From a checked series to a volume: pixels read with SimpleITK (GDCM decodes compressed transfer syntaxes),
stacked in the slice order the geometry check found, a gantry tilt resampled away, written as NIfTI with none
of the DICOM header (no identifying value reaches the file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from fusion_model.errors import UserInputError
from fusion_model.fileio import atomic_write


def stack(files: list[str], matrix: np.ndarray, origin: np.ndarray) -> sitk.Image:
    """The series as one image on an orthogonal grid. ``matrix``: columns = column, row and slice steps (mm);
    a slice step off the plane normal (gantry tilt) is removed by shifting each slice in its plane (linear
    interpolation), as dcm2niix does."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError as err:
        lines = str(err).strip().splitlines()
        raise UserInputError(f"{Path(files[0]).parent}: its images cannot be decoded ({lines[-1] if lines else err})"
                             ) from None
    array = sitk.GetArrayFromImage(image)  # (slices, rows, columns)
    col_step, row_step, slice_step = matrix[:, 0], matrix[:, 1], matrix[:, 2]
    col_mm, row_mm = float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))
    r, c = col_step / col_mm, row_step / row_mm
    n = np.cross(r, c)
    depth = float(np.dot(slice_step, n))
    shear_c, shear_r = float(np.dot(slice_step, c)) / row_mm, float(np.dot(slice_step, r)) / col_mm
    if abs(shear_c) > 1e-3 or abs(shear_r) > 1e-3:
        fill = float(array.min())
        array = np.stack([ndimage.shift(array[k], (k * shear_c, k * shear_r), order=1, mode="constant", cval=fill)
                          for k in range(array.shape[0])])
    if np.allclose(array, np.rint(array)) and array.min() >= -32768 and array.max() <= 32767:
        array = np.rint(array).astype(np.int16)
    clean = sitk.GetImageFromArray(array)
    clean.SetSpacing((col_mm, row_mm, abs(depth)))
    clean.SetOrigin(tuple(float(v) for v in origin))
    clean.SetDirection(tuple(float(v) for v in np.column_stack([r, c, n * np.sign(depth)]).ravel()))
    return clean


def write_volume(image: sitk.Image, path: Path, compress: bool = True) -> Path:
    """Write a volume atomically (NIfTI when the name says so; gzip-compressed with ``compress``, which costs most
    of an import's time: deflating noisy CT runs at about 35 MB/s per core)."""
    return atomic_write(Path(path), lambda tmp: sitk.WriteImage(image, str(tmp), compress))


def on_grid(mask: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """``mask`` on ``reference``'s grid (nearest neighbour; unchanged when the grids already match)."""
    from fusion_model.imaging.geometry import Geometry, geometry_differences, resample_onto

    if not geometry_differences(Geometry.of(reference), Geometry.of(mask)):
        out = sitk.Image(mask)
        out.CopyInformation(reference)
        return out
    return resample_onto(mask, reference, is_mask=True, default_value=0)


def side_of(mask: np.ndarray, ct: sitk.Image) -> str | None:
    """Which adrenal a lesion mask (array on ``ct``'s grid) is on: its centroid against the body's midline on
    the lesion's middle slice (patient left = +x in DICOM's LPS coordinates)."""
    if not mask.any():
        return None
    k, j, i = (float(v) for v in np.argwhere(mask).mean(axis=0))
    hu = sitk.GetArrayViewFromImage(ct)[int(round(k))]
    body = np.argwhere(hu > -500)
    if body.size == 0:
        return None
    lesion_x = ct.TransformContinuousIndexToPhysicalPoint((i, j, k))[0]
    mid_j, mid_i = body.mean(axis=0)
    midline_x = ct.TransformContinuousIndexToPhysicalPoint((float(mid_i), float(mid_j), k))[0]
    return "left" if lesion_x > midline_x else "right"
