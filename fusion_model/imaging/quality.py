"""What a reader of CT checks before trusting a volume: the whole file is there, every voxel is a number,
and the values are Hounsfield units in a range the phase can have.

SimpleITK reads a truncated .nii.gz or .nii without complaint (the missing part comes back as zeros),
so completeness is checked here: a gzip stream must decompress to its end-of-stream marker, and a
NIfTI file must hold as many voxel bytes as its header declares.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from fusion_model.errors import UserInputError

# Mean attenuation inside a lesion that a CT in HU can show, per phase: fat-containing myelolipoma
# (-100 HU) to calcified or strongly enhancing tissue. Outside: the volume is not in HU (rescale slope /
# intercept not applied, another modality) or the mask is on the wrong image.
LESION_MEAN_HU = {"unenhanced": (-250.0, 250.0), "arterial": (-250.0, 500.0), "venous": (-250.0, 500.0),
                  "delayed": (-250.0, 500.0)}
MAX_PLAUSIBLE_HU = 4000.0      # above dense bone and iodine; a share of voxels beyond it means not HU
MAX_SHARE_ABOVE = 0.001
_CHUNK = 1 << 24


def _nifti_layout(header: bytes) -> tuple[int, int, np.dtype | None] | None:
    """(bytes the file must hold, offset of the voxels, their dtype when floating point) of a NIfTI-1/-2
    header; None if ``header`` is not NIfTI."""
    for endian in ("<", ">"):
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            datatype, bitpix = struct.unpack(endian + "hh", header[70:74])
            vox_offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            datatype, bitpix = struct.unpack(endian + "hh", header[12:16])
            dims = struct.unpack(endian + "8q", header[16:80])
            vox_offset = int(struct.unpack(endian + "q", header[168:176])[0])
            break
    else:
        return None
    ndim = int(dims[0])
    if not 1 <= ndim <= 7 or bitpix <= 0:
        return None
    voxels = int(np.prod([max(1, int(d)) for d in dims[1:ndim + 1]], dtype=np.int64))
    floating = {16: "f4", 64: "f8"}.get(int(datatype))
    return vox_offset + voxels * bitpix // 8, vox_offset, np.dtype(endian + floating) if floating else None


def check_file_complete(path: Path) -> None:
    """Refuse a gzip file that ends before its end-of-stream marker or fails its CRC, a NIfTI file shorter
    than its header declares, and a floating-point NIfTI holding NaN or infinite voxels (ITK reads those
    as 0, so they are checked in the file itself)."""
    path = Path(path)
    name = path.name.lower()
    fix = "copy or export it again"
    is_nifti = name.endswith((".nii", ".nii.gz"))
    if name.endswith(".gz"):
        chunks: list[bytes] = []
        head, total, keep = b"", 0, is_nifti
        try:
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(_CHUNK):
                    if len(head) < 540:
                        head += chunk[:540 - len(head)]
                        layout = _nifti_layout(head) if is_nifti and len(head) >= 348 else None
                        keep = bool(layout and layout[2] is not None)
                    if keep:
                        chunks.append(chunk)
                    total += len(chunk)
        except EOFError:
            raise UserInputError(f"{path}: the compressed file is truncated (it ends before its end-of-stream "
                                 f"marker; a reader would fill the rest with zeros); {fix}") from None
        except gzip.BadGzipFile:
            raise UserInputError(f"{path}: cannot be read as an image (the name ends in .gz but the file is not "
                                 "gzip-compressed)") from None
        except (zlib.error, OSError) as err:
            raise UserInputError(f"{path}: the compressed file is damaged ({err}); {fix}") from None
        data = b"".join(chunks) if keep else None
    elif name.endswith(".nii"):
        with open(path, "rb") as handle:
            head = handle.read(540)
        total = path.stat().st_size
        layout = _nifti_layout(head)
        data = path.read_bytes() if layout and layout[2] is not None else None  # voxels only to look for NaN
    else:
        return
    layout = _nifti_layout(head) if is_nifti else None
    if layout is None:
        return
    expected, offset, floating = layout
    if total < expected:
        raise UserInputError(f"{path}: holds {total} bytes of NIfTI data but its header declares {expected}: "
                             f"the file is truncated; {fix}")
    if floating is not None and data is not None:
        voxels = np.frombuffer(data, dtype=floating, count=(expected - offset) // floating.itemsize, offset=offset)
        bad = int(voxels.size - np.count_nonzero(np.isfinite(voxels)))
        if bad:
            raise UserInputError(f"{path}: {bad} voxel(s) are NaN or infinite (a reader would show them as 0); the "
                                 f"volume is damaged, {fix}")


def non_finite_voxels(image: sitk.Image) -> int:
    """How many voxels are NaN or infinite (0 for integer images)."""
    values = sitk.GetArrayViewFromImage(image)
    if not np.issubdtype(values.dtype, np.floating):
        return 0
    return int(values.size - np.count_nonzero(np.isfinite(values)))


def ct_value_problems(image: sitk.Image, phase: str, mask01: sitk.Image | None = None,
                      hounsfield: bool = True) -> list[str]:
    """Why a volume's values cannot be trusted (empty when they can): every voxel must be finite and, with
    ``hounsfield``, the values must be HU of this phase.

    ``mask01`` (the lesion, on the image's grid) adds the check of the lesion's mean attenuation.
    """
    problems = []
    bad = non_finite_voxels(image)
    if bad:
        problems.append(f"{bad} voxel(s) are NaN or infinite; the volume is damaged, export it again")
        return problems
    if not hounsfield:
        return problems
    values = sitk.GetArrayViewFromImage(image)
    share_above = float(np.count_nonzero(values > MAX_PLAUSIBLE_HU)) / max(1, values.size)
    if share_above > MAX_SHARE_ABOVE:
        problems.append(f"{share_above:.1%} of voxels are above {MAX_PLAUSIBLE_HU:.0f} HU: the volume does not look "
                        "like Hounsfield units (apply the DICOM rescale slope and intercept)")
    if mask01 is not None and phase in LESION_MEAN_HU:
        inside = sitk.GetArrayViewFromImage(mask01) > 0
        if inside.shape == values.shape and inside.any():
            mean = float(values[inside].mean())
            low, high = LESION_MEAN_HU[phase]
            if not low <= mean <= high:
                problems.append(f"the lesion's mean attenuation in the {phase} phase is {mean:.0f} HU, outside the "
                                f"plausible {low:.0f} to {high:.0f} HU: is the volume in HU, and the mask drawn on it?")
    return problems
