"""Lesion masks in the formats radiology tools write: DICOM Segmentation (SEG) objects and RT Structure
Sets (RTSTRUCT), put on the CT's own grid.

- SEG (read with highdicom): the frames of one segment (``mask_label`` = segment number) are placed on the
  CT slices they were derived from, matched by position and orientation; fractional segments are cut at
  half their maximum.
- RTSTRUCT: the closed planar contours of one ROI (``mask_label`` = ROI number) are rasterised onto the CT
  slices they lie in: a voxel is inside when its centre is inside the contour (even-odd rule, so a contour
  inside another is a hole).

Either way the result is a 0/1 mask on the reference CT image, as a mask file would give.

Before that, what the object says it was drawn on is checked against the lesion's CT when the CT is DICOM too:
the series it references (SEG: ReferencedSeriesSequence; RTSTRUCT: the series under its referenced frame of
reference) must be one of the lesion's CT phases, and its frame of reference the CT's. Grids that happen to match
do not make another scan's outline this lesion's. An outline that leaves the CT's field of view (a SEG frame's
pixels or RTSTRUCT contour points beyond the image's edge) is refused rather than cut at the edge.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from fusion_model.errors import UserInputError
from fusion_model.imaging.io import dicom_series_files

DICOM_MASK_MODALITIES = ("SEG", "RTSTRUCT")
_TOLERANCE_VOXELS = 0.05
_EDGE_VOXELS = 0.5  # a contour point further than this beyond the outermost voxel centre lies outside the CT


def dicom_modality(path: Path) -> str | None:
    """The Modality of a DICOM file (None for anything that is not a DICOM file)."""
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, "rb") as handle:
        preamble = handle.read(132)
    if preamble[128:132] != b"DICM":
        return None
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality", ""))


def is_dicom_mask(path: Path) -> bool:
    """Whether ``path`` is a DICOM SEG or RTSTRUCT file (which need the CT to be put on a grid)."""
    return dicom_modality(path) in DICOM_MASK_MODALITIES


def ct_uids(path: Path) -> dict[str, str | None] | None:
    """SeriesInstanceUID and FrameOfReferenceUID of a CT given as a DICOM series folder or DICOM file; None
    for a volume file (NIfTI, NRRD, MHA), which carries neither."""
    import pydicom

    path = Path(path)
    if path.is_dir():
        first = Path(dicom_series_files(path)[0])
    elif dicom_modality(path) is not None:
        first = path
    else:
        return None
    header = pydicom.dcmread(first, stop_before_pixels=True,
                             specific_tags=["SeriesInstanceUID", "FrameOfReferenceUID"])
    return {"series": str(header.get("SeriesInstanceUID", "")) or None,
            "frame": str(header.get("FrameOfReferenceUID", "")) or None}


def drawn_on(dataset) -> dict[str, set[str]]:
    """The series and frames of reference a SEG or RTSTRUCT says it was drawn on."""
    series, frames = set(), set()
    if str(dataset.get("Modality", "")) == "SEG":
        series = {str(item.SeriesInstanceUID) for item in dataset.get("ReferencedSeriesSequence", [])
                  if "SeriesInstanceUID" in item}
        if dataset.get("FrameOfReferenceUID"):
            frames.add(str(dataset.FrameOfReferenceUID))
    else:
        for frame in dataset.get("ReferencedFrameOfReferenceSequence", []):
            if frame.get("FrameOfReferenceUID"):
                frames.add(str(frame.FrameOfReferenceUID))
            for study in frame.get("RTReferencedStudySequence", []):
                series |= {str(item.SeriesInstanceUID) for item in study.get("RTReferencedSeriesSequence", [])
                           if "SeriesInstanceUID" in item}
    return {"series": series, "frames": frames}


def check_drawn_on(path: Path, dataset, ct_paths) -> None:
    """Refuse a SEG / RTSTRUCT whose referenced series is none of the lesion's CT phases, or whose frame of
    reference is not theirs (checked where the CT is DICOM; a volume file carries no UIDs)."""
    cts = {Path(p): ct_uids(p) for p in ct_paths}
    cts = {p: u for p, u in cts.items() if u}
    if not cts:
        return
    modality = str(dataset.get("Modality", "object"))
    said = drawn_on(dataset)
    ct_series = {u["series"] for u in cts.values() if u["series"]}
    ct_frames = {u["frame"] for u in cts.values() if u["frame"]}
    names = ", ".join(p.name for p in cts)
    if said["series"] and ct_series and not said["series"] & ct_series:
        raise UserInputError(
            f"{path}: the {modality} was drawn on series {', '.join(sorted(said['series']))}, which is none of this "
            f"lesion's CT series ({names}: {', '.join(sorted(ct_series))}); give the CT it was drawn on in the "
            f"phase columns, or the {modality} drawn on this CT")
    if said["frames"] and ct_frames and not said["frames"] & ct_frames:
        raise UserInputError(
            f"{path}: the {modality}'s frame of reference {', '.join(sorted(said['frames']))} is not that of this "
            f"lesion's CT ({names}: {', '.join(sorted(ct_frames))}): it was drawn on another scan; give the CT it "
            f"was drawn on, or the {modality} drawn on this CT")


def read_dicom_mask(path: Path, label: int | None, reference: sitk.Image, ct_paths=()) -> sitk.Image:
    """The lesion of a SEG or RTSTRUCT file as a 0/1 uint8 image on ``reference``'s grid; ``ct_paths``: the
    lesion's CT phase files or folders, checked against what the object says it was drawn on."""
    import pydicom

    path = Path(path)
    try:
        dataset = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError) as err:
        raise UserInputError(f"{path}: cannot be read as DICOM ({err})") from None
    modality = str(dataset.get("Modality", ""))
    if modality in DICOM_MASK_MODALITIES:
        check_drawn_on(path, dataset, ct_paths)
    if modality == "SEG":
        array = _seg_on_grid(path, dataset, label, reference)
    elif modality == "RTSTRUCT":
        array = _rtstruct_on_grid(path, dataset, label, reference)
    else:
        raise UserInputError(f"{path}: a DICOM {modality or 'object'} is not a mask; give a SEG, an RTSTRUCT or a "
                             "label image")
    mask = sitk.GetImageFromArray(array.astype(np.uint8))
    mask.CopyInformation(reference)
    return mask


def _choose(path: Path, label: int | None, available: dict[int, str], what: str) -> int:
    listed = ", ".join(f"{n} ({name})" for n, name in available.items())
    if label is None:
        if len(available) != 1:
            raise UserInputError(f"{path}: holds {len(available)} {what}s ({listed}); set mask_label to this "
                                 f"lesion's {what} number")
        return next(iter(available))
    if label not in available:
        raise UserInputError(f"{path}: has no {what} {label}; its {what}s: {listed or 'none'}")
    return label


def _grid_index(reference: sitk.Image, point) -> np.ndarray:
    return np.asarray(reference.TransformPhysicalPointToContinuousIndex([float(v) for v in point]))


def _seg_on_grid(path: Path, dataset, label: int | None, reference: sitk.Image) -> np.ndarray:
    import highdicom as hd

    try:
        seg = hd.seg.Segmentation.from_dataset(dataset, copy=False)
    except (AttributeError, KeyError, ValueError, TypeError) as err:
        raise UserInputError(f"{path}: not a valid DICOM Segmentation ({err})") from None
    segments = {int(s.SegmentNumber): str(s.get("SegmentLabel", "")) for s in seg.SegmentSequence}
    number = _choose(path, label, segments, "segment")
    frames = np.asarray(dataset.pixel_array)
    frames = frames.reshape((-1, *frames.shape[-2:]))
    if str(dataset.get("SegmentationType", "BINARY")) == "FRACTIONAL":
        frames = frames >= 0.5 * float(dataset.get("MaximumFractionalValue", 255))
    shared = dataset.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in dataset else None
    out = np.zeros(sitk.GetArrayViewFromImage(reference).shape, dtype=bool)
    for i, group in enumerate(dataset.PerFrameFunctionalGroupsSequence):
        if _segment_of(group, shared) != number or not frames[i].any():
            continue
        orientation = _attribute(group, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = _attribute(group, shared, "PixelMeasuresSequence", "PixelSpacing")
        position = _attribute(group, shared, "PlanePositionSequence", "ImagePositionPatient")
        _check_in_plane(path, reference, orientation, spacing)
        _paste(path, out, frames[i] > 0, _grid_index(reference, position))
    return out


def _segment_of(group, shared) -> int:
    for source in (group, shared):
        if source is not None and "SegmentIdentificationSequence" in source:
            return int(source.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
    return 1  # one segment only: the standard lets the identification be omitted


def _attribute(group, shared, sequence: str, name: str):
    for source in (group, shared):
        if source is not None and sequence in source and name in source[sequence].value[0]:
            return [float(v) for v in source[sequence].value[0][name].value]
    raise UserInputError(f"a DICOM SEG frame has no {name}; it cannot be placed on the CT")


def _check_in_plane(path: Path, reference: sitk.Image, orientation, spacing) -> None:
    direction = np.asarray(reference.GetDirection()).reshape(3, 3)
    expected = np.concatenate([direction[:, 0], direction[:, 1]])
    if not np.allclose(orientation, expected, atol=1e-3) or not np.allclose(
            [spacing[1], spacing[0]], reference.GetSpacing()[:2], rtol=1e-3):
        raise UserInputError(f"{path}: the segmentation's frames do not share the CT's in-plane grid (orientation "
                             f"{np.round(orientation, 3).tolist()}, spacing {spacing}); export the SEG from this CT "
                             "series")


def _paste(path: Path, out: np.ndarray, frame: np.ndarray, index: np.ndarray) -> None:
    rounded = np.round(index)
    if np.abs(index - rounded).max() > _TOLERANCE_VOXELS:
        raise UserInputError(f"{path}: a segmentation frame lies between the CT's voxels (index {np.round(index, 2)}"
                             "); export the SEG from this CT series")
    i0, j0, k = (int(v) for v in rounded)
    if not 0 <= k < out.shape[0]:
        raise UserInputError(f"{path}: a segmentation frame lies outside the CT volume (slice {k}); is it the "
                             "segmentation of this series?")
    rows, cols = frame.shape
    top, left = max(j0, 0), max(i0, 0)
    bottom, right = min(j0 + rows, out.shape[1]), min(i0 + cols, out.shape[2])
    kept = frame[top - j0:bottom - j0, left - i0:right - i0]
    outside = int(frame.sum()) - int(kept.sum())
    if outside:
        raise UserInputError(f"{path}: {outside} segmented pixel(s) of slice {k} lie outside the CT's field of view; "
                             "the outline would be cut at the image's edge: is it the segmentation of this series?")
    out[k, top:bottom, left:right] |= kept


def _rtstruct_on_grid(path: Path, dataset, label: int | None, reference: sitk.Image) -> np.ndarray:
    from matplotlib.path import Path as Polygon

    rois = {int(r.ROINumber): str(r.get("ROIName", "")) for r in dataset.get("StructureSetROISequence", [])}
    number = _choose(path, label, rois, "ROI")
    contours = next((c for c in dataset.get("ROIContourSequence", []) if int(c.ReferencedROINumber) == number), None)
    out = np.zeros(sitk.GetArrayViewFromImage(reference).shape, dtype=bool)
    if contours is None or "ContourSequence" not in contours:
        raise UserInputError(f"{path}: ROI {number} ({rois[number]}) has no contour")
    nz, ny, nx = out.shape
    closed = [c for c in contours.ContourSequence
              if str(c.get("ContourGeometricType", "CLOSED_PLANAR")) == "CLOSED_PLANAR"]
    if not closed:
        raise UserInputError(f"{path}: ROI {number} ({rois[number]}) has no closed planar contour (an outline); "
                             "points and open curves cannot be filled")
    placed = [np.array([_grid_index(reference, p) for p in
                        np.asarray([float(v) for v in c.ContourData]).reshape(-1, 3)]) for c in closed]
    _check_contours_inside(path, number, placed, (nz, ny, nx), reference)
    for index in placed:
        k = int(np.round(index[:, 2].mean()))
        if np.abs(index[:, 2] - k).max() > 0.5:
            raise UserInputError(f"{path}: a contour of ROI {number} does not lie in one slice of the CT; is it the "
                                 "structure set of this series?")
        polygon = Polygon(index[:, :2])
        x0, y0 = np.floor(index[:, :2].min(axis=0)).astype(int)
        x1, y1 = np.ceil(index[:, :2].max(axis=0)).astype(int)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, nx - 1), min(y1, ny - 1)
        if x1 < x0 or y1 < y0:
            continue
        xs, ys = np.meshgrid(np.arange(x0, x1 + 1), np.arange(y0, y1 + 1))
        inside = polygon.contains_points(np.column_stack([xs.ravel(), ys.ravel()])).reshape(xs.shape)
        out[k, y0:y1 + 1, x0:x1 + 1] ^= inside
    if not out.any():
        raise UserInputError(f"{path}: the contours of ROI {number} ({rois[number]}) enclose no voxel centre of the "
                             "CT (each is smaller than a voxel); outline the lesion on this CT")
    return out


def _check_contours_inside(path: Path, number: int, placed: list[np.ndarray], shape: tuple[int, int, int],
                           reference: sitk.Image) -> None:
    """Refuse contours beyond the CT's field of view, all (drawn on another scan) or some (the outline would be
    cut at the edge), saying how far beyond."""
    points = np.concatenate(placed)
    upper = np.array([shape[2], shape[1], shape[0]], dtype=float) - 1 + _EDGE_VOXELS
    beyond = np.maximum(-_EDGE_VOXELS - points, 0) + np.maximum(points - upper, 0)  # voxels past the edge per axis
    outside = (beyond > 0).any(axis=1)
    if not outside.any():
        return
    distance_mm = float((beyond * np.asarray(reference.GetSpacing())).max())
    if outside.all():
        raise UserInputError(f"{path}: every contour point of ROI {number} lies outside the CT (up to "
                             f"{distance_mm:.0f} mm beyond its edge): the structure set was not drawn on this CT; give "
                             "the CT it was drawn on, or the structure set drawn on this CT")
    raise UserInputError(f"{path}: {int(outside.sum())} of {len(points)} contour points of ROI {number} lie outside "
                         f"the CT's field of view (up to {distance_mm:.1f} mm beyond its edge): the outline would be cut "
                         "at the image's edge; check that it was drawn on this CT, or give a CT that covers the lesion")
