"""`fusion-model synth`: write a complete, valid synthetic cohort directory.

Each patient gets one lesion (two, one per side, in ``two_lesion_fraction`` of patients)
whose type, size, attenuation, enhancement, texture and clinical/lab values are drawn from
:mod:`fusion_model.synthetic.profiles`, rendered into a CT-like phantom
(:mod:`fusion_model.synthetic.phantom`) per phase. Centres differ in voxel spacing, noise,
a small HU calibration offset and lab missingness.

With ``second_reader``, a second radiologist's outline of every outlined lesion goes to ``masks_b/``
(``mask_path_b``): the first outline moved by a smooth random field (:func:`second_reader_outline`), a
realistic disagreement for ``fusion-model agreement``.

Every patient's adrenal glands (the phantom's gland limbs, drawn before any lesion) are written as
TotalSegmentator writes them: ``glands/PATIENT/adrenal_gland_right.nii.gz`` and ``adrenal_gland_left.nii.gz``,
so that ``segment train`` learns where the glands are and ``segment --region glands`` can use them.

``patients_without_masks`` more patients are drawn the same way but their rows leave mask_path empty
(lesions for ``fusion-model segment predict`` to outline); their reference masks go to ``truth_masks/``.

Outside clinical.csv, ``truth.csv`` holds each lesion's generator type, latent values and
``oracle_risk``: the exact P(malignant | everything observable about the lesion) under the
generator, where observable means the latent imaging values for the phases written, the
clinical values, and the labs present in clinical.csv (missing labs are missing completely at
random, so they are marginalised out exactly). Its AUC is the best any model can reach.
``oracle_type_<TYPE>`` is the exact posterior P(type | the same observables) over the six named kinds
(adenoma, pheochromocytoma, myelolipoma, cyst, metastasis, adrenocortical carcinoma): the best subtype
classifier's probabilities.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from clinical_schema import LAB_COLUMNS, PATH_COLUMNS
from fusion_model.cohort.spec import TABLE_FILE, CohortSpec, write_cohort_spec
from fusion_model.config import SynthConfig
from fusion_model.features.radiological import max_axial_diameter_mm
from fusion_model.fileio import atomic_directory, atomic_write_text
from fusion_model.imaging.perturb import second_reader_outline
from fusion_model.progress import map_tracked
from fusion_model.synthetic import phantom
from fusion_model.synthetic.profiles import (
    IMAGING_VARIABLES,
    TypeProfile,
    draw_latents,
    draw_type,
    oracle_risk,
    oracle_type_posterior,
)

TRUTH_FILE = "truth.csv"
TRUTH_MASKS = "truth_masks"  # reference masks of the patients written without a mask_path
SECOND_READER_MASKS = "masks_b"  # synth --second-reader: another reader's outlines (mask_path_b)
GLANDS = "glands"  # per patient, TotalSegmentator's layout: glands/PATIENT/adrenal_gland_{right,left}.nii.gz


@dataclass(frozen=True)
class CentreProfile:
    """How a synthetic centre scans: voxel spacing, noise, HU offset, lab missingness."""

    name: str
    inplane_mm: float
    slice_mm: float
    noise_hu: float
    hu_offset: float
    lab_missing_scale: float


CENTRES = (
    CentreProfile("centre_a", 1.0, 2.0, 12.0, 0.0, 1.0),
    CentreProfile("centre_b", 1.25, 3.0, 18.0, 4.0, 1.4),
    CentreProfile("centre_c", 0.9, 2.5, 15.0, -3.0, 0.7),
)
LAB_MISSING = {
    "cortisol_post_dst_ug_dl": 0.15,
    "plasma_metanephrines_xuln": 0.20,
    "dhea_s_umol_l": 0.35,
    "aldosterone_renin_ratio": 0.40,
    "potassium_mmol_l": 0.05,
}
LAB_DECIMALS = {"cortisol_post_dst_ug_dl": 2, "plasma_metanephrines_xuln": 2, "dhea_s_umol_l": 2,
                "aldosterone_renin_ratio": 1, "potassium_mmol_l": 1}
FOV_MM = (250.0, 190.0)
FOV_CENTRE_Y_MM = 10.0
Z_MARGIN_MM = 15.0


def observed_variables(phases: list[str], labs_present: list[str]) -> frozenset[str]:
    """Latent variables a reader of this lesion can see: the oracle conditions on exactly these.

    Enhancement needs the unenhanced phase and the enhanced one; washout needs venous and
    delayed; labs count only where measured.
    """
    imaging = set(IMAGING_VARIABLES) - {"venous_enhancement_hu", "arterial_enhancement_hu", "washout_fraction",
                                        "female"}
    if "unenhanced" not in phases:
        imaging -= {"unenhanced_hu"}
    if "unenhanced" in phases and "venous" in phases:
        imaging.add("venous_enhancement_hu")
    if "unenhanced" in phases and "arterial" in phases:
        imaging.add("arterial_enhancement_hu")
    if "venous" in phases and "delayed" in phases:
        imaging.add("washout_fraction")
    return frozenset(imaging | {"female", "hypertension"} | set(labs_present))


@dataclass
class LesionParameters:
    """A drawn lesion before rendering: its type, latent values, side, semi-axes (mm) and in-plane angle."""

    profile: TypeProfile
    latents: dict
    side: str
    semi_axes: tuple[float, float, float]
    angle: float


def draw_lesion_parameters(rng: np.random.Generator, side: str) -> LesionParameters:
    """A lesion's type (by prevalence), latent values, and an ellipsoid of its size, randomly oriented."""
    profile = draw_type(rng)
    latents = draw_latents(profile, rng)
    a = latents["size_mm"] / 2.0
    semi = (a, a * rng.uniform(0.65, 1.0), a * rng.uniform(0.55, 1.0))
    return LesionParameters(profile, latents, side, semi, float(rng.uniform(0, math.pi)))


def _measured_axial_diameter(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """What a reader measures: the drawn lesion's maximal axial diameter."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(spacing)
    return max_axial_diameter_mm(image)


def synthesize_patient(index: int, config: SynthConfig, out_dir: Path) -> tuple[list[dict], list[dict]]:
    """Draw, render and write one patient; return its clinical rows and truth rows."""
    rng = np.random.default_rng([config.seed, index])
    centre = CENTRES[index % config.centres]
    patient_id = f"P{index + 1:05d}"
    anatomy = phantom.Anatomy.draw(rng)
    first_side = "right" if rng.random() < 0.5 else "left"
    lesions = [draw_lesion_parameters(rng, first_side)]
    if rng.random() < config.two_lesion_fraction:
        lesions.append(draw_lesion_parameters(rng, "left" if first_side == "right" else "right"))

    reach_z = max(l.semi_axes[2] * (1 + 2.5 * l.latents["irregularity"]) for l in lesions) + Z_MARGIN_MM
    spacing = (centre.inplane_mm, centre.inplane_mm, centre.slice_mm)
    shape = (int(math.ceil(2 * reach_z / spacing[2])) + 1,
             int(round(FOV_MM[1] / spacing[1])), int(round(FOV_MM[0] / spacing[0])))
    jitter = rng.uniform(-3, 3, size=3)
    grid = phantom.Grid(
        origin=(-FOV_MM[0] / 2 + jitter[0], FOV_CENTRE_Y_MM - FOV_MM[1] / 2 + jitter[1], -reach_z + jitter[2]),
        spacing=spacing, shape=shape,
    )
    labels = phantom.anatomy_labels(grid, anatomy)
    drawings, mask = [], np.zeros(shape, dtype=np.uint8)
    for k, lesion in enumerate(lesions):
        ax_, ay_ = anatomy.adrenal(lesion.side)
        centre_mm = (ax_ + rng.normal(0, 2), ay_ + 4 + rng.normal(0, 2), rng.normal(0, 3))
        drawing = phantom.draw_lesion(grid, centre_mm, lesion.latents, lesion.semi_axes, lesion.angle,
                                      cyst=lesion.profile.name == "cyst", rng=rng)
        drawings.append(drawing)
        mask[drawing.box][drawing.mask] = k + 1

    outlined = index < config.patients
    second_reader = config.second_reader and outlined
    if second_reader:  # drawn from its own stream: the cohort is the same with or without a second reader
        reader_rng = np.random.default_rng([config.seed, index, 2])
        mask_b = np.zeros(shape, dtype=np.uint8)
        for k, (lesion, drawing) in enumerate(zip(lesions, drawings)):
            full = np.zeros(shape, dtype=bool)
            full[drawing.box] = drawing.mask
            outline = second_reader_outline(full, spacing[::-1], lesion.latents["irregularity"], reader_rng)
            mask_b[outline & (mask_b == 0)] = k + 1

    def write(array: np.ndarray, name: str, folder: str | None = None) -> str:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
        image.SetOrigin(grid.origin)
        folder = folder or ("images" if not name.endswith("mask") else "masks" if outlined else TRUTH_MASKS)
        rel = f"{folder}/{name}.nii.gz"
        sitk.WriteImage(image, str(out_dir / rel), True, 1)
        return rel

    paths = {p: write(phantom.render_phase(labels, drawings, p, grid, centre.noise_hu, centre.hu_offset, rng),
                      f"{patient_id}_{p}") for p in config.phases}
    mask_rel = write(mask, f"{patient_id}_mask")
    (out_dir / GLANDS / patient_id).mkdir(parents=True, exist_ok=True)
    midline = (anatomy.adrenal_right[0] + anatomy.adrenal_left[0]) / 2
    x_mm = grid.axes()[0]
    for side in ("right", "left"):
        gland = (labels == phantom.LABEL["adrenal"]) & ((x_mm < midline) if side == "right" else (x_mm >= midline))
        write(gland.astype(np.uint8), f"adrenal_gland_{side}", f"{GLANDS}/{patient_id}")
    mask_b_rel = write(mask_b, f"{patient_id}_mask", SECOND_READER_MASKS) if second_reader else None

    rows, truths = [], []
    for k, (lesion, drawing) in enumerate(zip(lesions, drawings)):
        lat = lesion.latents
        lesion_id = f"{patient_id}-L{k + 1}"
        labs = {}
        for column in LAB_COLUMNS:
            missing = rng.random() < min(0.95, LAB_MISSING[column] * centre.lab_missing_scale)
            labs[column] = None if missing else round(lat[column], LAB_DECIMALS[column])
        lesion_hu = drawing.hu[0][drawing.mask]
        measured_hu = float(lesion_hu.mean()) + centre.hu_offset + rng.normal(0, 2.0) if lesion_hu.size else None
        row = {
            "patient_id": patient_id, "lesion_id": lesion_id, "centre": centre.name,
            "label": int(lesion.profile.malignant), "lesion_type": lesion.profile.lesion_type, "side": lesion.side,
            "size_mm": round(_measured_axial_diameter(drawing.mask, spacing) * math.exp(rng.normal(0, 0.05)), 1),
            "unenhanced_hu": None if measured_hu is None or "unenhanced" not in config.phases
            else round(measured_hu, 1),
            "age_years": int(round(lat["age_years"])), "sex": "F" if lat["female"] >= 0.5 else "M",
            "history_extra_adrenal_malignancy": "yes" if lat["history_extra_adrenal_malignancy"] >= 0.5 else "no",
            "hypertension": "yes" if lat["hypertension"] >= 0.5 else "no",
            "bilateral": "yes" if len(lesions) > 1 else "no",
            **labs,
            **{PATH_COLUMNS[p]: paths[p] for p in config.phases},
            "mask_path": mask_rel if outlined else None, "mask_label": k + 1 if len(lesions) > 1 else None,
        }
        if config.second_reader:
            row["mask_path_b"] = mask_b_rel
            row["mask_label_b"] = k + 1 if mask_b_rel and len(lesions) > 1 else None
        observed = observed_variables(config.phases, [c for c in LAB_COLUMNS if labs[c] is not None])
        truths.append({
            "lesion_id": lesion_id, "patient_id": patient_id, "centre": centre.name,
            "generator_type": lesion.profile.name, "label": int(lesion.profile.malignant),
            "oracle_risk": oracle_risk(lat, observed), "truth_mask_path": mask_rel,
            **{f"oracle_type_{t}": p for t, p in oracle_type_posterior(lat, observed).items()},
            **{f"latent_{name}": value for name, value in lat.items()},
        })
        rows.append(row)
    return rows, truths


def _patient_task(args: tuple[int, SynthConfig, Path]) -> tuple[list[dict], list[dict]]:
    return synthesize_patient(*args)


def synthesize_cohort(out: Path, config: SynthConfig, overwrite: bool = False, progress: bool = True) -> Path:
    """Write the cohort to ``out`` atomically (built beside it, renamed into place)."""
    with atomic_directory(out, overwrite) as staging:
        (staging / "images").mkdir()
        (staging / "masks").mkdir()
        (staging / GLANDS).mkdir()
        if config.patients_without_masks:
            (staging / TRUTH_MASKS).mkdir()
        if config.second_reader:
            (staging / SECOND_READER_MASKS).mkdir()
        workers = config.workers or min(2, os.cpu_count() or 1)
        tasks = [(i, config, staging) for i in range(config.patients + config.patients_without_masks)]
        results = map_tracked(_patient_task, tasks, workers if config.patients > 1 else 1, "synthesising patients",
                              progress)
        rows = [r for rs, _ in results for r in rs]
        truths = [t for _, ts in results for t in ts]
        table = pd.DataFrame(rows)
        for column in ("mask_label", "mask_label_b"):
            if column in table:
                table[column] = table[column].astype("Int64")
        atomic_write_text(staging / TABLE_FILE, table.to_csv(index=False))
        atomic_write_text(staging / TRUTH_FILE, pd.DataFrame(truths).to_csv(index=False))
        centres = [c.name for c in CENTRES[: config.centres]]
        write_cohort_spec(staging, CohortSpec(
            name=f"synthetic-{config.patients}p-seed{config.seed}"
                 + (f"+{config.patients_without_masks}unoutlined" if config.patients_without_masks else ""),
            description="Synthetic adrenal CT cohort from fusion-model synth; truth.csv holds the generator's "
                        "lesion types, latent values and oracle risk.",
            phases=config.phases, centres=centres, source="fusion-model synth", licence="CC0",
        ))
    return Path(out)
