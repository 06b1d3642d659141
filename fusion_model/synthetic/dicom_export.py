"""`fusion-model synth --format dicom`: a synthetic cohort written as a hospital's PACS export would be.

The cohort is drawn exactly as :mod:`fusion_model.synthetic.generate` draws it (same seed, same lesions, same
voxels); this module then writes what a radiology group receives from its PACS instead of a cohort directory:

- per patient a main study and, for some, an older prior study; identified (names, patient ids, birth dates,
  accession numbers, study dates) as real exports are;
- per phase a thin soft-tissue reconstruction (the synthetic volume itself, to the voxel), a reconstruction at
  twice the slice thickness, and for the venous phase a sharp-kernel one; a localizer, a dose report (SR), a
  coronal reformat, bolus-tracking images, sometimes a secondary capture and a presentation state, and a DICOM
  SEG of the lesions (drawn on the venous phase) for every outlined patient;
- the mess of real exports: series descriptions in English, French, German, Spanish and Chinese pinyin by
  centre, ``wrong_description_fraction`` of phase series whose description names another phase, contrast and
  timing tags present at one centre, partly at another and absent at the third, unsigned and signed pixel
  storage with their rescale intercepts, shuffled file names in nested folders (named after the patient at one
  centre), duplicated files and missing slices.

Beside the ``dicom/`` tree, ``hospital_table.csv`` is the clinical table a hospital would keep (keyed on
AccessionNumber: labels, lesion types, sides, measurements, age and sex as the generator drew them per lesion,
labs), ``truth_series.csv`` says for every series
what it is and what an import should decide, ``identifiers.csv`` lists every identifying value written (for
tests that check none reaches an import's outputs), and ``cohort/`` is the same cohort as ``fusion-model synth``
writes it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from fusion_model.fileio import atomic_directory, atomic_write_text
from fusion_model.progress import map_tracked

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
UID_ROOT = "1.2.826.0.1.3680043.10.1146."

DESCRIPTIONS = {  # centre -> phase -> what technologists type there
    "centre_a": {"unenhanced": ["ABD W/O CONTRAST", "NON CONTRAST ABDOMEN", "Unenhanced"],
                 "arterial": ["ARTERIAL PHASE", "Abd Arterial", "LATE ARTERIAL"],
                 "venous": ["PORTAL VENOUS", "Abd PV", "Venous phase"],
                 "delayed": ["DELAYED 10 MIN", "Delayed", "Adrenal washout 15 min"]},
    "centre_b": {"unenhanced": ["Abdomen sans injection", "Abdomen NATIV", "Leeraufnahme"],
                 "arterial": ["Phase arterielle", "Abdomen arteriell", "Temps artériel"],
                 "venous": ["Temps portal", "Phase veineuse portale", "Abdomen portalvenös"],
                 "delayed": ["Temps tardif", "Spätphase", "Phase tardive 10 min"]},
    "centre_c": {"unenhanced": ["Abdomen simple", "Fase basal", "pingsao"],
                 "arterial": ["Fase arterial", "dongmaiqi", "Arterial"],
                 "venous": ["Fase portal", "menmaiqi", "Fase venosa"],
                 "delayed": ["Fase tardía", "yanchiqi", "Fase retardada"]},
}
KERNELS = {"centre_a": ("Br40", "Br64"), "centre_b": ("STANDARD", "BONE"), "centre_c": ("FC18", "FC52")}
DELAY_S = {"unenhanced": -120.0, "arterial": 35.0, "venous": 70.0, "delayed": 600.0}
SURNAMES = ("Martin", "Dubois", "Schneider", "Garcia", "Zhang", "Rossi", "Novak", "Fischer", "Lopez", "Wang",
            "Bernard", "Petit", "Weber", "Moreau", "Li", "Hernandez", "Meyer", "Nowak", "Kowalski", "Chen")
GIVEN = ("Marie", "Jean", "Anna", "Luca", "Sofia", "Paul", "Wei", "Elena", "Hans", "Carmen", "Yan", "Claire")


def _uid(*parts) -> str:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()
    return UID_ROOT + str(int(digest[:24], 16))


def _identity(rng: np.random.Generator, age_years: int, sex: str) -> dict:
    study_date = dt.date(2019, 1, 1) + dt.timedelta(days=int(rng.integers(0, 5 * 365)))
    birth = study_date - dt.timedelta(days=int(age_years * 365.25 + rng.integers(0, 300)))
    return {
        "PatientName": f"{SURNAMES[rng.integers(len(SURNAMES))]}^{GIVEN[rng.integers(len(GIVEN))]}"
                       f"^{chr(65 + int(rng.integers(26)))}{int(rng.integers(100, 999))}",
        "PatientID": f"{int(rng.integers(10**6, 10**7))}{int(rng.integers(10, 99))}",
        "PatientBirthDate": birth.strftime("%Y%m%d"), "PatientSex": sex,
        "AccessionNumber": f"ACC{int(rng.integers(10**7, 10**8))}",
        "StudyDate": study_date,
    }


class _Writer:
    """Writes one patient's DICOM files into the export tree with the folder layout of its centre."""

    def __init__(self, root: Path, centre: str, identity: dict, rng: np.random.Generator):
        self.root, self.centre, self.identity, self.rng = root, centre, identity, rng
        self.files: list[Path] = []

    def folder(self, study_uid: str, series_uid: str) -> Path:
        token = lambda *p: hashlib.sha1("|".join(p).encode()).hexdigest()[:8].upper()  # noqa: E731
        if self.centre == "centre_a":  # DICOMDIR-like: patient / study / series folders with opaque names
            return self.root / token(self.identity["PatientID"]) / token(study_uid) / token(series_uid)
        if self.centre == "centre_b":  # one folder per patient named after them, every series mixed inside
            return self.root / self.identity["PatientName"].split("^")[0].upper() / token(study_uid)
        return self.root / "EXPORT" / token(self.identity["PatientID"], study_uid)  # flat per study

    def write(self, ds, study_uid: str, series_uid: str) -> Path:
        import pydicom

        folder = self.folder(study_uid, series_uid)
        folder.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha1(ds.SOPInstanceUID.encode()).hexdigest()[:12].upper()
        path = folder / (f"IM{name}" if self.centre != "centre_c" else f"{name.lower()}.dcm")
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        self.files.append(path)
        return path


def _base_dataset(sop_class: str, sop_uid: str, modality: str, identity: dict, study: dict, series: dict):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, sop_uid, modality
    ds.PatientName, ds.PatientID = identity["PatientName"], identity["PatientID"]
    ds.PatientBirthDate, ds.PatientSex = identity["PatientBirthDate"], identity["PatientSex"]
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study["uid"], study["date"].strftime("%Y%m%d"), "101500"
    ds.AccessionNumber, ds.StudyDescription, ds.StudyID = study["accession"], "CT ABDOMEN", "1"
    ds.ReferringPhysicianName = "Referrer^Doctor"
    ds.InstitutionName = study["institution"]
    ds.Manufacturer = "fusion-model synth"
    ds.SeriesInstanceUID, ds.SeriesNumber = series["uid"], series["number"]
    ds.SeriesDescription = series.get("description", "")
    ds.SeriesDate, ds.ContentDate = ds.StudyDate, ds.StudyDate
    return ds


def _ds(value: float) -> str:
    """A decimal string as precise as DICOM's 16 characters allow (scanners write 6-10 digits; the synthetic
    volumes' float32 geometry survives to the last bit)."""
    for digits in range(13, 5, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.6g}"


def _clock(seconds: float) -> str:
    seconds = max(0.0, seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):02d}{int(m):02d}{s:09.6f}"


def _ct_slices(writer: _Writer, volume: np.ndarray, origin, spacing, study: dict, series: dict,
               skip: set[int] = frozenset(), duplicate: int | None = None) -> None:
    """One CT series of axial slices (z, y, x int16 HU), stored as the centre stores pixels."""
    signed = writer.centre == "centre_b"
    intercept = 0 if signed else -1024
    for k in range(volume.shape[0]):
        if k in skip:
            continue
        sop = _uid(series["uid"], k)
        ds = _base_dataset(CT_STORAGE, sop, "CT", writer.identity, study, series)
        ds.ImageType = series["image_type"]
        ds.FrameOfReferenceUID = study["frame"]
        ds.ImagePositionPatient = [_ds(v) for v in (origin[0], origin[1], origin[2] + k * spacing[2])]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
        ds.SliceThickness = f"{series['thickness']:.2f}"
        ds.ConvolutionKernel = series["kernel"]
        ds.InstanceNumber = k + 1
        ds.AcquisitionNumber = series.get("acquisition_number", 1)
        if series.get("acquisition_time") is not None:
            ds.AcquisitionTime = _clock(series["acquisition_time"] + k * 0.05)
        ds.SeriesTime = _clock(series.get("acquisition_time") or 37000.0)
        for tag, value in series.get("contrast", {}).items():
            setattr(ds, tag, value)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16 if signed else 12, 15 if signed else 11
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = intercept, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        stored = volume[k].astype(np.int32) - intercept
        ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
        path = writer.write(ds, study["uid"], series["uid"])
        if duplicate == k:  # the export tool wrote this image twice, under another name
            shutil.copyfile(path, path.with_name(path.name + "_1"))
            writer.files.append(path.with_name(path.name + "_1"))


def _plain_image(writer: _Writer, pixels: np.ndarray, study: dict, series: dict, sop_class: str, modality: str,
                 orientation, position, spacing, instance: int = 1) -> None:
    ds = _base_dataset(sop_class, _uid(series["uid"], instance), modality, writer.identity, study, series)
    ds.ImageType = series["image_type"]
    if orientation is not None:
        ds.FrameOfReferenceUID = study["frame"]
        ds.ImageOrientationPatient, ds.ImagePositionPatient = list(orientation), [f"{v:.4f}" for v in position]
        ds.PixelSpacing = [f"{spacing[0]:.4f}", f"{spacing[1]:.4f}"]
        ds.SliceThickness = f"{spacing[1]:.2f}"
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.InstanceNumber = instance
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.clip(pixels + 1024, 0, 4095).astype(np.uint16).tobytes()
    writer.write(ds, study["uid"], series["uid"])


def _dose_report(writer: _Writer, study: dict, series: dict) -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = _base_dataset(DOSE_SR, _uid(series["uid"], 1), "SR", writer.identity, study, series)
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "113701", "DCM", "X-Ray Radiation Dose Report"
    ds.ValueType, ds.ContinuityOfContent, ds.ConceptNameCodeSequence = "CONTAINER", "SEPARATE", Sequence([concept])
    ds.CompletionFlag, ds.VerificationFlag, ds.InstanceNumber = "COMPLETE", "UNVERIFIED", 1
    writer.write(ds, study["uid"], series["uid"])


def _presentation_state(writer: _Writer, study: dict, series: dict) -> None:
    ds = _base_dataset(GSPS, _uid(series["uid"], 1), "PR", writer.identity, study, series)
    ds.ContentLabel, ds.InstanceNumber = "ANNOTATION", 1
    writer.write(ds, study["uid"], series["uid"])


def _seg(writer: _Writer, ct_files: list[Path], mask: np.ndarray, study: dict, series: dict) -> None:
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    sources = sorted((pydicom.dcmread(p) for p in ct_files), key=lambda d: float(d.ImagePositionPatient[2]))
    labels = [int(v) for v in np.unique(mask) if v]
    descriptions = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=f"Lesion {n}",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for n in range(1, len(labels) + 1)]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=np.stack([mask == v for v in labels], axis=-1),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=series["uid"], series_number=series["number"], sop_instance_uid=_uid(series["uid"], 1),
        instance_number=1, manufacturer="fusion-model synth", manufacturer_model_name="reader workstation",
        software_versions="1", device_serial_number="1", series_description=series["description"])
    writer.write(seg, study["uid"], series["uid"])


def _thick(volume: np.ndarray) -> np.ndarray:
    """Slices twice as thick: the mean of each pair of slices."""
    n = volume.shape[0] // 2 * 2
    return np.rint(volume[:n].reshape(n // 2, 2, *volume.shape[1:]).mean(axis=1)).astype(np.int16)


def _sharp(volume: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A sharp (bone) kernel: edges enhanced, noise amplified."""
    smooth = ndimage.gaussian_filter(volume.astype(np.float32), (0, 1.0, 1.0))
    sharp = volume + 1.5 * (volume - smooth) + rng.normal(0, 25, volume.shape)
    return np.clip(np.rint(sharp), -1024, 3071).astype(np.int16)


def export_patient(args: tuple) -> tuple[list[dict], list[dict], dict]:
    """Write one patient's studies; returns (series truth rows, hospital table rows, identifiers)."""
    import SimpleITK as sitk

    cohort, out, index, rows, seed, wrong_fraction = args
    rng = np.random.default_rng([seed, index, 31])
    first = rows[0]
    centre = first["centre"]
    identity = _identity(rng, int(first["age_years"]), first["sex"])
    institution = centre
    writer = _Writer(out, centre, identity, rng)
    phases = [p for p in ("unenhanced", "arterial", "venous", "delayed") if isinstance(first.get(f"{p}_path"), str)]
    volumes = {p: sitk.ReadImage(str(cohort / first[f"{p}_path"])) for p in phases}
    reference = volumes[phases[0]]
    origin, spacing = reference.GetOrigin(), reference.GetSpacing()
    arrays = {p: sitk.GetArrayFromImage(v).astype(np.int16) for p, v in volumes.items()}
    study = {"uid": _uid(seed, index, "study"), "date": identity["StudyDate"], "accession": identity["AccessionNumber"],
             "institution": institution, "frame": _uid(seed, index, "frame")}
    truth: list[dict] = []
    number = iter(range(1, 1000))

    def series(kind: str, **fields) -> dict:
        entry = {"uid": _uid(seed, index, kind, len(truth)), "number": next(number), **fields}
        truth.append({"patient_index": index, "study_uid": study["uid"] if "study" not in fields else fields["study"],
                      "series_uid": entry["uid"], "series_number": entry["number"], "kind": kind,
                      "description": fields.get("description", ""), "true_phase": fields.get("phase", ""),
                      "slices": fields.get("slices", 0), "pathology": fields.get("pathology", "")})
        return entry

    injection_s = 36000.0 + float(rng.uniform(0, 3600 * 6))
    scout = series("localizer", description="Topogram 0.6 T20f", image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    projection = arrays[phases[0]].mean(axis=1)[::-1]
    _plain_image(writer, projection, study, scout, CT_STORAGE, "CT", (1, 0, 0, 0, 0, -1),
                 (origin[0], 0.0, origin[2] + spacing[2] * (projection.shape[0] - 1)), (spacing[2], spacing[0]))
    if centre == "centre_a":  # bolus tracking: repeated images at one level
        monitor = series("bolus_tracking", description="Monitoring", image_type=["ORIGINAL", "PRIMARY", "AXIAL"])
        mid = arrays[phases[0]].shape[0] // 2
        for k in range(4):
            _plain_image(writer, arrays[phases[-1]][mid], study, monitor, CT_STORAGE, "CT", (1, 0, 0, 0, 1, 0),
                         (origin[0], origin[1], origin[2] + mid * spacing[2]), (spacing[1], spacing[0]), k + 1)
    ct_files_of: dict[str, list[Path]] = {}
    soft, sharp = KERNELS[centre]
    for p in phases:
        names = DESCRIPTIONS[centre]
        wrong = rng.random() < wrong_fraction
        named = p if not wrong else str(rng.choice([q for q in names if q != p]))
        text = str(rng.choice(names[named]))
        contrast = {}
        acquisition = injection_s + DELAY_S[p]
        if centre == "centre_a" and p != "unenhanced":
            contrast = {"ContrastBolusAgent": "Iomeprol 350", "ContrastBolusRoute": "IV",
                        "ContrastBolusVolume": "100", "ContrastBolusStartTime": _clock(injection_s)}
        elif centre == "centre_b":  # this PACS copies the study's contrast agent onto every series
            contrast = {"ContrastBolusAgent": "Iopamidol 370"}
        common = {"phase": p, "kernel": soft, "contrast": contrast, "acquisition_time": acquisition,
                  "acquisition_number": phases.index(p) + 2}
        duplicate = int(rng.integers(arrays[p].shape[0])) if rng.random() < 0.05 else None
        thin = series("thin", description=f"{text} {spacing[2]:.1f} {soft}", slices=arrays[p].shape[0],
                      thickness=spacing[2], image_type=["ORIGINAL", "PRIMARY", "AXIAL"],
                      pathology="duplicated file" if duplicate is not None else "", **common)
        truth[-1]["wrong_description"] = wrong
        start = len(writer.files)
        _ct_slices(writer, arrays[p], origin, spacing, study, thin, duplicate=duplicate)
        ct_files_of[p] = [f for f in writer.files[start:] if not f.name.endswith("_1")]
        thick_volume = _thick(arrays[p])
        missing = {int(rng.integers(1, thick_volume.shape[0] - 1))} if rng.random() < 0.05 else set()
        thick = series("thick", description=f"{text} {2 * spacing[2]:.1f} {soft}", slices=thick_volume.shape[0],
                       thickness=2 * spacing[2], image_type=["ORIGINAL", "PRIMARY", "AXIAL"],
                       pathology="missing slice" if missing else "", **common)
        truth[-1]["wrong_description"] = wrong
        thick_origin = (origin[0], origin[1], origin[2] + spacing[2] / 2)
        _ct_slices(writer, thick_volume, thick_origin, (spacing[0], spacing[1], 2 * spacing[2]), study, thick,
                   skip=missing)
        if p == "venous":
            bone = series("sharp_kernel", description=f"{text} {spacing[2]:.1f} {sharp}", slices=arrays[p].shape[0],
                          thickness=spacing[2], image_type=["ORIGINAL", "PRIMARY", "AXIAL"],
                          **{**common, "kernel": sharp})
            truth[-1]["wrong_description"] = wrong
            _ct_slices(writer, _sharp(arrays[p], rng), origin, spacing, study, bone)
            coronal = series("coronal_reformat", description="COR MPR 3mm", phase=p,
                             image_type=["DERIVED", "SECONDARY", "MPR"])
            step = max(1, int(round(3.0 / spacing[1])))
            for n, j in enumerate(range(0, arrays[p].shape[1], step)):
                _plain_image(writer, arrays[p][::-1, j, :], study, coronal, CT_STORAGE, "CT", (1, 0, 0, 0, 0, -1),
                             (origin[0], origin[1] + j * spacing[1], origin[2] + spacing[2] * (arrays[p].shape[0] - 1)),
                             (spacing[2], spacing[0]), n + 1)
    _dose_report(writer, study, series("dose_report", description="Dose Report"))
    if rng.random() < 0.3:
        capture = series("secondary_capture", description="Screen Save", image_type=["DERIVED", "SECONDARY"])
        _plain_image(writer, arrays[phases[-1]][arrays[phases[-1]].shape[0] // 2, ::4, ::4], study, capture,
                     SECONDARY_CAPTURE, "OT", None, None, None)
    if rng.random() < 0.2:
        _presentation_state(writer, study, series("presentation_state", description="Key annotations"))
    outlined = isinstance(first.get("mask_path"), str)
    if outlined:
        drawn_on = "venous" if "venous" in phases else phases[0]
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort / first["mask_path"])))
        seg = series("seg", description="Adrenal lesion outlines", drawn_on=drawn_on)
        _seg(writer, ct_files_of[drawn_on], mask, study, seg)
    if rng.random() < 0.2:  # an older study: unenhanced only
        prior = {**study, "uid": _uid(seed, index, "prior"), "accession": f"ACC{int(rng.integers(10**7, 10**8))}",
                 "date": study["date"] - dt.timedelta(days=int(rng.integers(200, 900))),
                 "frame": _uid(seed, index, "prior-frame")}
        old = series("prior_study", study=prior["uid"], description=str(rng.choice(DESCRIPTIONS[centre]["unenhanced"])),
                     phase="unenhanced", slices=arrays[phases[0]].shape[0], thickness=spacing[2], kernel=soft,
                     image_type=["ORIGINAL", "PRIMARY", "AXIAL"], contrast={}, acquisition_time=40000.0)
        _ct_slices(writer, arrays[phases[0]], origin, spacing, prior, old)
        identity_prior_accession = prior["accession"]
    else:
        identity_prior_accession = None
    table = []
    for row in rows:
        entry = {"AccessionNumber": identity["AccessionNumber"], "side": row["side"], "label": row["label"],
                 "lesion_type": row["lesion_type"], "size_mm": row["size_mm"], "unenhanced_hu": row["unenhanced_hu"],
                 "age_years": row["age_years"], "sex": row["sex"],
                 "history_extra_adrenal_malignancy": row["history_extra_adrenal_malignancy"],
                 "hypertension": row["hypertension"], "bilateral": row["bilateral"],
                 **{c: row[c] for c in ("cortisol_post_dst_ug_dl", "plasma_metanephrines_xuln", "dhea_s_umol_l",
                                        "aldosterone_renin_ratio", "potassium_mmol_l")},
                 "synth_lesion_id": row["lesion_id"]}
        table.append(entry)
    identifiers = {"PatientName": identity["PatientName"], "PatientID": identity["PatientID"],
                   "PatientBirthDate": identity["PatientBirthDate"], "AccessionNumber": identity["AccessionNumber"],
                   "StudyDate": identity["StudyDate"].strftime("%Y%m%d"), "prior_accession": identity_prior_accession,
                   "patient_index": index, "synth_patient_id": first["patient_id"]}
    return truth, table, identifiers


def write_dicom_export(cohort: Path, out: Path, seed: int, wrong_description_fraction: float = 0.1,
                       workers: int = 0, progress: bool = True, overwrite: bool = False) -> Path:
    """Write ``cohort`` (a synth cohort directory) as a PACS export under ``out`` (atomically); see the module
    docstring for what it holds."""
    cohort = Path(cohort)
    table = pd.read_csv(cohort / "clinical.csv")
    patients = list(dict.fromkeys(table["patient_id"]))
    with atomic_directory(out, overwrite) as staging:
        (staging / "dicom").mkdir()
        tasks = [(cohort, staging / "dicom", i, table[table["patient_id"] == pid].to_dict("records"), seed,
                  wrong_description_fraction) for i, pid in enumerate(patients)]
        workers = workers or min(2, os.cpu_count() or 1)
        results = map_tracked(export_patient, tasks, workers, "writing DICOM export", progress)
        atomic_write_text(staging / "truth_series.csv",
                          pd.DataFrame([r for t, _, _ in results for r in t]).to_csv(index=False))
        atomic_write_text(staging / "hospital_table.csv",
                          pd.DataFrame([r for _, h, _ in results for r in h]).to_csv(index=False))
        atomic_write_text(staging / "identifiers.csv", pd.DataFrame([i for _, _, i in results]).to_csv(index=False))
        shutil.copytree(cohort, staging / "cohort")
    return Path(out)


def expected_decision(truth: dict, min_slices: int) -> str:
    """What an import should decide for a series of the export, from what the generator knows it is."""
    kind = truth["kind"]
    if kind in ("localizer", "dose_report", "coronal_reformat", "secondary_capture", "presentation_state",
                "bolus_tracking"):
        return "set aside"
    if kind == "seg":
        return "mask"
    if kind == "prior_study":
        return "study not imported"
    missing = truth.get("pathology") == "missing slice"
    if int(truth["slices"]) - int(missing) < min_slices:
        return "set aside"
    if missing:
        return "refused"
    return "chosen" if kind == "thin" else "not chosen"


def check_import(export: Path, cohort: Path, mapping_file: Path, min_slices: int = 8) -> dict:
    """Score an import of this module's export against the truth: every series' decision, every kept series'
    phase. Returns the counts and the series that differ."""
    truth = pd.read_csv(Path(export) / "truth_series.csv", dtype={"pathology": str}, keep_default_na=False)
    mapping = pd.read_csv(mapping_file, dtype=str)
    series = pd.read_csv(Path(cohort) / "series.csv", dtype={"study": str}, keep_default_na=False)
    series = series.merge(mapping[["study", "StudyInstanceUID"]], on="study", how="left")
    series["series_number"] = series["series_number"].astype(int)
    joined = truth.merge(series, left_on=["study_uid", "series_number"],
                         right_on=["StudyInstanceUID", "series_number"], how="left", suffixes=("_truth", ""))
    joined["expected"] = [expected_decision(r, min_slices) for r in joined.to_dict("records")]
    wrong_decision = joined[joined["decision"] != joined["expected"]]
    kept = joined[joined["expected"].isin(["chosen", "not chosen", "study not imported"])]
    wrong_phase = kept[kept["phase"] != kept["true_phase"]]
    described_wrong = kept[kept["wrong_description"].astype(str) == "True"]
    return {
        "series": len(truth), "series_found": int(joined["decision"].notna().sum()),
        "decisions_correct": int(len(joined) - len(wrong_decision)),
        "kept_series": len(kept), "phases_correct": int(len(kept) - len(wrong_phase)),
        "wrong_description_series": len(described_wrong),
        "wrong_description_corrected": int((described_wrong["phase"] == described_wrong["true_phase"]).sum()),
        "decision_errors": wrong_decision[["kind", "description_truth", "expected", "decision", "reason"]
                                          ].to_dict("records"),
        "phase_errors": wrong_phase[["kind", "description_truth", "true_phase", "phase", "phase_source",
                                     "aorta_hu", "ivc_hu"]].to_dict("records"),
    }
