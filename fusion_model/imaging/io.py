"""Reading and writing CT volumes and masks with SimpleITK.

Files in any format SimpleITK reads (NIfTI, NRRD, MHA/MHD, ...) and DICOM series folders.
"""

from __future__ import annotations

import hashlib
import locale
from pathlib import Path

import SimpleITK as sitk

from fusion_model.errors import UserInputError
from fusion_model.fileio import atomic_write
from fusion_model.imaging.quality import check_file_complete


def dicom_series_files(folder: Path) -> list[str]:
    """The files of the one DICOM series in ``folder``, in slice order (a folder with none or several refused)."""
    reader = sitk.ImageSeriesReader()
    series_ids = reader.GetGDCMSeriesIDs(str(folder)) or ()
    if not series_ids:
        raise UserInputError(
            f"{folder}: is a folder but holds no DICOM series; point to a volume file or a DICOM series folder"
        )
    if len(series_ids) > 1:
        raise UserInputError(
            f"{folder}: holds {len(series_ids)} DICOM series ({', '.join(series_ids)}); "
            "put each series in its own folder"
        )
    return list(reader.GetGDCMSeriesFileNames(str(folder), series_ids[0]))


def read_image(path: Path, pixel_type: int | None = None) -> sitk.Image:
    """Read a volume file or a DICOM series folder; errors name the path."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{path}: file not found")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(dicom_series_files(path))
            image = reader.Execute()
        else:
            check_file_complete(path)
            image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown error"
        raise UserInputError(f"{path}: cannot be read as an image ({first})") from None
    _check_scalar_3d(path, image)
    if pixel_type is not None:
        image = sitk.Cast(image, pixel_type)
    return image


def read_image_header(path: Path) -> sitk.ImageFileReader | sitk.Image:
    """Geometry without pixels where the format allows (files); DICOM folders are read whole."""
    path = Path(path)
    if path.is_dir():
        return read_image(path)
    if not path.exists():
        raise UserInputError(f"{path}: file not found")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise UserInputError(f"{path}: cannot be read as an image (unknown or damaged format)") from None
    _check_scalar_3d(path, reader)
    return reader


def _check_scalar_3d(path: Path, image: sitk.Image | sitk.ImageFileReader) -> None:
    if image.GetDimension() != 3:
        raise UserInputError(f"{path}: is {image.GetDimension()}D; a 3D volume is needed")
    components = (image.GetNumberOfComponentsPerPixel() if isinstance(image, sitk.Image)
                  else image.GetNumberOfComponents())
    if components != 1:
        raise UserInputError(f"{path}: has {components} components per voxel; a scalar volume is needed")


def write_image(image: sitk.Image, path: Path, compress: bool = True) -> Path:
    """Write atomically; the format follows the suffix (.nii.gz, .nrrd, .mha ...)."""
    return atomic_write(Path(path), lambda tmp: sitk.WriteImage(image, str(tmp), compress))


def write_dicom_series(image: sitk.Image, folder: Path, series_description: str = "fusion-model") -> Path:
    """Write a CT volume as a DICOM series (one file per axial slice), keeping its geometry."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    direction = image.GetDirection()
    digest = hashlib.sha256(f"{folder.resolve().as_posix()}|{image.GetSize()}|{image.GetOrigin()}".encode())
    series_uid = "1.2.826.0.1.3680043.2.1125." + str(int(digest.hexdigest()[:16], 16))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    common = {
        "0008|0060": "CT",
        "0008|103e": series_description,
        "0020|000e": series_uid,
        "0020|000d": series_uid + ".1",
        "0020|0052": series_uid + ".2",  # frame of reference: a SEG or RTSTRUCT drawn on this series refers to it
        "0010|0020": "anonymous",
        "0020|0037": "\\".join(f"{v:.10f}" for v in (*direction[0:7:3], *direction[1:8:3])),
        "0028|1052": "0",
        "0028|1053": "1",
    }
    saved_locale = locale.setlocale(locale.LC_ALL)  # GDCM's DICOM writer resets the process locale to "C"
    try:
        _write_slices(writer, image, common, series_uid, folder)
    finally:
        locale.setlocale(locale.LC_ALL, saved_locale)
    return folder


def _write_slices(writer: sitk.ImageFileWriter, image: sitk.Image, common: dict, series_uid: str,
                  folder: Path) -> None:
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        for tag, value in common.items():
            slice_image.SetMetaData(tag, value)
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        slice_image.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in position))
        slice_image.SetMetaData("0020|0013", str(k + 1))
        slice_image.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
        slice_image.SetMetaData("0018|0050", f"{image.GetSpacing()[2]:.6f}")
        writer.SetFileName(str(folder / f"slice_{k:04d}.dcm"))
        writer.Execute(slice_image)
