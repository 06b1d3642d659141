"""Masks as radiology tools write them: a DICOM SEG (written with highdicom) and an RTSTRUCT (written with
pydicom) on a DICOM CT series the test writes itself, read onto the CT's grid."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk

from fusion_model.cohort import load_cohort, validate_cohort
from fusion_model.config import PreprocessConfig
from fusion_model.errors import UserInputError
from fusion_model.imaging.cache import ImageCache
from fusion_model.imaging.dicom_masks import is_dicom_mask, read_dicom_mask
from fusion_model.imaging.io import read_image, write_dicom_series
from tests.helpers import ct_with_lesion, rt_references, sphere_mask, to_image

SHAPE, CENTRE, RADIUS = (16, 32, 32), (8, 14, 17), 5
SPACING, ORIGIN = (0.8, 0.8, 2.0), (-10.0, 20.0, 5.0)


def _ct_series(folder: Path) -> tuple[Path, np.ndarray]:
    mask = sphere_mask(shape=SHAPE, centre=CENTRE, radius_vox=RADIUS)
    series = write_dicom_series(to_image(ct_with_lesion(mask), spacing=SPACING, origin=ORIGIN), folder)
    return series, mask > 0


def _write_seg(series: Path, masks: list[np.ndarray], path: Path) -> Path:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = sorted((pydicom.dcmread(p) for p in series.glob("*.dcm")), key=lambda d: float(d.ImagePositionPatient[2]))
    descriptions = [hd.seg.SegmentDescription(
        segment_number=k + 1, segment_label=f"lesion {k + 1}",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for k in range(len(masks))]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=np.stack(masks, axis=-1).astype(bool),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="fusion-model tests", manufacturer_model_name="tests", software_versions="0",
        device_serial_number="0")
    seg.save_as(path)
    return path


def _write_rtstruct(path: Path, radius_vox: float = RADIUS, drawn_on: Path | None = None,
                    shift_mm: tuple[float, float] = (0.0, 0.0)) -> Path:
    """One ROI: a 128-gon circle per slice through the sphere (contours in patient coordinates, moved by
    ``shift_mm`` in x and y), referencing the frame of reference and series of the CT ``drawn_on``."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality, ds.SOPClassUID, ds.SOPInstanceUID = "RTSTRUCT", meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    roi = pydicom.Dataset()
    roi.ROINumber, roi.ROIName = 7, "adrenal lesion"
    ds.StructureSetROISequence = Sequence([roi])
    contours = []
    angles = np.linspace(0, 2 * np.pi, 128, endpoint=False)
    for k in range(SHAPE[0]):
        dz = k - CENTRE[0]
        if abs(dz) >= radius_vox:
            continue
        r = np.sqrt(radius_vox ** 2 - dz ** 2)
        x = ORIGIN[0] + SPACING[0] * (CENTRE[2] + r * np.cos(angles)) + shift_mm[0]
        y = ORIGIN[1] + SPACING[1] * (CENTRE[1] + r * np.sin(angles)) + shift_mm[1]
        z = np.full_like(x, ORIGIN[2] + SPACING[2] * k)
        item = pydicom.Dataset()
        item.ContourGeometricType = "CLOSED_PLANAR"
        item.NumberOfContourPoints = len(x)
        item.ContourData = [f"{v:.4f}" for v in np.column_stack([x, y, z]).ravel()]
        contours.append(item)
    roi_contour = pydicom.Dataset()
    roi_contour.ReferencedROINumber = 7
    roi_contour.ContourSequence = Sequence(contours)
    ds.ROIContourSequence = Sequence([roi_contour])
    if drawn_on is not None:
        ct = pydicom.dcmread(next(drawn_on.glob("*.dcm")), stop_before_pixels=True)
        rt_references(ds, ct.SeriesInstanceUID, ct.FrameOfReferenceUID)
    ds.save_as(path, enforce_file_format=True)
    return path


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_seg_segments_land_on_the_ct_voxels_they_were_drawn_on(tmp_path):
    series, lesion = _ct_series(tmp_path / "ct")
    other = sphere_mask(shape=SHAPE, centre=(5, 24, 8), radius_vox=3) > 0
    seg = _write_seg(series, [lesion, other], tmp_path / "seg.dcm")
    assert is_dicom_mask(seg) and not is_dicom_mask(next(series.glob("*.dcm")))
    ct = read_image(series)
    for number, expected in ((1, lesion), (2, other)):
        mask = read_dicom_mask(seg, number, ct)
        assert mask.GetSize() == ct.GetSize() and mask.GetOrigin() == ct.GetOrigin()
        np.testing.assert_array_equal(sitk.GetArrayFromImage(mask) > 0, expected)
    with pytest.raises(UserInputError, match="holds 2 segments .*set mask_label"):
        read_dicom_mask(seg, None, ct)
    with pytest.raises(UserInputError, match="has no segment 3"):
        read_dicom_mask(seg, 3, ct)


def test_rtstruct_contours_are_rasterised_onto_the_ct(tmp_path):
    series, lesion = _ct_series(tmp_path / "ct")
    rtstruct = _write_rtstruct(tmp_path / "rtstruct.dcm")
    ct = read_image(series)
    mask = sitk.GetArrayFromImage(read_dicom_mask(rtstruct, None, ct)) > 0
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    disk = ((z - CENTRE[0]) ** 2 + (y - CENTRE[1]) ** 2 + (x - CENTRE[2]) ** 2) < RADIUS ** 2
    assert _dice(mask, disk) > 0.97 and _dice(mask, lesion) > 0.9
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_dicom_mask(rtstruct, 7, ct)) > 0, mask)
    with pytest.raises(UserInputError, match="has no ROI 2; its ROIs: 7 \\(adrenal lesion\\)"):
        read_dicom_mask(rtstruct, 2, ct)


def test_a_cohort_with_dicom_ct_and_seg_or_rtstruct_masks_validates_and_gives_the_same_crops(tmp_path):
    root = tmp_path / "cohort"
    series, lesion = _ct_series(root / "images/P1_ct")
    (root / "masks").mkdir()
    _write_seg(series, [lesion], root / "masks/P1_seg.dcm")
    _write_rtstruct(root / "masks/P1_rtstruct.dcm")
    sitk.WriteImage(sitk.Cast(read_dicom_mask(root / "masks/P1_seg.dcm", 1, read_image(series)), sitk.sitkUInt8),
                    str(root / "masks/P1.nii.gz"))
    rows = [{"patient_id": f"P{k}", "lesion_id": f"P{k}-L1", "centre": "A", "label": k % 2,
             "unenhanced_path": "images/P1_ct", "mask_path": mask, "mask_label": label}
            for k, (mask, label) in enumerate((("masks/P1.nii.gz", ""), ("masks/P1_seg.dcm", 1),
                                               ("masks/P1_rtstruct.dcm", 7)), start=1)]
    pd.DataFrame(rows).to_csv(root / "clinical.csv", index=False)
    (root / "cohort.json").write_text(json.dumps({"name": "dicom", "phases": ["unenhanced"]}))
    report = validate_cohort(root, progress=False)
    assert report.ok, [p.line() for p in report.errors]
    images = load_cohort(root).images(PreprocessConfig(spacing_mm=1.0, crop_size_mm=24), ImageCache(None),
                                      progress=False)
    assert images.errors == [] and images.crops.shape[0] == 3
    np.testing.assert_array_equal(images.crops[0], images.crops[1])  # SEG == the same mask as NIfTI
    assert _dice(images.crops[0, -1] > 0.5, images.crops[2, -1] > 0.5) > 0.85  # RTSTRUCT: contours, close
    assert images.features.loc["P1-L1", "volume_ml"] == pytest.approx(images.features.loc["P2-L1", "volume_ml"])


def test_a_seg_or_rtstruct_drawn_on_another_ct_is_refused_even_when_the_grids_match(tmp_path):
    """Two CT series of the same geometry (another scan, another patient): the grids match, the UIDs do not."""
    series, lesion = _ct_series(tmp_path / "ct")
    other, _ = _ct_series(tmp_path / "other_ct")
    seg = _write_seg(series, [lesion], tmp_path / "seg.dcm")
    rtstruct = _write_rtstruct(tmp_path / "rtstruct.dcm", drawn_on=series)
    ct = read_image(other)
    for path in (seg, rtstruct):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(read_dicom_mask(path, None, ct, [series])) > 0,
                                      sitk.GetArrayFromImage(read_dicom_mask(path, None, ct)) > 0)
    with pytest.raises(UserInputError, match="the SEG was drawn on series .*which is none of this lesion's CT "
                                             "series \\(other_ct"):
        read_dicom_mask(seg, 1, ct, [other])
    with pytest.raises(UserInputError, match="the RTSTRUCT was drawn on series .*none of this lesion's CT series"):
        read_dicom_mask(rtstruct, 7, ct, [other])
    from pydicom.uid import generate_uid  # a frame of reference alone (no series named) is checked too

    dataset = pydicom.dcmread(rtstruct)
    del dataset.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence
    dataset.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = generate_uid()
    dataset.save_as(tmp_path / "frame.dcm")
    with pytest.raises(UserInputError, match="frame of reference .* is not that of this lesion's CT .*another scan"):
        read_dicom_mask(tmp_path / "frame.dcm", 7, ct, [series])


def test_rtstruct_contours_outside_the_ct_are_refused_with_what_is_wrong(tmp_path):
    series, _ = _ct_series(tmp_path / "ct")
    ct = read_image(series)
    far = _write_rtstruct(tmp_path / "far.dcm", shift_mm=(200.0, 0.0))
    with pytest.raises(UserInputError, match="every contour point of ROI 7 lies outside the CT .*not drawn on this CT"):
        read_dicom_mask(far, 7, ct)
    edge = _write_rtstruct(tmp_path / "edge.dcm", shift_mm=(-12.0, 0.0))  # the circle crosses the left edge
    with pytest.raises(UserInputError, match="of .* contour points of ROI 7 lie outside the CT's field of view "
                                             ".*would be cut"):
        read_dicom_mask(edge, 7, ct)


def test_a_seg_frame_beyond_the_ct_is_refused_not_cut(tmp_path):
    series, lesion = _ct_series(tmp_path / "ct")
    seg = _write_seg(series, [lesion], tmp_path / "seg.dcm")
    ct = read_image(series)
    smaller = ct[15:, :, :]  # the same scan cut at x = 15: part of the lesion (x 12-22) lies outside it
    with pytest.raises(UserInputError, match="segmented pixel\\(s\\) of slice .* lie outside the CT's field of view"):
        read_dicom_mask(seg, 1, smaller)


def test_a_second_readers_seg_on_another_ct_is_refused_naming_the_row_and_lesion(tmp_path):
    from fusion_model.agreement.readings import check_second_mask_grid, read_second_mask
    from fusion_model.records import LesionRecord

    series, lesion = _ct_series(tmp_path / "ct")
    other, _ = _ct_series(tmp_path / "other_ct")
    seg = _write_seg(other, [lesion], tmp_path / "seg_b.dcm")
    record = LesionRecord("P7-L1", "P7", "A", 8, seg, 1, {"unenhanced": series})
    for check in (lambda: check_second_mask_grid(record, series, False),
                  lambda: read_second_mask(record, read_image(series), False)):
        with pytest.raises(UserInputError, match="^lesion P7-L1 \\(clinical.csv row 8\\), second reader's mask: "
                                                 ".*seg_b.dcm: the SEG was drawn on series"):
            check()
