"""What the scoring commands (predict, evaluate, explain) check of what the user typed before they load the network
libraries: an output folder that exists, a model folder that is not a model, a cohort that does not load or lacks
the centre or split asked for. Importing torch and MONAI takes seconds; a typing error is answered in about one.
The loaders check the same again when the work starts; these checks only answer sooner, in the same words."""

from __future__ import annotations

from pathlib import Path

from fusion_model.cohort import load_cohort
from fusion_model.fileio import check_output_dir
from fusion_model.model_manifest import read_manifest


def check_scoring_inputs(model_dir: Path, cohort_dir: Path, out: Path | None = None, overwrite: bool = False,
                         require_label: bool = False, centre: str | None = None, split: str | None = None) -> None:
    """Refuse, as the scoring session would, an existing ``out`` folder, a ``model_dir`` whose manifest is missing,
    modified or of another version (the files it lists are verified when the model loads), and a cohort that does
    not load (with labels when ``require_label``) or has no such centre / split."""
    if out is not None:
        check_output_dir(out, overwrite)
    read_manifest(model_dir, verify_files=False)
    load_cohort(cohort_dir, require_label=require_label).select(centre=centre, split=split)
