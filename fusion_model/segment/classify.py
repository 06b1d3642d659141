"""The lesion-type heads on the segmenter's components, for classification average precision per lesion type.

Every kept component of a scan becomes a lesion of a temporary cohort: the patient's clinical row, its own mask,
``size_mm`` and ``unenhanced_hu`` left empty so that they are measured on the component (as for a lesion found
by the segmenter and never measured by a reader). The risk model (and each of its per-phase models when it was
trained with ``compare_phases``) then gives every component its type probabilities, exactly as ``predict``
would for that mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from clinical_schema import PATH_COLUMNS
from fusion_model.cohort import load_cohort
from fusion_model.cohort.load import Cohort, read_clinical_csv
from fusion_model.cohort.spec import TABLE_FILE, write_cohort_spec
from fusion_model.fileio import link_or_copy
from fusion_model.segment.matching import Component
from fusion_model.segment.scans import ScanRecord

DROPPED = ("mask_path_b", "mask_label_b", "mask_source", "label", "lesion_type", "size_mm", "unenhanced_hu")
ALL_PHASES = "all phases"  # the name of the full model's phase set


def component_id(scan_key: str, label: int) -> str:
    """The temporary cohort's lesion_id of a component."""
    return f"{scan_key}-C{label}"


class ComponentCohort:
    """A temporary cohort of components, written into ``folder`` scan by scan."""

    def __init__(self, cohort: Cohort, folder: Path):
        self.cohort = cohort
        self.folder = Path(folder)
        (self.folder / "masks").mkdir(parents=True, exist_ok=True)
        raw = read_clinical_csv(cohort.root / TABLE_FILE)
        self.raw = raw.set_index(raw["lesion_id"].astype(str))
        self.rows: list[dict] = []
        self.linked: set[str] = set()

    def add_scan(self, scan: ScanRecord, labels: np.ndarray, reference: sitk.Image,
                 components: list[Component]) -> None:
        """Write one scan's component labels and add a row per component."""
        if not components:
            return
        image = sitk.GetImageFromArray(labels.astype(np.uint16))
        image.CopyInformation(reference)
        mask = f"masks/{scan.key}.nii.gz"
        sitk.WriteImage(image, str(self.folder / mask), True)
        base = self.raw.loc[scan.lesions[0].lesion_id].to_dict()
        for column in [PATH_COLUMNS[p] for p in self.cohort.spec.phases if PATH_COLUMNS[p] in base]:
            rel = base[column]
            if isinstance(rel, str) and rel not in self.linked:
                link_or_copy(self.cohort.root / rel, self.folder / rel)
                self.linked.add(rel)
        for c in components:
            row = {k: v for k, v in base.items() if k not in DROPPED}
            row.update(lesion_id=component_id(scan.key, c.label), side=c.side, mask_path=mask, mask_label=c.label)
            self.rows.append(row)

    def type_probabilities(self, model_dir: Path, cache, model=None) -> tuple[dict[str, pd.DataFrame], int]:
        """Per phase set (the full model, then each per-phase model) the primary variant's type probabilities
        of the components (index: component id; columns: type names), and how many components could not be
        read. ``model``: the model at ``model_dir`` when the caller has loaded it already."""
        from fusion_model import pipeline
        from fusion_model.artifact import load_model, load_phase_models

        if not self.rows:
            return {}, 0
        table = pd.DataFrame(self.rows)
        table["mask_label"] = table["mask_label"].astype("Int64")
        table.to_csv(self.folder / TABLE_FILE, index=False)
        write_cohort_spec(self.folder, self.cohort.spec.model_copy(update={"name": "segmenter components"}))
        cohort = load_cohort(self.folder)
        model = model if model is not None else load_model(model_dir)
        models = {ALL_PHASES: model, **load_phase_models(model_dir, manifest=model.manifest_)}
        data, errors, _ = pipeline.lesion_data(cohort, model.config, cache, progress=False)
        out = {}
        for name, fitted in models.items():
            view = data if name == ALL_PHASES else data.with_phases([name])  # as evaluate compares phases
            types = fitted.predict_types(view)
            if types:
                out[name] = types[fitted.primary_variant].rename(columns=lambda c: c.removeprefix("p_type_"))
        return out, len(errors)
