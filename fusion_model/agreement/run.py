"""`fusion-model agreement`: how much do the segmentation, the radiological features and the model's answer
depend on who drew the outline?

Two readers (``mask_path_b`` / ``mask_label_b``, or ``--masks-b DIR`` with the first reader's file names), or,
without a second reader, ``--perturb``: the first outline against itself eroded and dilated by 1 and 2 voxels
and moved by a smooth random field to a set Dice (seeded). For each comparison:

- segmentation: per lesion Dice, 95% Hausdorff distance, surface Dice at 2 mm and volume difference (MONAI's
  metrics, as ``segment evaluate``), summarised with a histogram and the worst lesions' contours;
- features: ICC(2,1) and ICC(3,1) with 95% CIs (pingouin) of every radiological feature, ranked and banded,
  and Bland-Altman agreement of the size and the unenhanced attenuation;
- with a model: each variant's probability with either outline (ICC, mean absolute difference, Bland-Altman),
  the lesions whose class flips at the variant's stored threshold, and each variant's AUC with either outline
  with DeLong's paired test (when the cohort has labels).

Lesions read once (one of the two masks missing) are listed, never dropped silently. Bad second masks (another
grid without ``--resample``, empty, without the lesion's label) stop the run before anything is written.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fusion_model import __version__
from fusion_model.agreement.readings import (
    HU_FEATURE,
    READER_A,
    SECOND_READER,
    SIZE_FEATURE,
    Comparison,
    LesionReading,
    check_second_mask_grid,
    perturbation_comparisons,
    read_lesion,
)
from fusion_model.agreement.report import write_agreement_report
from fusion_model.agreement.stats import bland_altman, icc_band, intraclass_correlation
from fusion_model.cohort import Cohort, load_cohort
from fusion_model.cohort.spec import TABLE_FILE
from fusion_model.engine import Engine
from fusion_model.errors import UserInputError
from fusion_model.fileio import check_output_dir, json_safe
from fusion_model.records import LesionRecord
from fusion_model.segment.metrics import SURFACE_TOLERANCE_MM, summarise

FLAG_BELOW = (0.75, 0.9)
DEFAULT_CONTOUR_DICE = 0.90


@dataclass
class AgreementSettings:
    """What to compare and how."""

    masks_b_dir: Path | None = None
    perturb: bool = False
    contour_dice: float = DEFAULT_CONTOUR_DICE
    seed: int = 0
    resample: bool = False
    centre: str | None = None


@dataclass
class Agreement:
    """The analysis: metrics.json's content, the per-lesion tables, the readings (for the figures)."""

    metrics: dict
    lesions: pd.DataFrame
    feature_icc: pd.DataFrame
    predictions: pd.DataFrame | None
    readings: list[LesionReading] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)


def _pairs(cohort: Cohort, settings: AgreementSettings) -> tuple[list[tuple[int, LesionRecord, LesionRecord | None]],
                                                                list[dict]]:
    """The lesions to compare (row, first reader, second reader) and those read once, with why."""
    pairs, once = [], []
    for i in range(len(cohort.table)):
        lesion = cohort.lesion(i)
        second = None if settings.perturb else cohort.lesion_b(i, settings.masks_b_dir)
        if lesion.mask_path is None:
            once.append({"lesion_id": lesion.lesion_id, "row": lesion.row,
                         "reader": "second reader only" if second is not None else "not outlined"})
            continue
        if not settings.perturb and second is None:
            where = (f"no file {lesion.mask_path.name} in {settings.masks_b_dir}" if settings.masks_b_dir
                     else "mask_path_b is empty")
            once.append({"lesion_id": lesion.lesion_id, "row": lesion.row, "reader": f"first reader only ({where})"})
            continue
        pairs.append((i, lesion, second))
    return pairs, once


def _check_inputs(cohort: Cohort, pairs, settings: AgreementSettings) -> None:
    if settings.masks_b_dir is not None and not Path(settings.masks_b_dir).is_dir():
        raise UserInputError(f"{settings.masks_b_dir}: --masks-b is not a folder; give the folder holding the second "
                             "reader's masks, named as the first reader's mask_path files")
    if not settings.perturb and not pairs:
        if settings.masks_b_dir is not None:
            raise UserInputError(f"{settings.masks_b_dir}: holds no file named as a mask_path file of "
                                 f"{cohort.root / TABLE_FILE}; the second reader's masks must carry those names")
        raise UserInputError(f"{cohort.root / TABLE_FILE}: no lesion has both mask_path and mask_path_b; give the "
                             "second reader's masks (column mask_path_b, or --masks-b DIR), or use --perturb to "
                             "compare the outlines with perturbed copies of themselves")
    if settings.perturb and not pairs:
        cohort.require_masks()
    problems = []
    for _, lesion, second in pairs:
        if second is None:
            continue
        reference_phase = next((p for p in cohort.spec.phases if p in lesion.phase_paths), None)
        if reference_phase is None:
            continue  # reported by read_lesion with the lesion's own message
        try:
            check_second_mask_grid(second, lesion.phase_paths[reference_phase], settings.resample)
        except UserInputError as err:
            problems.append(str(err))
    _raise_problems(problems)


def _raise_problems(problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more lesion(s) with problems)" if len(problems) > 1 else ""
        raise UserInputError(problems[0] + more)


def _feature_rows(readings: list[LesionReading], comparison: str) -> tuple[list[str], pd.DataFrame, pd.DataFrame]:
    ids = [r.lesion_id for r in readings if comparison in r.features]
    a = pd.DataFrame([r.features[READER_A] for r in readings if comparison in r.features], index=ids)
    b = pd.DataFrame([r.features[comparison] for r in readings if comparison in r.features], index=ids)
    return ids, a, b.reindex(columns=a.columns)


def feature_agreement(a: pd.DataFrame, b: pd.DataFrame) -> list[dict]:
    """ICC(2,1) and ICC(3,1) of every feature (readers' values side by side), ranked by ICC(2,1), highest first."""
    rows = []
    for feature in a.columns:
        pair = np.column_stack([a[feature].to_numpy(float), b[feature].to_numpy(float)])
        icc = intraclass_correlation(pair)
        value = icc["icc2_1"]["icc"] if icc["icc2_1"] else None
        rows.append({"feature": feature, "n": icc["n"], "icc2_1": icc["icc2_1"], "icc3_1": icc["icc3_1"],
                     "band": icc_band(value), "below_0.75": value is not None and value < FLAG_BELOW[0],
                     "below_0.9": value is not None and value < FLAG_BELOW[1], "note": icc["note"]})
    return sorted(rows, key=lambda r: -math.inf if r["icc2_1"] is None else -r["icc2_1"]["icc"])


def _icc_columns(name: str, icc: dict | None) -> dict:
    ci = (icc or {}).get("ci95") or [None, None]
    return {name: icc["icc"] if icc else None, f"{name}_low": ci[0], f"{name}_high": ci[1]}


def _segmentation_block(frame: pd.DataFrame) -> dict:
    dice = frame["dice"].to_numpy(float)
    counts, edges = np.histogram(dice, bins=np.linspace(0, 1, 21))
    return {"lesions": len(frame), "dice": summarise(frame["dice"]), "hd95_mm": summarise(frame["hd95_mm"]),
            "surface_dice_2mm": summarise(frame["surface_dice_2mm"]),
            "volume_difference_ml": summarise(frame["volume_difference_ml"]),
            "volume_difference_percent": summarise(frame["volume_difference_percent"]),
            "dice_histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
            "worst": frame.sort_values("dice").head(10)[["lesion_id", "dice", "hd95_mm", "reference_ml",
                                                           "predicted_ml"]].to_dict("records")}


def _model_frames(model, cohort: Cohort, readings: list[LesionReading], reader: str) -> pd.DataFrame:
    """Every variant's probability (and the rules) for the lesions with this reader's outline."""
    from fusion_model.features.table import (
        fill_radiological,
        imaging_features,
        tabular_features,
    )
    from fusion_model.model import LesionData

    kept = [r for r in readings if reader in r.encoder]
    ids = [r.lesion_id for r in kept]
    features = pd.DataFrame([r.features[reader] for r in kept], index=pd.Index(ids, name="lesion_id"))
    table = cohort.table.set_index("lesion_id").loc[ids]
    table, _ = fill_radiological(table, features)
    logits = np.array([r.encoder[reader][0] for r in kept])
    embeddings = np.stack([r.encoder[reader][1] for r in kept])
    extra = tuple(f.name for f in cohort.spec.extra_features)
    x_img = imaging_features(logits, embeddings, model.pca_, table.index)
    x_tab, _ = tabular_features(table, features, model.config.features, extra)
    data = LesionData(table, features, np.zeros((len(ids), 1, 1, 1, 1), np.float16), ("mask",), extra)
    return model.predict_variants(data, frames=(x_img, x_tab))


def model_agreement(model, p_a: pd.DataFrame, p_b: pd.DataFrame, labels: pd.Series | None) -> tuple[dict, pd.DataFrame]:
    """Per variant: probability ICC, mean absolute difference, Bland-Altman, class flips at the stored threshold,
    AUC with either outline and DeLong's paired test. Also the per-lesion table."""
    from fusion_model.stats import delong, delong_paired_test

    ids = p_a.index.intersection(p_b.index)
    p_a, p_b = p_a.loc[ids], p_b.loc[ids]
    out, rows = {}, []
    labelled = labels is not None and labels.reindex(ids).notna().all() and labels.reindex(ids).nunique() == 2
    y = labels.reindex(ids).astype(int).to_numpy() if labelled else None
    for variant, fit in model.variants_.items():
        a, b = p_a[f"p_{variant}"].to_numpy(float), p_b[f"p_{variant}"].to_numpy(float)
        threshold = float(fit.thresholds["youden"])
        flips = (a >= threshold) != (b >= threshold)
        block = {"lesions": len(ids), "icc": intraclass_correlation(np.column_stack([a, b])),
                 "mean_absolute_difference": float(np.mean(np.abs(b - a))),
                 "max_absolute_difference": float(np.max(np.abs(b - a))) if len(a) else None,
                 "bland_altman": bland_altman(a, b), "threshold": threshold, "threshold_name": "youden",
                 "flips": int(flips.sum()), "flip_fraction": float(flips.mean()) if len(a) else None,
                 "flipped_lesions": [{"lesion_id": i, "p_a": float(pa), "p_b": float(pb)}
                                     for i, pa, pb, f in zip(ids, a, b, flips) if f]}
        if labelled:
            d = delong(y, a, b)
            test = delong_paired_test(y, b, a)
            block["auc"] = {"a": float(d.aucs[0]), "a_ci95": list(d.ci(0)), "b": float(d.aucs[1]),
                            "b_ci95": list(d.ci(1)), "difference_b_minus_a": test.difference,
                            "difference_ci95": list(test.ci) if test.ci else None, "p_value": test.p_value,
                            "note": test.note}
        out[variant] = block
        rows += [{"lesion_id": i, "variant": variant, "p_a": float(pa), "p_b": float(pb), "threshold": threshold,
                  "class_flips": bool(f)} for i, pa, pb, f in zip(ids, a, b, flips)]
    return out, pd.DataFrame(rows)


def _reading_task(pair: tuple, comparisons, phases, ct_intensities, resample, seed, preprocess, encoder,
                  channels) -> tuple:
    """One lesion read twice (:func:`read_lesion`), or why it could not be: a task of the pass."""
    index, lesion, second = pair
    try:
        return read_lesion(lesion, second, comparisons, phases, ct_intensities, resample, seed, index, preprocess,
                           encoder, channels), None
    except UserInputError as err:
        return None, str(err)


def run_agreement(cohort_dir: Path, out: Path, settings: AgreementSettings | None = None,
                  model_dir: Path | None = None, overwrite: bool = False, progress: bool = True,
                  engine: Engine | None = None) -> Agreement:
    """Compare the cohort's outlines (second reader or perturbations) and write the report folder ``out``; one
    lesion per task on ``engine`` (default: this process)."""
    started = time.perf_counter()
    settings = settings or AgreementSettings()
    out = Path(out)
    check_output_dir(out, overwrite)
    if not 0.5 <= settings.contour_dice < 1:
        raise UserInputError(f"--contour-dice {settings.contour_dice}: give a Dice between 0.5 and 1 (e.g. 0.9)")
    if model_dir is not None:  # the model and the cohort checked against each other, as for predict
        from fusion_model.pipeline import ScoringSession

        session = ScoringSession.open(model_dir, cohort_dir, centre=settings.centre, progress=progress)
        model, cohort = session.model, session.cohort
    else:
        model, cohort = None, load_cohort(cohort_dir).select(centre=settings.centre)
    pairs, once = _pairs(cohort, settings)
    _check_inputs(cohort, pairs, settings)
    comparisons = perturbation_comparisons(settings.contour_dice) if settings.perturb else [SECOND_READER]
    channels = model.training_cohort.channels if model is not None else ()
    engine = engine or Engine()
    if engine.on_cluster:
        engine.check_paths([cohort.root.absolute()] + ([Path(settings.masks_b_dir)] if settings.masks_b_dir else []),
                           "the cohort's folder")
    task = functools.partial(_reading_task, comparisons=comparisons, phases=cohort.spec.phases,
                             ct_intensities=cohort.spec.ct_intensities, resample=settings.resample, seed=settings.seed,
                             preprocess=model.config.preprocess if model is not None else None,
                             encoder=model.encoder_ if model is not None else None, channels=channels)
    readings, problems = [], []
    for reading, problem in engine.map(task, pairs, "comparing outlines", progress):
        if problem is None:
            readings.append(reading)
        else:
            problems.append(problem)
    _raise_problems(problems)

    lesion_rows, icc_rows, prediction_frames, blocks = [], [], [], []
    labels = cohort.table.set_index("lesion_id")["label"] if "label" in cohort.table else None
    p_a = _model_frames(model, cohort, readings, READER_A) if model is not None else None
    meta = cohort.table.set_index("lesion_id")
    for comparison in comparisons:
        frame = pd.DataFrame([{"lesion_id": r.lesion_id, "row": r.row, "centre": meta.at[r.lesion_id, "centre"],
                               "comparison": comparison.name, **r.overlap[comparison.name],
                               "contour_amplitude_mm": r.amplitude_mm.get(comparison.name)}
                              for r in readings])
        lesion_rows.append(frame)
        _, feat_a, feat_b = _feature_rows(readings, comparison.name)
        features = feature_agreement(feat_a, feat_b)
        icc_rows += [{"comparison": comparison.name, "feature": f["feature"], "n": f["n"],
                      **_icc_columns("icc2_1", f["icc2_1"]), **_icc_columns("icc3_1", f["icc3_1"]),
                      "band": f["band"]} for f in features]
        block = {
            "name": comparison.name, "title": comparison.title, "kind": comparison.kind,
            "segmentation": _segmentation_block(frame),
            "features": features,
            "feature_bands": {band: sum(f["band"] == band for f in features)
                              for band in ("excellent", "good", "moderate", "poor")},
            "features_below_0.75": [f["feature"] for f in features if f["below_0.75"]],
            "features_below_0.9": [f["feature"] for f in features if f["below_0.9"]],
            "bland_altman": {name: {**bland_altman(feat_a[name], feat_b[name]),
                                    "mean_a": float(feat_a[name].mean()), "mean_b": float(feat_b[name].mean())}
                             for name in (SIZE_FEATURE, HU_FEATURE) if name in feat_a},
            "not_compared": [{"lesion_id": r.lesion_id, "row": r.row, "reason": r.missing[comparison.name]}
                             for r in readings if comparison.name in r.missing],
        }
        if comparison.kind == "contour":
            block["contour_amplitude_mm"] = summarise(frame["contour_amplitude_mm"])
        if model is not None:
            p_b = _model_frames(model, cohort, readings, comparison.name)
            block["model"], predictions = model_agreement(model, p_a, p_b, labels)
            predictions.insert(1, "comparison", comparison.name)
            prediction_frames.append(predictions)
        blocks.append(block)

    metrics = json_safe({
        "format": "fusion-model-agreement", "package_version": __version__,
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cohort": str(cohort_dir), "cohort_name": cohort.spec.name, "centre": settings.centre, "model": str(model_dir) if model_dir else None,
        "primary_variant": model.primary_variant if model is not None else None,
        "mode": "perturbation" if settings.perturb else "second reader",
        "second_reader_source": None if settings.perturb else
        (str(settings.masks_b_dir) if settings.masks_b_dir else "mask_path_b"),
        "seed": settings.seed, "contour_dice": settings.contour_dice if settings.perturb else None,
        "surface_tolerance_mm": SURFACE_TOLERANCE_MM, "resampled_second_masks": settings.resample,
        "lesions_in_cohort": len(cohort.table), "lesions_compared": len(readings),
        "read_once": once, "comparisons": blocks,
        "seconds": time.perf_counter() - started,
    })
    agreement = Agreement(metrics, pd.concat(lesion_rows, ignore_index=True), pd.DataFrame(icc_rows),
                          pd.concat(prediction_frames, ignore_index=True) if prediction_frames else None,
                          readings, comparisons)
    write_agreement_report(agreement, out, overwrite=overwrite)
    agreement.metrics["seconds"] = time.perf_counter() - started
    return agreement
