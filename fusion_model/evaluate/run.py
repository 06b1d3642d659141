"""`fusion-model evaluate`: score a labelled cohort with a model, or read saved prediction files,
and write report.html, metrics.json, predictions.csv and the figures as PNG, all at once."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from clinical_schema.coercion import coerce_lesion_type
from fusion_model import __version__, stats
from fusion_model.catalogue import MASK_SOURCE_WORDS, rule_description, variant_description
from fusion_model.errors import UserInputError
from fusion_model.evaluate import plots
from fusion_model.evaluate.phases import phase_comparison
from fusion_model.evaluate.subtype import subtype_metrics
from fusion_model.evaluate.metrics import (
    CASE_COLUMNS,
    METRICS_FORMAT,
    METRICS_FORMAT_VERSION,
    EvaluationSettings,
    ScoreSet,
    auc_summary,
    compute_metrics,
)
from fusion_model.fileio import check_output_dir, json_safe, sha256_file
from fusion_model.heads.subtype import RARE, SUBTYPES, SubtypeClasses
from fusion_model.report import data_uri, render, write_report_dir

SOURCE_DEFAULTS = {"cohort_name": "", "cohort_path": "", "cohort_fingerprint": None, "model_path": None,
                   "model_manifest_sha256": None, "training_cohort_name": None, "training_cohort_fingerprint": None,
                   "training_lesions": None, "prediction_files": [], "overlap_note": None, "synthetic": False,
                   "label_meaning": "1 = malignant, 0 = benign"}


@dataclass
class EvaluationResult:
    """Where an evaluation was written, its metrics and its files."""

    out: Path
    metrics: dict
    files: list[str]


# ------------------------------------------------------------------------------- inputs
TYPE_MARKER = "p_type_"  # predict's lesion-type columns: p_type_CLASS (primary variant), VARIANT_p_type_CLASS


def _is_type_column(column: str) -> bool:
    return column.startswith(TYPE_MARKER) or f"_{TYPE_MARKER}" in column


def type_column_groups(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Lesion-type probability columns by variant prefix ('' for p_type_CLASS, 'VARIANT' for
    VARIANT_p_type_CLASS), in the file's order."""
    groups: dict[str, list[str]] = {}
    for column in frame.columns:
        if _is_type_column(column):
            groups.setdefault(column.partition(TYPE_MARKER)[0].removesuffix("_"), []).append(column)
    return groups


def _score_columns(frame: pd.DataFrame) -> list[str]:
    models = [c for c in frame.columns if c.startswith("p_") and not _is_type_column(c)]
    rules = [c for c in frame.columns if c.startswith("rule_")]
    if models:
        return models + rules
    for name in ("probability", "score"):
        if name in frame.columns:
            return [name] + rules
    return rules


def _check_type_columns(path: Path, frame: pd.DataFrame) -> None:
    """Lesion-type columns are probabilities over the classes: numbers in [0, 1], every lesion's summing to 1."""
    for columns in type_column_groups(frame).values():
        values = frame[columns].apply(pd.to_numeric, errors="coerce")
        bad = values.isna() | (values < 0) | (values > 1)
        if bad.any().any():
            i, j = (int(v[0]) for v in np.nonzero(bad.to_numpy()))
            raise UserInputError(f"{path}: row {i + 2} (lesion {frame['lesion_id'].iloc[i]}), column {columns[j]!r}: "
                                 f"{frame[columns[j]].iloc[i]!r} is not a probability in [0, 1]; lesion-type "
                                 "columns (p_type_CLASS) hold each lesion's probability of each type")
        sums = values.sum(axis=1).to_numpy()
        off = np.flatnonzero(np.abs(sums - 1) > 0.01)
        if off.size:
            i = int(off[0])
            raise UserInputError(f"{path}: row {i + 2} (lesion {frame['lesion_id'].iloc[i]}): the lesion-type "
                                 f"probabilities {columns} sum to {sums[i]:.3f}, not 1; give every type column of "
                                 "the model (as predict writes them) or drop them all")
        frame[columns] = values


def read_predictions_file(path: Path) -> pd.DataFrame:
    """A predictions CSV: lesion_id, label, and score columns (score / probability / p_MODEL / rule_RULE)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: not found; give a CSV with columns lesion_id, label and a score per model")
    try:
        frame = pd.read_csv(path, dtype={"lesion_id": str, "patient_id": str, "centre": str})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise UserInputError(f"{path}: cannot be read as CSV ({str(err).strip()})") from None
    if "lesion_id" not in frame:
        raise UserInputError(f"{path}: no 'lesion_id' column (columns: {list(frame.columns)})")
    duplicated = frame["lesion_id"][frame["lesion_id"].duplicated()].tolist()
    if duplicated:
        raise UserInputError(f"{path}: lesion ids {duplicated[:10]} appear more than once; one row per lesion")
    columns = _score_columns(frame)
    if not [c for c in columns if not c.startswith("rule_")]:
        types = [c for group in type_column_groups(frame).values() for c in group]
        raise UserInputError(f"{path}: no malignancy score column; name it 'score', 'probability' or 'p_<model>' "
                             + (f"({types[:3]} are lesion-type probabilities, not malignancy risks)" if types
                                else f"(columns: {list(frame.columns)})"))
    _check_type_columns(path, frame)
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = frame[column].notna() & values.isna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise UserInputError(f"{path}: row {i + 2} (lesion {frame['lesion_id'].iloc[i]}), column {column!r}: "
                                 f"{frame[column].iloc[i]!r} is not a number")
        if not column.startswith("rule_") and values.isna().any():
            rows = (np.flatnonzero(values.isna().to_numpy())[:10] + 2).tolist()
            ids = frame["lesion_id"][values.isna()].tolist()[:10]
            raise UserInputError(f"{path}: column {column!r} is empty or NaN in rows {rows} (lesions {ids}); "
                                 "every lesion needs a score")
        frame[column] = values
    if "label" in frame:
        labels = pd.to_numeric(frame["label"], errors="coerce")
        bad = frame["label"].notna() & ~labels.isin([0, 1])
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise UserInputError(f"{path}: row {i + 2} (lesion {frame['lesion_id'].iloc[i]}), column 'label': "
                                 f"{frame['label'].iloc[i]!r}; use 1 for malignant and 0 for benign")
        frame["label"] = labels.astype("Int64")
    if "lesion_type" in frame:
        frame["lesion_type"] = coerce_lesion_type(frame["lesion_type"])[0]
    return frame.set_index("lesion_id")


def _model_name(path: Path, column: str, several_files: bool, several_columns: bool) -> str:
    """'score'/'probability' take the file's name; p_MODEL columns their model's (prefixed by the file's
    name when several files are compared)."""
    if column in ("score", "probability"):
        return path.stem
    base = column.removeprefix("p_")
    if several_files:
        return f"{path.stem}:{base}" if several_columns else path.stem
    return base


def cases_from_predictions(frames: dict[Path, pd.DataFrame], cohort_table: pd.DataFrame | None) -> pd.DataFrame:
    """Labels and subgroup columns of the lesions, checked for agreement across files and with the cohort."""
    paths = list(frames)
    first = frames[paths[0]]
    for path in paths[1:]:
        extra = sorted(set(frames[path].index) - set(first.index))
        missing = sorted(set(first.index) - set(frames[path].index))
        if extra or missing:
            raise UserInputError(
                f"{path} and {paths[0]} do not hold the same lesions: "
                + (f"unknown lesion ids {extra[:10]} in {path.name}" if extra else "")
                + ("; " if extra and missing else "")
                + (f"{missing[:10]} missing from {path.name}" if missing else "")
                + "; evaluate models on the same lesions")
    ids = first.index
    if cohort_table is not None:
        table = cohort_table.set_index("lesion_id")
        unknown = sorted(set(ids) - set(table.index))
        if unknown:
            raise UserInputError(f"{paths[0]}: unknown lesion ids {unknown[:10]}: not in the cohort's clinical.csv")
        cases = table.loc[ids, [c for c in CASE_COLUMNS if c in table]].copy()
        cases["label"] = pd.to_numeric(cases.get("label"), errors="coerce") if "label" in cases else np.nan
    else:
        cases = first[[c for c in CASE_COLUMNS if c in first]].copy()
    if "label" not in cases or cases["label"].isna().all():
        raise UserInputError(f"{paths[0]}: no labels; add a 'label' column (1 malignant, 0 benign) or give "
                             "--cohort with a labelled clinical.csv")
    for path in paths:
        if "label" in frames[path] and frames[path]["label"].notna().any():
            theirs = frames[path]["label"].reindex(ids)
            differ = theirs.notna() & (theirs.astype(float) != cases["label"].astype(float))
            if differ.any():
                raise UserInputError(f"{path}: labels of lesions {list(ids[differ.to_numpy()][:10])} differ from "
                                     f"{'the cohort' if cohort_table is not None else paths[0]}'s")
    missing = cases["label"].isna()
    if missing.any():
        raise UserInputError(f"lesions {list(cases.index[missing][:10])} have no label; evaluation needs the "
                             "histology label of every lesion")
    cases["label"] = cases["label"].astype(int)
    return cases


def _file_variant(path: Path, frame: pd.DataFrame) -> str:
    """The variant a file's p_type_CLASS columns belong to: its 'variant' column (predict writes the primary
    variant there), else its one model column's name, else the file's name."""
    if "variant" in frame and frame["variant"].nunique() == 1:
        return str(frame["variant"].dropna().iloc[0])
    models = [c for c in _score_columns(frame) if c.startswith("p_")]
    return models[0].removeprefix("p_") if len(models) == 1 else path.stem


def type_probabilities_from_predictions(frames: dict[Path, pd.DataFrame]) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Each variant's lesion-type probabilities (columns p_type_CLASS, the same classes in every file) and the
    classes; ({}, []) when no file has any."""
    several = len(frames) > 1
    out: dict[str, pd.DataFrame] = {}
    classes: list[str] = []
    first_path = None
    for path, frame in frames.items():
        for prefix, columns in type_column_groups(frame).items():
            names = [c.partition(TYPE_MARKER)[2] for c in columns]
            if not classes:
                classes, first_path = names, path
            elif sorted(names) != sorted(classes):
                raise UserInputError(f"{path}: lesion-type columns name the classes {names}, {first_path.name}'s "
                                     f"name {classes}; evaluate lesion-type probabilities of models with the same "
                                     "classes together")
            block = frame[columns].set_axis([f"{TYPE_MARKER}{n}" for n in names], axis=1)
            name = prefix or _file_variant(path, frame)
            out[f"{path.stem}:{name}" if several else name] = block[[f"{TYPE_MARKER}{c}" for c in classes]]
    return out, classes


def prediction_subtype_metrics(frames: dict[Path, pd.DataFrame], cases: pd.DataFrame,
                               cohort_root: Path | None) -> dict | None:
    """The lesion-type section for prediction files with p_type_CLASS columns, against the cohort's (or the
    file's) lesion_type; None without type columns. Type columns are never scored as malignancy risks."""
    probabilities, classes = type_probabilities_from_predictions(frames)
    if not probabilities:
        return None
    types = cases["lesion_type"] if "lesion_type" in cases else None
    if types is None or types.isna().all():
        raise UserInputError(f"{list(frames)[0]}: columns p_type_{classes[0]} ... are lesion-type probabilities, not "
                             "malignancy risks; to score them add a 'lesion_type' column or give --cohort with the "
                             "cohort's clinical.csv, or drop those columns")
    merged = [t for t in SUBTYPES if t not in classes] if RARE in classes else []
    return subtype_metrics(types, probabilities, SubtypeClasses(classes, merged), cohort_root)


def score_sets_from_predictions(frames: dict[Path, pd.DataFrame]) -> list[ScoreSet]:
    """One score set per model column of the prediction files, and the rules."""
    several = len(frames) > 1
    sets: list[ScoreSet] = []
    rules_seen = set()
    for path, frame in frames.items():
        columns = _score_columns(frame)
        model_columns = [c for c in columns if not c.startswith("rule_")]
        for column in columns:
            if column.startswith("rule_"):
                rule = column[5:]
                if rule in rules_seen:
                    continue
                rules_seen.add(rule)
                sets.append(ScoreSet(rule, "rule", frame[column], rule_description(rule), False))
                continue
            values = frame[column]
            probability = bool(values.min() >= 0 and values.max() <= 1)
            name = _model_name(path, column, several, len(model_columns) > 1)
            sets.append(ScoreSet(name, "external", values, f"{column} from {path.name}", probability))
    return sets


# --------------------------------------------------------------------------------- output
def methods_paragraph(metrics: dict) -> str:
    """The report's methods paragraph: every statistic and how it was computed."""
    s = metrics["settings"]
    return (
        "Discrimination is the area under the ROC curve (AUC), computed as the Mann-Whitney statistic (ties count "
        "one half), with 95% confidence intervals by DeLong's method (midrank algorithm of Sun and Xu, 2014; "
        + ("the tables show the logit-transformed interval, which stays inside 0-1 and covers better near 1 and in "
           "small samples" if s["auc_ci_shown"] == "logit" else "the tables show AUC +/- 1.96 SE clipped to 0-1")
        + "; metrics.json holds both) and by "
        f"a stratified percentile bootstrap ({s['bootstrap_resamples']} resamples of malignant and benign lesions "
        f"separately, seed {s['bootstrap_seed']}). Pairs of models are compared on the lesions both score with "
        "DeLong's paired test (two-sided, unadjusted). Sensitivity, specificity, accuracy, positive and negative "
        "predictive values carry Wilson score intervals; likelihood ratios carry log-method intervals (Simel 1991), "
        "with a 0.5 continuity correction where a cell of the confusion matrix is zero. Calibration is summarised "
        "by the Brier score, the calibration intercept (logistic regression of the outcome with the predicted "
        "log-odds as offset) and the calibration slope (logistic regression on the predicted log-odds), both fitted "
        "as binomial GLMs (statsmodels) on log-odds of probabilities clipped to "
        f"[{s['calibration_logit_clip'][0]:g}, 1 - {s['calibration_logit_clip'][0]:g}]; a slope that does not exist "
        "(perfect separation, equal predictions) or a fit that does not converge is reported as missing with the "
        "reason. The observed/expected ratio carries a log-scale delta-method interval (the ratio of the mean "
        "outcome to the mean prediction over the same lesions, with their covariance). The Brier score, intercept, "
        f"slope and net benefit carry percentile intervals from an ordinary bootstrap ({s['bootstrap_resamples']} "
        f"resamples of all lesions together, seed {s['bootstrap_seed']}): unlike the AUC, each depends on the "
        "proportion of malignant lesions, so the resampling lets that proportion vary as it does between samples "
        "(a bootstrap stratified by class would fix it and make these intervals too narrow). Calibration is shown "
        "as a reliability diagram with a LOWESS smoothed curve (frac 2/3). Clinical utility is the net benefit of a "
        "decision curve (Vickers and Elkin 2006) against resecting all or no lesions. Subgroups by centre, size (40 mm), unenhanced attenuation "
        f"(10 HU) and lesion type are reported with DeLong intervals; those with fewer than "
        f"{s['small_subgroup_lesions']} lesions or fewer than {s['small_subgroup_per_class']} of a class are flagged "
        "as small. Guideline rules are scored as 0/1 tests.")


def _limitations(metrics: dict, source: dict) -> list[str]:
    out = ["Thresholds chosen on the evaluated lesions ('this cohort') are optimistic; only those chosen on the "
           "training data estimate performance at a fixed operating point.",
           "Lesions are treated as independent; patients with several lesions make the intervals slightly narrow.",
           "p-values of the model comparisons are not adjusted for multiple testing."]
    small = [f"{r['by']} {r['group']}" for r in metrics["subgroups"] if r["small"]]
    if small:
        out.append(f"Small subgroups ({', '.join(small)}): their estimates are imprecise.")
    subtype = metrics.get("subtype") or {}
    small_types = next(iter((subtype.get("variants") or {}).values()), {}).get("small_classes")
    if small_types:
        out.append(f"Lesion types with fewer than {subtype['small_class_lesions']} evaluated lesions ("
                   + ", ".join(f"{c} {n}" for c, n in small_types.items()) + "): one lesion moves their one-vs-rest "
                   "AUC by a large step, and the macro AUC with it; read its interval.")
    if source.get("overlap_note"):
        out.append(source["overlap_note"])
    automatic = metrics["cohort"].get("mask_sources", {}).get("auto", 0)
    if automatic:
        out.append(f"{automatic} lesion(s) were outlined by a segmentation model, not a reader: their radiological "
                   "features and crops follow that outline, so these figures include its errors.")
    if source.get("synthetic"):
        out.append("This cohort is synthetic (generated by fusion-model): the figures demonstrate the pipeline, "
                   "not clinical performance.")
    return out


def write_evaluation(out: Path, metrics: dict, predictions: pd.DataFrame, source: dict, title: str,
                     primary: str | None, config: dict | None = None, not_evaluated: list | None = None,
                     warnings: list[str] | None = None, overwrite: bool = False) -> EvaluationResult:
    """Write report.html, metrics.json, predictions.csv and the PNGs atomically."""
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    source = {**SOURCE_DEFAULTS, **source}
    document = json_safe({
        "format": METRICS_FORMAT, "format_version": METRICS_FORMAT_VERSION, "package_version": __version__,
        "created_utc": created, "title": title, "source": source, "primary_model": primary,
        "not_evaluated": not_evaluated or [], **metrics})
    pngs = {"roc.png": plots.roc_plot(document), "calibration.png": plots.calibration_plot(document),
            "decision_curve.png": plots.decision_curve_plot(document)}
    if primary:
        pngs["subgroups.png"] = plots.subgroup_plot(document, primary)
        pngs["confusion.png"] = plots.confusion_plot(document, primary)
    pngs = {k: v for k, v in pngs.items() if v is not None}
    html = render("evaluate.html.j2", metrics=document, title=title, source=source, primary=primary,
                  images={k: data_uri(v) for k, v in pngs.items()}, methods_paragraph=methods_paragraph(document),
                  limitations=_limitations(document, source), not_evaluated=not_evaluated or [],
                  warnings=warnings or [], metrics_format_version=METRICS_FORMAT_VERSION,
                  mask_source_words=MASK_SOURCE_WORDS,
                  config=yaml.safe_dump(config, sort_keys=False) if config else None,
                  package_version=__version__, created_utc=created)
    files: dict[str, bytes | str] = {"report.html": html,
                                     "metrics.json": json.dumps(document, indent=2, allow_nan=False) + "\n",
                                     "predictions.csv": predictions.to_csv(index_label="lesion_id"), **pngs}
    write_report_dir(out, files, overwrite=overwrite)
    return EvaluationResult(Path(out), document, sorted(files))


def _oracle(cases: pd.DataFrame, cohort_root: Path | None, interval: str) -> dict | None:
    if cohort_root is None or not (Path(cohort_root) / "truth.csv").is_file():
        return None
    truth = pd.read_csv(Path(cohort_root) / "truth.csv", dtype={"lesion_id": str}).set_index("lesion_id")
    ids = [i for i in cases.index if i in truth.index]
    labels = cases.loc[ids, "label"].to_numpy(dtype=int)
    try:
        return {"n": len(ids), "auc": auc_summary(labels, truth.loc[ids, "oracle_risk"].to_numpy(float), None,
                                                  interval)}
    except stats.SingleClassError:
        return None


def evaluate_predictions(files: list[Path], out: Path, cohort_dir: Path | None = None,
                         settings: EvaluationSettings | None = None, overwrite: bool = False,
                         progress: bool = True) -> EvaluationResult:
    """Evaluate saved prediction files (from fusion-model or another tool) without a model."""
    from fusion_model.cohort import load_cohort
    from fusion_model.pipeline import cohort_fingerprint

    check_output_dir(out, overwrite)
    files = [Path(f) for f in files]
    if len({f.resolve() for f in files}) != len(files):
        raise UserInputError("the same predictions file is given twice")
    frames = {f: read_predictions_file(f) for f in files}
    cohort = load_cohort(cohort_dir) if cohort_dir else None
    cases = cases_from_predictions(frames, cohort.table if cohort else None)
    score_sets = score_sets_from_predictions(frames)
    subtype = prediction_subtype_metrics(frames, cases, cohort.root if cohort else None)  # refused before the rest
    metrics = compute_metrics(cases, score_sets, settings, progress=progress)
    metrics["oracle"] = _oracle(cases, cohort.root if cohort else None, metrics["settings"]["auc_ci_shown"])
    if subtype is not None:
        metrics["subtype"] = subtype
    predictions = cases.copy()
    for s in score_sets:
        predictions[s.name] = s.scores.reindex(cases.index)
    source = {"cohort_name": cohort.spec.name if cohort else "lesions of the predictions files",
              "cohort_path": str(cohort_dir) if cohort_dir else "",
              "cohort_fingerprint": cohort_fingerprint(cohort) if cohort else None,
              "prediction_files": [{"path": str(f), "sha256": sha256_file(f)} for f in files],
              "synthetic": bool(cohort and (cohort.root / "truth.csv").is_file()),
              **({"label_meaning": cohort.spec.label_meaning} if cohort else {})}
    models = [s.name for s in score_sets if s.kind != "rule"]
    named = [_file_variant(f, frame) for f, frame in frames.items()] if len(frames) == 1 else []
    primary = next((n for n in named if n in models), models[0] if models else None)
    return write_evaluation(out, metrics, predictions, source, title=", ".join(f.name for f in files),
                            primary=primary, overwrite=overwrite)


def _phase_comparison(model_dir: Path, model, data, labels: pd.Series, predicted: pd.DataFrame, types: dict,
                      progress: bool) -> dict | None:
    """Each phase alone against all phases on these lesions (models trained with ``compare_phases``)."""
    from fusion_model.artifact import load_phase_models

    phase_models = load_phase_models(model_dir, progress=progress, manifest=model.manifest_)
    if not phase_models:
        return None
    primary = model.primary_variant
    cohort_phases = model.training_cohort.phases
    everything = "+".join(cohort_phases)
    scores = {}
    type_probabilities = {everything: types[primary]} if types else {}
    for phase, phase_model in phase_models.items():
        view = data.with_phases([phase])
        frames = phase_model.feature_frames(view)
        variant = primary if primary in phase_model.variants_ else phase_model.primary_variant
        scores[phase] = phase_model.predict_variants(view, frames)[f"p_{variant}"]
        phase_types = phase_model.predict_types(view, frames)
        if phase_types and variant in phase_types and phase_model.subtype_info_.classes == \
                model.subtype_info_.classes:
            type_probabilities[phase] = phase_types[variant]
    scores[everything] = predicted[f"p_{primary}"]
    lesion_types = data.table["lesion_type"] if "lesion_type" in data.table else None
    return phase_comparison(labels, scores, lesion_types, type_probabilities,
                            model.subtype_info_.lesion_types if model.subtype_info_ else None,
                            reference=everything, phases={**{p: [p] for p in phase_models}, everything: cohort_phases},
                            variant=primary)


def unscored_lesions(table: pd.DataFrame, errors: list, labels: pd.Series, scores: dict[str, pd.Series]) -> dict | None:
    """Lesions of the cohort the model could not score (no mask, an unreadable file), counted by label and lesion
    type, and each model's AUC with them counted as missed (scored below every scored lesion: a malignant one a
    false negative, a benign one a true negative) beside its AUC on the scored lesions alone."""
    if not errors:
        return None
    ids = [e.lesion_id for e in errors]
    rows = table.set_index("lesion_id").reindex(ids)
    without_mask = rows["mask_path"].isna() if "mask_path" in rows else pd.Series(False, index=rows.index)
    out: dict = {"count": len(ids), "without_automatic_mask": int(without_mask.sum()),
                 "by_label": {}, "by_lesion_type": {}, "as_missed": {}}
    if "label" in rows:
        out["by_label"] = {("malignant" if int(k) == 1 else "benign"): int(n)
                           for k, n in rows["label"].dropna().astype(int).value_counts().sort_index().items()}
    if "lesion_type" in rows:
        out["by_lesion_type"] = {str(k): int(n) for k, n in rows["lesion_type"].fillna("unknown")
                                 .value_counts().sort_index().items()}
    missing = rows["label"].dropna().astype(int) if "label" in rows else pd.Series(dtype=int)
    all_labels = np.concatenate([labels.astype(int).to_numpy(), missing.to_numpy()])
    if len(missing) and len(np.unique(all_labels)) == 2:
        for name, score in scores.items():
            values = score.to_numpy(dtype=float)
            floor = (np.nanmin(values) if np.isfinite(values).any() else 0.0) - 1.0
            with_missed = np.concatenate([values, np.full(len(missing), floor)])
            out["as_missed"][name] = {"auc_scored": stats.auc_mann_whitney(labels.astype(int).to_numpy(), values),
                                      "auc_all_unscored_missed": stats.auc_mann_whitney(all_labels, with_missed),
                                      "lesions_scored": len(values), "lesions_all": len(with_missed)}
    return out


def evaluate_model(model_dir: Path, cohort_dir: Path, out: Path, cache, settings: EvaluationSettings | None = None,
                   strict: bool = False, overwrite: bool = False, progress: bool = True,
                   centre: str | None = None, split: str | None = None, engine=None) -> EvaluationResult:
    """Score a labelled cohort (or one centre of it) with every variant of a model and the rules, and report;
    ``engine`` (:class:`~fusion_model.engine.Engine`): where the lesions are read (default: this process)."""
    from fusion_model.artifact import MANIFEST, unlisted_files, unlisted_files_note
    from fusion_model.cohort import mask_sources
    from fusion_model.pipeline import ScoringSession, cohort_fingerprint

    check_output_dir(out, overwrite)
    session = ScoringSession.open(model_dir, cohort_dir, require_label=True, centre=centre, split=split,
                                  progress=progress)
    model, cohort = session.model, session.cohort
    trained = model.training_cohort
    stats.require_both_classes(cohort.table["label"].astype(int).to_numpy(), f"cohort {cohort_dir}")
    data, errors = session.read(cache, "evaluate", strict, progress, engine)
    frames = model.feature_frames(data)
    predicted = model.predict_variants(data, frames)
    types = model.predict_types(data, frames)
    cases = data.table[[c for c in CASE_COLUMNS if c in data.table]].copy()
    cases["label"] = cases["label"].astype(int)
    cases["mask_source"] = mask_sources(cases)
    score_sets = [ScoreSet(v, "model", predicted[f"p_{v}"], variant_description(v), True, dict(fit.thresholds))
                  for v, fit in model.variants_.items()]
    score_sets += [ScoreSet(r, "rule", predicted[f"rule_{r}"], rule_description(r), False)
                   for r in model.config.baselines if f"rule_{r}" in predicted]
    metrics = compute_metrics(cases, score_sets, settings, progress=progress)
    metrics["oracle"] = _oracle(cases, cohort.root, metrics["settings"]["auc_ci_shown"])
    metrics["unscored"] = unscored_lesions(cohort.table, errors, cases["label"],
                                           {s.name: s.scores for s in score_sets if s.kind == "model"})
    if types:
        lesion_types = data.table["lesion_type"] if "lesion_type" in data.table else \
            pd.Series(np.nan, index=data.table.index, dtype=object)
        metrics["subtype"] = subtype_metrics(lesion_types, types, model.subtype_info_.lesion_types, cohort.root)
        predicted = pd.concat([predicted, types[model.primary_variant]], axis=1)
    metrics["phase_comparison"] = _phase_comparison(model_dir, model, data, cases["label"], predicted, types,
                                                    progress)
    fingerprint = cohort_fingerprint(cohort)
    stray = unlisted_files(model_dir, model.manifest_)
    warnings = [unlisted_files_note(model_dir, stray)] if stray else []
    overlap_note = None
    held_out_centre = centre is not None and centre == trained.test_centre
    held_out_split = (split is not None and split != model.config.split.train_value
                      and model.config.split.mode == "column" and trained.test_centre is None)
    if fingerprint == trained.fingerprint and not (held_out_centre or held_out_split):
        test_lesions = (trained.test_lesions or 0)
        overlap_note = ("This is the training cohort itself: "
                        + ("its held-out part was not seen in training, but every other lesion was; "
                           if test_lesions else "")
                        + "figures on training lesions are optimistic. Evaluate on a separate cohort.")
        warnings.append(overlap_note)
    elif held_out_split:
        overlap_note = f"Split {split!r} of the training cohort, not used in training (the model trained on " \
                       f"split {model.config.split.train_value!r})."
    elif held_out_centre:
        overlap_note = (f"Centre {centre} of the training cohort, held out of training (external test): none of "
                        "its lesions or patients were seen in training.")
    source = {"cohort_name": cohort.spec.name + (f", centre {centre}" if centre else "")
              + (f", split {split}" if split else ""),
              "cohort_path": str(cohort_dir), "cohort_fingerprint": fingerprint,
              "model_path": str(model_dir), "model_manifest_sha256": sha256_file(Path(model_dir) / MANIFEST),
              "training_cohort_name": trained.name, "training_cohort_fingerprint": trained.fingerprint,
              "training_lesions": trained.training_lesions, "prediction_files": [],
              "overlap_note": overlap_note, "synthetic": (cohort.root / "truth.csv").is_file(),
              "label_meaning": cohort.spec.label_meaning}
    predictions = pd.concat([cases, predicted], axis=1)
    return write_evaluation(out, metrics, predictions, source, title=f"{Path(model_dir).name} on {cohort.spec.name}",
                            primary=model.primary_variant, config=model.config.model_dump(mode="json"),
                            not_evaluated=[e.__dict__ for e in errors], warnings=warnings, overwrite=overwrite)
