"""The clinical table contract (one row per lesion) as a pandera model.

Units are part of the column names and of each field's metadata; the data dictionary and
the JSON Schema export are generated from this one model (see :mod:`clinical_schema.export`).
Missing values are NaN (an empty cell), never 0: every laboratory value must be > 0.
"""

from __future__ import annotations

from typing import Optional

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

SCHEMA_VERSION = "1.3"  # 1.1: mask_source; 1.2: mask_path may be empty (lesions to outline); 1.3: a second reader's mask (mask_path_b, mask_label_b)

LESION_TYPES = (
    "adenoma",
    "pheochromocytoma",
    "myelolipoma",
    "cyst",
    "metastasis",
    "adrenocortical_carcinoma",
    "other",
)
MALIGNANT_LESION_TYPES = ("metastasis", "adrenocortical_carcinoma")
PHASES = ("unenhanced", "arterial", "venous", "delayed")
SEXES = ("F", "M")
SIDES = ("left", "right")
MASK_SOURCES = ("manual", "auto")  # drawn by a reader, or by `fusion-model segment predict`


def _meta(group: str, unit: str | None = None, **extra: object) -> dict:
    return {"group": group, "unit": unit, **extra}


class ClinicalTable(pa.DataFrameModel):
    """One row per lesion. Optional columns may be left out of the file entirely."""

    # identifiers
    patient_id: Series[str] = pa.Field(
        str_length={"min_value": 1}, description="Pseudonymised patient identifier; several lesions may share one.",
        metadata=_meta("identifiers"),
    )
    lesion_id: Series[str] = pa.Field(
        unique=True, str_length={"min_value": 1}, description="Unique lesion identifier.",
        metadata=_meta("identifiers"),
    )
    centre: Series[str] = pa.Field(
        str_length={"min_value": 1}, description="Centre (hospital or scanner site) the lesion was imaged at.",
        metadata=_meta("identifiers"),
    )
    split: Optional[Series[str]] = pa.Field(
        nullable=True, description="Optional user-given split (e.g. train / test); a patient must stay in one split.",
        metadata=_meta("identifiers"),
    )
    # outcome
    label: Optional[Series[pd.Int64Dtype]] = pa.Field(
        isin=[0, 1], nullable=True,
        description="Histology or follow-up proven outcome: 0 benign, 1 malignant. Absent in prediction cohorts.",
        metadata=_meta("outcome", coerced_from="0/1, benign/malignant"),
    )
    lesion_type: Optional[Series[str]] = pa.Field(
        isin=list(LESION_TYPES), nullable=True, description="Final diagnosis, if known.",
        metadata=_meta("outcome", coerced_from="case and spaces ignored; ACC, pheo, mets accepted"),
    )
    # radiological
    side: Optional[Series[str]] = pa.Field(
        isin=list(SIDES), nullable=True, description="Side of the lesion.",
        metadata=_meta("radiological", coerced_from="L/R"),
    )
    size_mm: Optional[Series[float]] = pa.Field(
        gt=0, le=300, nullable=True,
        description="Maximal axial diameter. Computed from the mask when empty.",
        metadata=_meta("radiological", "mm"),
    )
    unenhanced_hu: Optional[Series[float]] = pa.Field(
        ge=-200, le=200, nullable=True,
        description="Mean attenuation of the lesion on unenhanced CT. Computed from the image when empty.",
        metadata=_meta("radiological", "HU"),
    )
    # clinical
    age_years: Optional[Series[float]] = pa.Field(
        ge=0, le=120, nullable=True, description="Age at imaging.", metadata=_meta("clinical", "years"),
    )
    sex: Optional[Series[str]] = pa.Field(
        isin=list(SEXES), nullable=True, description="Sex: F or M.",
        metadata=_meta("clinical", coerced_from="female/male, w/f/m"),
    )
    history_extra_adrenal_malignancy: Optional[Series[pd.BooleanDtype]] = pa.Field(
        nullable=True, description="Known history of an extra-adrenal malignancy.",
        metadata=_meta("clinical", coerced_from="yes/no, true/false, 1/0"),
    )
    hypertension: Optional[Series[pd.BooleanDtype]] = pa.Field(
        nullable=True, description="Arterial hypertension.",
        metadata=_meta("clinical", coerced_from="yes/no, true/false, 1/0"),
    )
    bilateral: Optional[Series[pd.BooleanDtype]] = pa.Field(
        nullable=True, description="Adrenal lesions on both sides.",
        metadata=_meta("clinical", coerced_from="yes/no, true/false, 1/0"),
    )
    # laboratory
    cortisol_post_dst_ug_dl: Optional[Series[float]] = pa.Field(
        gt=0, le=100, nullable=True,
        description="Serum cortisol after 1 mg overnight dexamethasone (<= 1.8 excludes cortisol excess; "
        "1 ug/dL = 27.6 nmol/L).",
        metadata=_meta("laboratory", "ug/dL"),
    )
    plasma_metanephrines_xuln: Optional[Series[float]] = pa.Field(
        gt=0, le=500, nullable=True,
        description="Plasma free metanephrines as a multiple of the laboratory's upper limit of normal.",
        metadata=_meta("laboratory", "x ULN"),
    )
    dhea_s_umol_l: Optional[Series[float]] = pa.Field(
        gt=0, le=100, nullable=True, description="Serum DHEA-S.", metadata=_meta("laboratory", "umol/L"),
    )
    aldosterone_renin_ratio: Optional[Series[float]] = pa.Field(
        gt=0, le=5000, nullable=True,
        description="Aldosterone/renin ratio, aldosterone in ng/dL over plasma renin activity in ng/mL/h.",
        metadata=_meta("laboratory", "(ng/dL)/(ng/mL/h)"),
    )
    potassium_mmol_l: Optional[Series[float]] = pa.Field(
        ge=1.5, le=9.0, nullable=True, description="Serum potassium.", metadata=_meta("laboratory", "mmol/L"),
    )
    # files (paths relative to the cohort directory)
    unenhanced_path: Optional[Series[str]] = pa.Field(
        nullable=True, description="Unenhanced CT volume (NIfTI, NRRD, MHA or a DICOM series folder).",
        metadata=_meta("files"),
    )
    arterial_path: Optional[Series[str]] = pa.Field(
        nullable=True, description="Arterial-phase CT volume.", metadata=_meta("files"),
    )
    venous_path: Optional[Series[str]] = pa.Field(
        nullable=True, description="Portal-venous-phase CT volume.", metadata=_meta("files"),
    )
    delayed_path: Optional[Series[str]] = pa.Field(
        nullable=True, description="Delayed-phase CT volume (for washout).", metadata=_meta("files"),
    )
    mask_path: Series[str] = pa.Field(
        str_length={"min_value": 1}, nullable=True,
        description="Lesion segmentation: a label image on the grid of the CT phases, or a DICOM SEG or RTSTRUCT "
                    "file drawn on the first CT phase (put on its grid when read). Empty for a lesion not outlined "
                    "yet: 'fusion-model segment predict' outlines it; training and evaluation need it.",
        metadata=_meta("files"),
    )
    mask_source: Optional[Series[str]] = pa.Field(
        isin=list(MASK_SOURCES), nullable=True,
        description="Who outlined the lesion: manual (a reader) or auto (a segmentation model, e.g. fusion-model "
                    "segment predict); empty means manual. Reports state it.",
        metadata=_meta("files", coerced_from="case ignored; automatic, model, human, reader accepted"),
    )
    mask_label: Optional[Series[pd.Int64Dtype]] = pa.Field(
        ge=1, nullable=True,
        description="Label value of this lesion in a multi-label mask (the segment number of a DICOM SEG, the ROI "
                    "number of an RTSTRUCT); empty means every non-zero voxel, or the only segment / ROI.",
        metadata=_meta("files"),
    )

    mask_path_b: Optional[Series[str]] = pa.Field(
        str_length={"min_value": 1}, nullable=True,
        description="A second reader's segmentation of the same lesion (same kinds of file as mask_path, on the "
                    "same grid), for 'fusion-model agreement'; empty where only one reader outlined the lesion. "
                    "It may be the mask 'fusion-model segment predict' wrote (automatic against manual).",
        metadata=_meta("files"),
    )
    mask_label_b: Optional[Series[pd.Int64Dtype]] = pa.Field(
        ge=1, nullable=True,
        description="Label value of this lesion in mask_path_b, as mask_label is for mask_path.",
        metadata=_meta("files"),
    )

    class Config:
        """pandera settings: coerce types, refuse undeclared columns."""

        strict = True
        coerce = True
        ordered = False


PATH_COLUMNS = {phase: f"{phase}_path" for phase in PHASES}

BOOLEAN_COLUMNS = ("history_extra_adrenal_malignancy", "hypertension", "bilateral")
LAB_COLUMNS = (
    "cortisol_post_dst_ug_dl",
    "plasma_metanephrines_xuln",
    "dhea_s_umol_l",
    "aldosterone_renin_ratio",
    "potassium_mmol_l",
)
RADIOLOGICAL_COLUMNS = ("size_mm", "unenhanced_hu")
CLINICAL_COLUMNS = ("age_years", "sex", "history_extra_adrenal_malignancy", "hypertension", "bilateral")
