"""Tiny cohorts and volumes for tests, written to a temporary directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk


def sphere_mask(shape=(24, 24, 24), centre=(12, 12, 12), radius_vox=5.0, label=1) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    inside = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius_vox ** 2
    return (inside * label).astype(np.uint8)


def to_image(array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def ct_with_lesion(mask: np.ndarray, lesion_hu: float = 30.0, background_hu: float = -100.0) -> np.ndarray:
    return np.where(mask > 0, lesion_hu, background_hu).astype(np.int16)


def write_cohort(
    root: Path,
    n_lesions: int = 3,
    phases=("unenhanced", "venous"),
    spacing=(1.0, 1.0, 2.0),
    rows: list[dict] | None = None,
    spec: dict | None = None,
) -> Path:
    """A small valid cohort: one lesion per patient, CT phases and a binary mask each."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    table = []
    for i in range(n_lesions):
        mask = sphere_mask(radius_vox=4 + i)
        pid = f"P{i + 1}"
        row = {"patient_id": pid, "lesion_id": f"{pid}-L1", "centre": "A", "label": i % 2,
               "size_mm": 10 + i, "unenhanced_hu": 30.0, "age_years": 50 + i, "sex": "F",
               "mask_path": f"masks/{pid}.nii.gz"}
        for k, phase in enumerate(phases):
            sitk.WriteImage(to_image(ct_with_lesion(mask, 30.0 + 40 * k), spacing), str(root / f"images/{pid}_{phase}.nii.gz"))
            row[f"{phase}_path"] = f"images/{pid}_{phase}.nii.gz"
        sitk.WriteImage(to_image(mask, spacing), str(root / row["mask_path"]))
        table.append(row)
    if rows is not None:
        table = rows
    pd.DataFrame(table).to_csv(root / "clinical.csv", index=False)
    (root / "cohort.json").write_text(json.dumps(spec or {"name": "tiny", "phases": list(phases)}))
    return root


def edit_table(root: Path, **changes) -> None:
    """Set cells: ``changes`` maps column -> {row_index: value}."""
    table = pd.read_csv(root / "clinical.csv", dtype=str, keep_default_na=False)
    for column, cells in changes.items():
        if column not in table:
            table[column] = ""
        for index, value in cells.items():
            table.loc[index, column] = value
    table.to_csv(root / "clinical.csv", index=False)


def rt_references(dataset, series_uid: str, frame_uid: str) -> None:
    """Make an RTSTRUCT dataset say it was drawn on a CT series (ReferencedFrameOfReferenceSequence)."""
    import pydicom
    from pydicom.sequence import Sequence

    series, study, frame = pydicom.Dataset(), pydicom.Dataset(), pydicom.Dataset()
    series.SeriesInstanceUID = series_uid
    study.RTReferencedSeriesSequence = Sequence([series])
    frame.FrameOfReferenceUID = frame_uid
    frame.RTReferencedStudySequence = Sequence([study])
    dataset.ReferencedFrameOfReferenceSequence = Sequence([frame])
