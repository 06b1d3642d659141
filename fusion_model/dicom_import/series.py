"""Series of a PACS export: grouping files, setting aside what is not a diagnostic axial CT volume, and checking
(and where it is safe, repairing) the geometry of what is.

Everything here works on the header records of :mod:`fusion_model.dicom_import.scan`; no pixel is read.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

CT_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"}  # CT, enhanced CT
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
MASK_MODALITIES = ("SEG", "RTSTRUCT")
AXIAL_MIN_COSINE = 0.8  # |normal . z| at least this (tilts up to ~37 degrees) counts as axial
POSITION_TOLERANCE_MM = 0.01
SPACING_TOLERANCE = 0.1  # a gap within 10% of the median slice spacing is regular
TILT_TOLERANCE_DEGREES = 0.5
SHARP_WORDS = ("bone", "lung", "sharp", "knochen", "hueso", "osseux", "gugu")


@dataclass
class SeriesRecord:
    """One series of the export: its files' headers and everything the import decides about it."""

    uid: str
    headers: list[dict]
    decision: str = ""  # chosen, not chosen, set aside, refused, mask, study not imported
    reason: str = ""
    repairs: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # in slice order, after repairs
    step_mm: float = 0.0
    tilt_degrees: float = 0.0
    header_phase: str | None = None
    header_evidence: str = ""
    aorta_hu: float | None = None
    ivc_hu: float | None = None
    image_phase: str | None = None
    phase: str | None = None
    phase_source: str = ""
    output: str = ""
    drawn_on: str = ""  # a SEG / RTSTRUCT: the SeriesInstanceUID of the CT it was drawn on, when in the export

    @property
    def first(self) -> dict:
        """The header of the series' first file (series-level attributes are the same in every file)."""
        return self.headers[0]

    def get(self, keyword: str, default=None):
        """A series-level attribute from the first file that has it."""
        for header in self.headers:
            if keyword in header:
                return header[keyword]
        return default

    @property
    def modality(self) -> str:
        """The series' Modality (CT, SEG, SR ...)."""
        return str(self.first.get("Modality", ""))

    @property
    def study_uid(self) -> str:
        """StudyInstanceUID."""
        return str(self.first["StudyInstanceUID"])

    @property
    def patient_key(self) -> str:
        """PatientID as the export gives it (empty when absent)."""
        return str(self.first.get("PatientID", ""))

    @property
    def description(self) -> str:
        """SeriesDescription (empty when absent)."""
        return str(self.get("SeriesDescription", "") or "")

    @property
    def image_type(self) -> list[str]:
        """ImageType values, upper case."""
        value = self.get("ImageType", [])
        return [str(v).upper() for v in ([value] if isinstance(value, str) else value)]

    @property
    def kernel(self) -> str:
        """ConvolutionKernel, its values joined."""
        value = self.get("ConvolutionKernel", "")
        return "/".join(map(str, value)) if isinstance(value, list) else str(value or "")

    @property
    def thickness_mm(self) -> float:
        """SliceThickness, or the slice spacing when the header has none."""
        value = self.get("SliceThickness")
        return float(value) if isinstance(value, int | float) and value > 0 else float(self.step_mm)

    @property
    def sharp_kernel(self) -> bool:
        """Whether the series was reconstructed with a sharp (bone / lung) kernel."""
        return is_sharp_kernel(self.kernel, self.description)

    @property
    def positions(self) -> int:
        """Number of distinct slice positions."""
        return len({tuple(np.round(h.get("ImagePositionPatient", [0, 0, 0]), 2)) for h in self.headers})


def is_sharp_kernel(kernel: str, description: str = "") -> bool:
    """Sharp reconstruction kernels of the major vendors: Siemens B/Br/I/Q/D >= 50, Canon FC >= 30 (except
    abdominal FC1x/FC0x), GE/Philips names (BONE, LUNG, EDGE, DETAIL, Y-sharp, D, E, L), or a description
    saying bone / lung in the usual languages."""
    text = kernel.strip().upper()
    match = re.match(r"^(?:BR|BL|BV|B|I|Q|D|H|HR|J)(\d{2})", text)
    if match and int(match.group(1)) >= 50:
        return True
    match = re.match(r"^FC(\d{2})", text)
    if match and int(match.group(1)) >= 30:
        return True
    if any(word in text for word in ("BONE", "LUNG", "EDGE", "DETAIL", "SHARP", "YC", "YD")) or text in ("D", "E", "L"):
        return True
    folded = f" {description.lower()} "
    return any(word in folded for word in SHARP_WORDS)


def group_series(headers: list[dict]) -> list[SeriesRecord]:
    """Files grouped by SeriesInstanceUID, in a stable order (patient, study, series number, uid)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for header in headers:
        groups[header["SeriesInstanceUID"]].append(header)
    records = [SeriesRecord(uid, sorted(files, key=lambda h: (int(h.get("InstanceNumber", 0) or 0), h["path"])))
               for uid, files in groups.items()]
    return sorted(records, key=lambda s: (s.patient_key, s.study_uid, int(s.get("SeriesNumber", 0) or 0), s.uid))


def mixed_identity(series: SeriesRecord) -> str | None:
    """Why a series cannot be trusted as one patient's one study (files of several patients or studies under
    one SeriesInstanceUID), or None."""
    patients = Counter(str(h.get("PatientID", "")) for h in series.headers)
    if len(patients) > 1:
        return (f"its {len(series.headers)} files belong to {len(patients)} different patients (PatientID differs "
                "under one SeriesInstanceUID): the export mixed two patients; re-export the series")
    studies = Counter(str(h["StudyInstanceUID"]) for h in series.headers)
    if len(studies) > 1:
        return f"its files belong to {len(studies)} studies under one SeriesInstanceUID; re-export the series"
    return None


def set_aside_reason(series: SeriesRecord, min_slices: int) -> str | None:
    """Why a series is not a diagnostic axial CT volume (None when it may be one)."""
    modality = series.modality
    sop_class = str(series.get("SOPClassUID", ""))
    if modality == "SR" or sop_class.startswith("1.2.840.10008.5.1.4.1.1.88"):
        return "structured report (dose report or other SR), not an image"
    if modality == "PR" or sop_class.startswith("1.2.840.10008.5.1.4.1.1.11"):
        return "presentation state (annotations), not an image"
    if sop_class.startswith(SECONDARY_CAPTURE_PREFIX) or modality in ("OT", "SC"):
        return "secondary capture (a screenshot), not a CT volume"
    if modality != "CT":
        return f"modality {modality or 'missing'}: not CT"
    if "LOCALIZER" in series.image_type:
        return "localizer (scout) image"
    if int(series.get("NumberOfFrames", 1) or 1) > 1:
        return "multi-frame (enhanced) CT object: convert it to single-frame images (e.g. dcm2niix or emf2sf) first"
    orientations = [h.get("ImageOrientationPatient") for h in series.headers]
    if any(o is None or len(o) != 6 for o in orientations) or any("ImagePositionPatient" not in h
                                                                    for h in series.headers):
        return "images without orientation or position (ImageOrientationPatient / ImagePositionPatient)"
    normal = slice_normal(orientations[0])
    if abs(normal[2]) < AXIAL_MIN_COSINE:
        plane = "coronal" if abs(normal[1]) >= abs(normal[0]) else "sagittal"
        return f"{plane} reformat, not axial"
    if series.positions < min_slices:
        return f"too few slices ({series.positions} position(s); at least {min_slices} needed)"
    return None


def slice_normal(orientation) -> np.ndarray:
    """The unit normal of an image plane from its ImageOrientationPatient (row cosines, column cosines)."""
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    normal = np.cross(row, col)
    return normal / max(np.linalg.norm(normal), 1e-9)


def check_geometry(series: SeriesRecord) -> str | None:
    """Order the slices and check the stack; fills ``series.files``, ``step_mm``, ``tilt_degrees`` and
    ``repairs``. Returns why the series is refused, or None when it is usable (possibly repaired)."""
    headers = series.headers
    first = np.asarray(headers[0]["ImageOrientationPatient"], float)
    for header in headers:
        if np.abs(np.asarray(header["ImageOrientationPatient"], float) - first).max() > 1e-3:
            return "its images have more than one orientation; re-export the series or split it"
    if any(len(np.atleast_1d(h.get("PixelSpacing", []))) != 2 for h in headers):
        return "images without PixelSpacing (the pixel size is unknown); re-export the series with it"
    sizes = {(h.get("Rows"), h.get("Columns"), tuple(np.round(h.get("PixelSpacing", [0, 0]), 4))) for h in headers}
    if len(sizes) > 1:
        return "its images differ in size or pixel spacing"
    normal = slice_normal(first)
    ordered = sorted(headers, key=lambda h: (float(np.dot(normal, h["ImagePositionPatient"])),
                                             int(h.get("InstanceNumber", 0) or 0), h["path"]))
    kept: list[dict] = []
    duplicates = 0
    for header in ordered:
        if kept and np.abs(np.subtract(header["ImagePositionPatient"], kept[-1]["ImagePositionPatient"])).max() \
                < POSITION_TOLERANCE_MM:
            if header["SOPInstanceUID"] == kept[-1]["SOPInstanceUID"]:
                duplicates += 1  # the same image exported twice
                continue
            z = float(np.dot(normal, header["ImagePositionPatient"]))
            return (f"two different images at the same position ({z:.1f} mm along the slice normal): the series "
                    "holds more than one acquisition; re-export it or remove the extra images")
        kept.append(header)
    if duplicates:
        series.repairs.append(f"{duplicates} duplicated file(s) of the same image ignored")
    positions = np.array([h["ImagePositionPatient"] for h in kept], float)
    steps = np.diff(positions, axis=0)
    along = steps @ normal
    step = float(np.median(along))
    if step <= 0:
        return "slice positions do not advance along the slice normal"
    gaps = along / step
    irregular = np.abs(gaps - 1) > SPACING_TOLERANCE
    if irregular.any():
        where = int(np.argmax(irregular))
        z0 = float(positions[where] @ normal)
        if np.all(np.abs(gaps[irregular] - np.round(gaps[irregular])) <= SPACING_TOLERANCE) and \
                np.all(np.round(gaps[irregular]) >= 2):
            missing = int(np.sum(np.round(gaps[irregular]) - 1))
            return (f"{missing} missing slice(s) (a {along[where]:.1f} mm gap after {z0:.1f} mm where slices are "
                    f"{step:.2f} mm apart); re-export the complete series")
        return (f"irregular slice spacing ({along[where]:.2f} mm after {z0:.1f} mm where slices are {step:.2f} mm "
                "apart); re-export or resample the series")
    mean_step = steps.mean(axis=0)
    cosine = float(np.dot(mean_step, normal) / max(np.linalg.norm(mean_step), 1e-9))
    series.tilt_degrees = math.degrees(math.acos(min(1.0, abs(cosine))))
    if series.tilt_degrees > TILT_TOLERANCE_DEGREES:
        series.repairs.append(f"gantry tilt of {series.tilt_degrees:.1f} degrees resampled onto an orthogonal grid")
    series.files = [h["path"] for h in kept]
    series.headers = kept
    series.step_mm = float(np.linalg.norm(mean_step))
    return None


def stack_affine(series: SeriesRecord) -> tuple[np.ndarray, np.ndarray]:
    """The stack's voxel-to-patient affine: (3 x 3 matrix whose columns are the column, row and slice steps in
    mm, origin in mm). Sheared when the gantry was tilted."""
    first = series.headers[0]
    orientation = np.asarray(first["ImageOrientationPatient"], float)
    row_spacing, col_spacing = (float(v) for v in first.get("PixelSpacing", [1.0, 1.0]))
    positions = np.array([h["ImagePositionPatient"] for h in series.headers], float)
    step = (positions[-1] - positions[0]) / max(len(positions) - 1, 1)
    # PixelSpacing = [row spacing (between rows, along the column direction), column spacing]
    matrix = np.column_stack([orientation[:3] * col_spacing, orientation[3:6] * row_spacing, step])
    return matrix, positions[0]
