"""`fusion-model import-medmnist`: a MedMNIST-format 3D npz as a cohort directory.

MedMNIST 3D volumes (e.g. AdrenalMNIST3D) are lesion-centred cubes of a fixed field of view
(64 mm for AdrenalMNIST3D) resized to 28^3 or 64^3 voxels, so one voxel is FOV/N mm. The
npz holds ``{split}_images`` and ``{split}_labels`` for any subset of train / val / test.
AdrenalMNIST3D releases masks only (no CT intensities), so each gland's mask is also its
'unenhanced image' and cohort.json says ``ct_intensities: false``; the shape features
computed from the mask, with the detailed shape profile (thickness in 3D and within each
plane, convexity, extent, slice areas: ``SHAPE_PROFILE_FEATURES``), are written to the table
as declared extra features. MedMNIST gives no patient identifiers: each gland is taken to be its
own patient.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from clinical_schema import ExtraFeature
from fusion_model.cohort.spec import TABLE_FILE, CohortSpec, write_cohort_spec
from fusion_model.errors import UserInputError
from fusion_model.features.radiological import SHAPE_PROFILE_FEATURES, shape_features, shape_profile_features
from fusion_model.fileio import atomic_directory, atomic_write_text
from fusion_model.progress import track

SPLITS = ("train", "val", "test")
SHAPE_EXTRA_FEATURES = (
    ExtraFeature(name="max_diameter_3d_mm", unit="mm", group="radiological", min=0,
                 description="Maximal 3D (Feret) diameter of the mask."),
    ExtraFeature(name="volume_ml", unit="mL", group="radiological", min=0, description="Mask volume."),
    ExtraFeature(name="elongation", group="radiological", min=1,
                 description="Ratio of the two largest principal axes."),
    ExtraFeature(name="flatness", group="radiological", min=1,
                 description="Ratio of the two smallest principal axes."),
    ExtraFeature(name="sphericity", group="radiological", min=0,
                 description="Surface of the equal-volume sphere over the mask's surface (1 = sphere)."),
    *(ExtraFeature(name=name, unit=unit or None, group="radiological", min=0, description=description)
      for name, (unit, description) in SHAPE_PROFILE_FEATURES.items()),
)


def load_medmnist_npz(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (volumes (n, d, h, w), labels (n,))} for the splits the file holds."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: file not found")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise UserInputError(f"{path}: not a readable npz file ({err})") from None
    out = {}
    with data:
        for split in SPLITS:
            images_key, labels_key = f"{split}_images", f"{split}_labels"
            if images_key not in data.files and labels_key not in data.files:
                continue
            if images_key not in data.files or labels_key not in data.files:
                raise UserInputError(f"{path}: has only one of {images_key!r} and {labels_key!r}")
            images, labels = data[images_key], data[labels_key].reshape(-1)
            if images.ndim != 4:
                raise UserInputError(f"{path}: {images_key!r} has shape {images.shape}; "
                                     "a 3D MedMNIST file holds (n, depth, height, width)")
            if len(images) != len(labels):
                raise UserInputError(f"{path}: {len(images)} volumes but {len(labels)} labels in split {split!r}")
            out[split] = (images, labels.astype(int))
    if not out:
        raise UserInputError(f"{path}: holds none of the MedMNIST keys "
                             f"({', '.join(f'{s}_images' for s in SPLITS)}); keys present: {list(data.files)}")
    return out


def import_medmnist(
    npz: Path, out: Path, field_of_view_mm: float = 64.0, name: str | None = None, overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a cohort directory (masks as NIfTI, table with shape features) atomically."""
    splits = load_medmnist_npz(npz)
    with atomic_directory(out, overwrite) as staging:
        (staging / "masks").mkdir()
        rows = []
        items = [(split, i) for split, (images, _) in splits.items() for i in range(len(images))]
        for split, i in track(items, "importing volumes", total=len(items), enabled=progress):
            volume, label = splits[split][0][i], int(splits[split][1][i])
            mask = sitk.GetImageFromArray((volume > 0).astype(np.uint8))
            spacing = field_of_view_mm / volume.shape[0]
            mask.SetSpacing([spacing] * 3)
            mask.SetOrigin([-(field_of_view_mm - spacing) / 2.0] * 3)
            lesion_id = f"{split}-{i:04d}"
            rel = f"masks/{lesion_id}.nii.gz"
            sitk.WriteImage(mask, str(staging / rel), True)
            row = {"patient_id": lesion_id, "lesion_id": lesion_id, "centre": "zhongshan", "split": split,
                   "label": label, "unenhanced_path": rel, "mask_path": rel}
            if np.any(volume):
                features = {**shape_features(mask), **shape_profile_features(mask)}
                row["size_mm"] = round(features["max_axial_diameter_mm"], 2)
                row.update({f.name: round(features[f.name], 4) for f in SHAPE_EXTRA_FEATURES})
            rows.append(row)
        atomic_write_text(staging / TABLE_FILE, pd.DataFrame(rows).to_csv(index=False))
        write_cohort_spec(staging, CohortSpec(
            name=name or Path(npz).stem,
            description=f"Imported from {Path(npz).name} by fusion-model import-medmnist; each volume is a "
                        f"{field_of_view_mm:g} mm lesion-centred cube; masks only (no CT intensities); "
                        "one gland per patient (MedMNIST gives no patient identifiers).",
            label_meaning="1 = adrenal mass, 0 = normal adrenal gland (MedMNIST AdrenalMNIST3D)",
            phases=["unenhanced"], ct_intensities=False, centres=["zhongshan"],
            extra_features=list(SHAPE_EXTRA_FEATURES),
            source="MedMNIST v2 (Yang et al., Scientific Data 10, 41, 2023)", licence="CC BY 4.0",
        ))
    return Path(out)
