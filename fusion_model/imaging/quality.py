"""What a reader of CT checks before trusting a volume: the whole file is there, every voxel is a number,
and the values are Hounsfield units in a range the phase can have.

SimpleITK reads a truncated .nii.gz or .nii without complaint (the missing part comes back as zeros),
so completeness is checked here: a gzip stream must decompress to its end-of-stream marker, and a
NIfTI file must hold as many voxel bytes as its header declares.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
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
_READ_BYTES = 1 << 16  # compressed bytes read at a time
_PIECE_BYTES = 1 << 19  # most bytes decompressed at a time: the pieces stay in the CPU's cache
_GZIP = zlib.MAX_WBITS | 16  # zlib's gzip format: header, deflate stream, CRC-32 and length checked


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


def _gunzip_chunks(path: Path) -> Iterator[bytes]:
    """The decompressed bytes of a gzip file, a piece at a time (cache-sized pieces: one pass, no copy of the
    whole volume); concatenated members are read on, trailing zero padding ignored. zlib checks each member's
    CRC and length."""
    fix = "copy or export it again"
    with open(path, "rb") as handle:
        if handle.read(2) != b"\x1f\x8b":
            raise UserInputError(f"{path}: cannot be read as an image (the name ends in .gz but the file is not "
                                 "gzip-compressed)")
        handle.seek(0)
        stream = zlib.decompressobj(_GZIP)
        while data := handle.read(_READ_BYTES):
            more_output = False
            while data or more_output:
                if stream.eof:  # a member ended: another member, zero padding, or something that is no gzip
                    data += handle.read(1) if len(data) < 2 else b""
                    if not data.startswith(b"\x1f\x8b"):
                        if data.strip(b"\0") or handle.read().strip(b"\0"):
                            raise UserInputError(f"{path}: the compressed file is damaged (bytes that are not gzip "
                                                 f"follow its end); {fix}")
                        return
                    stream = zlib.decompressobj(_GZIP)
                try:
                    piece = stream.decompress(data, _PIECE_BYTES)
                except zlib.error as err:
                    raise UserInputError(f"{path}: the compressed file is damaged ({err}); {fix}") from None
                if piece:
                    yield piece
                # a full piece may leave output inside zlib with no input left: ask again
                more_output = not stream.eof and len(piece) == _PIECE_BYTES
                data = stream.unused_data if stream.eof else stream.unconsumed_tail
        if not stream.eof:
            raise UserInputError(f"{path}: the compressed file is truncated (it ends before its end-of-stream "
                                 f"marker; a reader would fill the rest with zeros); {fix}")


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while data := handle.read(_PIECE_BYTES):
            yield data


class _NonFiniteCount:
    """Counts NaN and infinite values of ``dtype`` in the bytes [offset, end) of a stream fed piece by piece."""

    def __init__(self, dtype: np.dtype, offset: int, end: int):
        self.dtype, self.offset, self.end = dtype, offset, end
        self.position, self.carry, self.bad = 0, b"", 0

    def feed(self, piece: bytes) -> None:
        start, self.position = self.position, self.position + len(piece)
        lo, hi = max(self.offset - start, 0), min(self.end - start, len(piece))
        if lo >= hi:
            return
        data = self.carry + piece[lo:hi]
        whole = len(data) - len(data) % self.dtype.itemsize
        self.carry = data[whole:]
        values = np.frombuffer(data, dtype=self.dtype, count=whole // self.dtype.itemsize)
        self.bad += int(values.size - np.count_nonzero(np.isfinite(values)))


def check_file_complete(path: Path) -> None:
    """Refuse a gzip file that ends before its end-of-stream marker or fails its CRC, a NIfTI file shorter
    than its header declares, and a floating-point NIfTI holding NaN or infinite voxels (ITK reads those
    as 0, so they are checked in the file itself). One pass over the file, in pieces."""
    path = Path(path)
    name = path.name.lower()
    fix = "copy or export it again"
    is_nifti = name.endswith((".nii", ".nii.gz"))
    if name.endswith(".gz"):
        chunks = _gunzip_chunks(path)
    elif is_nifti:
        chunks = _file_chunks(path)
    else:
        return
    head, total, pending, scan, header_known = b"", 0, [], None, not is_nifti
    try:
        for piece in chunks:
            total += len(piece)
            if header_known:
                if scan is not None:
                    scan.feed(piece)
                continue
            pending.append(piece)  # until the header is whole (540 bytes): then scanned from the start
            head += piece[:540 - len(head)]
            if len(head) >= 540:
                header_known, scan = True, _voxel_scan(head, pending)
                pending = []
    except OSError as err:
        raise UserInputError(f"{path}: cannot be read ({err}); {fix}") from None
    layout = _nifti_layout(head) if is_nifti else None
    if layout is None:
        return
    if not header_known:  # a file shorter than 540 bytes: all its voxels are in ``pending``
        scan = _voxel_scan(head, pending)
    expected = layout[0]
    if total < expected:
        raise UserInputError(f"{path}: holds {total} bytes of NIfTI data but its header declares {expected}: "
                             f"the file is truncated; {fix}")
    if scan is not None and scan.bad:
        raise UserInputError(f"{path}: {scan.bad} voxel(s) are NaN or infinite (a reader would show them as 0); the "
                             f"volume is damaged, {fix}")


def _voxel_scan(head: bytes, pieces: list[bytes]) -> _NonFiniteCount | None:
    """A count of the non-finite voxels of a floating-point NIfTI (None for other files), fed ``pieces``."""
    layout = _nifti_layout(head)
    if layout is None or layout[2] is None:
        return None
    scan = _NonFiniteCount(layout[2], layout[1], layout[0])
    for piece in pieces:
        scan.feed(piece)
    return scan


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
