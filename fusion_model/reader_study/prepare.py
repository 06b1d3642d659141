"""`fusion-model reader-study prepare`: pick the cases, write what readers see and the design, keep the key apart.

Cases default to the part of the cohort the model did not train on (another cohort: all of it; the training
cohort: its held-out centre or split). ``--cases N`` draws N of them stratified by label. Each case gets a random
code; its phases are cropped around the lesion (``crop_mm`` wide, every slice the lesion touches and a margin)
and written as NIfTI with the outline beside them; the model's output for the aided arm (probability, the
lesion-type probabilities, its main factors in plain language) goes in panel.json. Labels, lesion and patient
ids stay in private/, which the reading application never serves.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from clinical_schema import LESION_TYPES
from fusion_model.errors import UserInputError
from fusion_model.fileio import atomic_directory, check_output_dir
from fusion_model.imaging.preprocess import load_lesion_volumes
from fusion_model.progress import track
from fusion_model.report.viewer import contour, nifti_bytes
from fusion_model.reader_study.design import (
    KEY_FILE,
    STUDY_FILE,
    TOKENS_FILE,
    Case,
    Reader,
    Study,
    check_reader_codes,
    make_sessions,
    token_digest,
)

CROP_MM = 100.0


@dataclass
class PreparedStudy:
    """What prepare wrote: the folder, the readers' tokens, the number of cases by label and where they came
    from."""

    out: Path
    tokens: dict[str, str]
    cases: int
    malignant: int
    source: str


def held_out_lesions(session, include_training: bool = False) -> tuple[pd.Series, str]:
    """Boolean per lesion of the cohort table: not seen in training; and a sentence saying which part that is."""
    from fusion_model.pipeline import cohort_fingerprint

    model, cohort = session.model, session.cohort
    table = cohort.table
    trained = model.training_cohort
    if include_training or cohort_fingerprint(cohort) != trained.fingerprint:
        return pd.Series(True, index=table.index), ("every lesion of the cohort (not the model's training cohort)"
                                                    if not include_training else "every lesion (--all-lesions)")
    if trained.test_centre:
        keep = table["centre"].astype(str) == str(trained.test_centre)
        return keep, f"centre {trained.test_centre} of the training cohort, held out of training"
    split = model.config.split
    if split.mode == "column" and "split" in table:
        keep = table["split"].astype(str) != str(split.train_value)
        return keep, f"the lesions outside split {split.train_value!r}, held out of training"
    raise UserInputError(f"{cohort.root}: this is the cohort the model trained on and none of it was held out; "
                         "readers must not read cases the model learnt from. Give another cohort (--cohort), or "
                         "--all-lesions to read them anyway")


def pick_cases(labels: pd.Series, n: int | None, rng: np.random.Generator) -> list:
    """``n`` cases stratified by label (all when None), in the table's order."""
    if n is None or n >= len(labels):
        return list(labels.index)
    positives = labels.index[labels == 1].to_numpy()
    negatives = labels.index[labels == 0].to_numpy()
    n_pos = int(round(n * len(positives) / len(labels)))
    n_pos = min(max(n_pos, 2), len(positives), n - 2)
    n_neg = n - n_pos
    if n_neg > len(negatives) or n_pos < 2 or n_neg < 2:
        raise UserInputError(f"--cases {n}: the held-out part has {len(positives)} malignant and {len(negatives)} "
                             "benign lesions; choose a number that leaves at least two of each")
    chosen = set(rng.choice(positives, n_pos, replace=False)) | set(rng.choice(negatives, n_neg, replace=False))
    return [i for i in labels.index if i in chosen]


def crop_around_lesion(volumes, crop_mm: float) -> tuple[dict[str, sitk.Image], sitk.Image]:
    """The phases and outline in a box ``crop_mm`` wide around the lesion (axially), all slices of the lesion and
    ``crop_mm / 4`` above and below; phases as int16 HU, the outline as its in-plane contour (uint8)."""
    mask = volumes.mask
    array = sitk.GetArrayViewFromImage(mask)
    zz, yy, xx = np.nonzero(array)
    spacing = np.array(mask.GetSpacing())  # x, y, z
    centre = np.array([(xx.min() + xx.max()) / 2, (yy.min() + yy.max()) / 2])
    half_xy = crop_mm / 2 / spacing[:2]
    size = np.array(mask.GetSize())
    lo = np.maximum(np.floor(centre - half_xy).astype(int), 0)
    hi = np.minimum(np.ceil(centre + half_xy).astype(int) + 1, size[:2])
    margin_z = int(np.ceil(crop_mm / 4 / spacing[2]))
    z_lo, z_hi = max(int(zz.min()) - margin_z, 0), min(int(zz.max()) + margin_z + 1, int(size[2]))
    index = [int(lo[0]), int(lo[1]), z_lo]
    extent = [int(hi[0] - lo[0]), int(hi[1] - lo[1]), z_hi - z_lo]
    phases = {name: sitk.Cast(sitk.RegionOfInterest(image, extent, index), sitk.sitkInt16)
              for name, image in volumes.phases.items()}
    region = sitk.RegionOfInterest(mask, extent, index)
    outline = sitk.GetImageFromArray(contour(sitk.GetArrayFromImage(region)))
    outline.CopyInformation(region)
    return phases, outline


def model_panel(context: dict) -> dict:
    """The aided arm's panel from an explain case context: probability, lesion types, main factors."""
    types = context.get("lesion_types")
    return {"probability": context["probability"], "suspicious": bool(context["suspicious"]),
            "threshold": float(context["thresholds"]["youden"]),
            "factors": [f["sentence"] for f in context["factors"]],
            "lesion_types": types["types"] if types else [],
            "type_factors": [f["sentence"] for f in types["factors"]] if types else []}


def prepare_study(model_dir: Path, cohort_dir: Path, out: Path, readers: list[str], cache,
                  design: str = "crossover", cases: int | None = None, seed: int = 0, washout_days: int = 28,
                  answers_locked: bool = True, crop_mm: float = CROP_MM, all_lesions: bool = False,
                  overwrite: bool = False, progress: bool = True) -> PreparedStudy:
    """Write a blinded reader-study folder for the model and cohort (see the module docstring)."""
    from fusion_model.explain.run import CaseExplainer, case_context
    from fusion_model.pipeline import ScoringSession

    readers = check_reader_codes(readers)
    if design not in ("crossover", "sequential"):
        raise UserInputError(f"--design {design!r}: use crossover or sequential")
    if cases is not None and cases < 4:
        raise UserInputError(f"--cases {cases}: a reader study needs at least 4 cases (two of each label)")
    if crop_mm < 20:
        raise UserInputError(f"--crop-mm {crop_mm:g}: too small to show the lesion's surroundings; use >= 20")
    check_output_dir(out, overwrite)
    rng = np.random.default_rng(seed)
    session = ScoringSession.open(model_dir, cohort_dir, require_label=True, progress=progress)
    table = session.cohort.table
    keep, source = held_out_lesions(session, all_lesions)
    labels = table.loc[keep].set_index("lesion_id")["label"].astype(int)
    if labels.nunique() < 2 or labels.value_counts().min() < 2:
        raise UserInputError(f"{cohort_dir}: {source} has {int(labels.sum())} malignant and "
                             f"{int((labels == 0).sum())} benign lesions; a reader study needs at least two of each")
    chosen = pick_cases(labels, cases, rng)
    session.cohort = session.cohort.subset(chosen)
    data, errors = session.read(cache, "show readers", strict=False, progress=progress)
    if errors:
        raise UserInputError(f"{errors[0].lesion_id} (clinical.csv row {errors[0].row}): {errors[0].message}; "
                             f"{len(errors)} chosen lesion(s) could not be read, fix them or leave them out")
    explainer = CaseExplainer(session.model)
    explained = explainer.explain(data, saliency=False)
    model = session.model
    variant = explainer.variant

    codes = [f"case-{c:04d}" for c in rng.choice(10000, len(chosen), replace=False)]
    code_of = dict(zip(data.lesion_ids, codes))
    sessions, groups = make_sessions([code_of[i] for i in data.lesion_ids], data.table["label"].astype(int)
                                     .to_numpy(), readers, design, rng)
    tokens = {r: secrets.token_urlsafe(18) for r in readers}
    lesion_types = list(LESION_TYPES)
    truth_path = Path(cohort_dir) / "truth.csv"
    truth = (pd.read_csv(truth_path, dtype={"lesion_id": str}).set_index("lesion_id")
             if truth_path.is_file() else None)
    phases_order = list(model.training_cohort.phases)
    records = {session.cohort.table.iloc[i]["lesion_id"]: session.cohort.lesion(i)
               for i in range(len(session.cohort.table))}
    key_rows, case_entries = [], []
    with atomic_directory(Path(out), overwrite=overwrite) as staging:
        for i, lesion_id in enumerate(track(list(data.lesion_ids), "case images", enabled=progress)):
            record = records[lesion_id]
            volumes = load_lesion_volumes(record.phase_paths, record.mask_path, record.mask_label,
                                          [p for p in phases_order if p in record.phase_paths] or
                                          list(record.phase_paths), model.config.preprocess.resample_mismatched,
                                          where=record.where, ct_intensities=model.training_cohort.ct_intensities)
            phases, outline = crop_around_lesion(volumes, crop_mm)
            code = code_of[lesion_id]
            folder = staging / "cases" / code
            folder.mkdir(parents=True)
            for name, image in [*phases.items(), ("outline", outline)]:
                (folder / f"{name}.nii.gz").write_bytes(nifti_bytes(image))  # geometry only, no text fields
            row = data.table.loc[lesion_id]
            context = case_context(lesion_id, row, explained.predictions.loc[lesion_id], explained.contributions,
                                   i, model, variant, explained.types)
            panel = model_panel(context)
            (folder / "panel.json").write_text(json.dumps(panel, indent=1), encoding="utf-8")
            case_entries.append(Case(code=code, phases=list(phases)))
            key_rows.append({"case": code, "lesion_id": lesion_id, "patient_id": row["patient_id"],
                             "centre": row.get("centre"), "label": int(row["label"]),
                             "lesion_type": row.get("lesion_type") if pd.notna(row.get("lesion_type")) else "",
                             "model_probability": panel["probability"],
                             "true_risk": float(truth.loc[lesion_id, "oracle_risk"])
                             if truth is not None and lesion_id in truth.index else np.nan})
        case_entries.sort(key=lambda c: c.code)
        study = Study(name=Path(out).name, created_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                      design=design, washout_days=washout_days if design == "crossover" else 0,
                      answers_locked=answers_locked, lesion_types=lesion_types, model_variant=variant,
                      readers=[Reader(code=r, group=groups[r], token_sha256=token_digest(tokens[r])) for r in readers],
                      cases=case_entries, sessions=sessions, seed=seed)
        (staging / STUDY_FILE).write_text(study.model_dump_json(indent=1), encoding="utf-8")
        (staging / "private").mkdir()
        pd.DataFrame(key_rows).sort_values("case").to_csv(staging / KEY_FILE, index=False)
        tokens_table = pd.DataFrame({"reader": readers, "token": [tokens[r] for r in readers]})
        tokens_table.to_csv(staging / TOKENS_FILE, index=False)
        (staging / "private").chmod(0o700)
    return PreparedStudy(Path(out), tokens, len(chosen), int(data.table["label"].sum()), source)
