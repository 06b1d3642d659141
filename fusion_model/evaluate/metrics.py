"""Every figure of an evaluation report, computed from labels and scores (no files, no plots).

The result is the body of ``metrics.json``; its layout is documented in
``fusion_model/evaluate/METRICS.md`` and versioned by :data:`METRICS_FORMAT_VERSION`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fusion_model import stats
from fusion_model.catalogue import MASK_SOURCE_WORDS, mask_source_counts
from fusion_model.errors import UserInputError
from fusion_model.progress import track

METRICS_FORMAT = "fusion-model-metrics"
METRICS_FORMAT_VERSION = 1
CASE_COLUMNS = ("label", "patient_id", "centre", "size_mm", "unenhanced_hu", "lesion_type", "mask_source")


@dataclass
class ScoreSet:
    """One model's (or rule's) scores for the evaluated lesions; NaN where it gives none."""

    name: str
    kind: str  # "model" (a variant of a fusion-model artifact), "rule" (guideline rule) or "external"
    scores: pd.Series
    description: str = ""
    is_probability: bool = True
    training_thresholds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluationSettings:
    """How an evaluation is computed: bootstrap resamples, seed, bins, decision-curve thresholds."""

    bootstrap_resamples: int = 2000
    seed: int = 0
    small_subgroup_lesions: int = 30
    small_subgroup_per_class: int = 10
    decision_thresholds: tuple[float, ...] = tuple(np.round(np.arange(0.01, 0.61, 0.01), 2))
    reliability_bins: int = 10
    auc_interval: str = "logit"  # the AUC interval the report shows: "logit" (logit-transformed DeLong) or "wald"

    def __post_init__(self) -> None:
        if self.auc_interval not in AUC_INTERVALS:
            raise UserInputError(f"AUC interval {self.auc_interval!r}: choose from {list(AUC_INTERVALS)}")


AUC_INTERVALS = {  # the interval reports show: its short name (the methods paragraph explains it)
    "logit": "DeLong, logit",
    "wald": "DeLong, Wald",
}


TRAINING_THRESHOLD_NAMES = {
    "youden": "Youden (training)",
    "sensitivity_90": "90% sensitivity (training)",
    "sensitivity_95": "95% sensitivity (training)",
}


def check_scores(score_sets: list[ScoreSet], cases: pd.DataFrame) -> None:
    """Refuse lesions without a label and score sets that miss lesions, naming them."""
    if cases["label"].isna().any():
        missing = list(cases.index[cases["label"].isna()][:10])
        raise UserInputError(f"lesions {missing} have no label; evaluation needs the histology label of every "
                             "lesion (fill the label column or leave those lesions out)")
    stats.require_both_classes(cases["label"].to_numpy())
    for s in score_sets:
        values = s.scores.reindex(cases.index)
        if s.kind != "rule" and values.isna().any():
            bad = list(values.index[values.isna()][:10])
            raise UserInputError(f"model {s.name!r} has no score (NaN) for lesions {bad}; every lesion needs a score")
        if np.isinf(values.to_numpy(dtype=float)).any():
            raise UserInputError(f"model {s.name!r} has infinite scores; give finite numbers")


def auc_summary(labels: np.ndarray, scores: np.ndarray, settings: EvaluationSettings | None,
               interval: str = "logit") -> dict:
    """AUC with its DeLong SE and intervals; ``ci`` is the one reports show. Where the SE is 0 (perfect
    separation, constant scores) every interval is null, with a note."""
    d = stats.delong(labels, scores)
    logit_ci = d.logit_ci(0)
    out = {"value": float(d.aucs[0]), "delong_se": d.se(0), "delong_ci": list(d.ci(0)),
           "delong_logit_ci": list(logit_ci) if logit_ci else None}
    note = d.degenerate_note(0)
    if note:
        out.update(delong_ci=None, delong_logit_ci=None, note=note)
    if settings is not None:  # no resampling where the note says no interval exists
        out["bootstrap_ci"] = None if note else list(
            stats.bootstrap_auc(labels, scores, settings.bootstrap_resamples, settings.seed)[:2])
    out["ci"] = out["delong_logit_ci"] if interval == "logit" else out["delong_ci"]
    return out


def _operating_points(labels, scores, s: ScoreSet) -> list[dict]:
    points = []
    if s.kind == "rule":
        points.append({"name": "rule", "source": "guideline rule", **stats.operating_point(labels, scores, 0.5)})
        return points
    for key, label in TRAINING_THRESHOLD_NAMES.items():
        if key in s.training_thresholds:
            points.append({"name": label, "key": key, "source": "training data",
                           **stats.operating_point(labels, scores, s.training_thresholds[key])})
    if s.is_probability:
        points.append({"name": "p >= 0.5", "key": "p_0.5", "source": "fixed",
                       **stats.operating_point(labels, scores, 0.5)})
    for key, label, threshold in (
        ("cohort_sensitivity_90", "90% sensitivity (this cohort)", stats.threshold_for_sensitivity(labels, scores, 0.90)),
        ("cohort_sensitivity_95", "95% sensitivity (this cohort)", stats.threshold_for_sensitivity(labels, scores, 0.95)),
        ("cohort_specificity_95", "95% specificity (this cohort)", stats.threshold_for_specificity(labels, scores, 0.95)),
    ):
        points.append({"name": label, "key": key, "source": "evaluated lesions (optimistic)",
                       **stats.operating_point(labels, scores, threshold)})
    return points


def _roc_curve(labels: np.ndarray, scores: np.ndarray) -> dict:
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=True)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(),
            "thresholds": [None if not math.isfinite(t) else float(t) for t in thresholds]}


def _model_metrics(cases: pd.DataFrame, s: ScoreSet, settings: EvaluationSettings) -> dict:
    values = s.scores.reindex(cases.index)
    have = values.notna().to_numpy()
    labels = cases["label"].to_numpy(dtype=int)[have]
    scores = values.to_numpy(dtype=float)[have]
    out: dict = {"kind": s.kind, "description": s.description, "n": int(have.sum()),
                 "n_without_score": int((~have).sum()), "malignant": int(labels.sum()),
                 "benign": int(len(labels) - labels.sum()), "is_probability": s.is_probability,
                 "calibration": None}
    if (~have).any():
        out["note"] = (f"{int((~have).sum())} lesion(s) without a score (the rule's input is missing) are left out "
                       "of this row")
    try:
        stats.require_both_classes(labels, f"the lesions scored by {s.name}")
    except stats.SingleClassError as err:
        out["auc"] = None
        out["note"] = str(err)
        return out
    out["auc"] = auc_summary(labels, scores, settings, settings.auc_interval)
    out["roc"] = _roc_curve(labels, scores)
    out["operating_points"] = _operating_points(labels, scores, s)
    if s.is_probability and s.kind != "rule":
        t = np.asarray(settings.decision_thresholds)
        out["calibration"] = stats.calibration(labels, scores)
        out["calibration"]["bins"] = stats.reliability_bins(labels, scores, settings.reliability_bins)
        out["calibration"]["histogram"] = np.histogram(scores, bins=20, range=(0, 1))[0].tolist()
        uncertainty = stats.bootstrap_calibration(labels, scores, t, settings.bootstrap_resamples, settings.seed)
        out["calibration"].update({k: uncertainty[k] for k in ("brier_ci", "intercept_ci", "slope_ci",
                                                               "resamples_without_slope",
                                                               "resamples_without_intercept")})
        out["decision_curve"] = {"thresholds": t.tolist(), "net_benefit": stats.net_benefit(labels, scores, t).tolist(),
                                 "net_benefit_ci": uncertainty["net_benefit_ci"]}
    else:
        out["calibration"] = None
        out["calibration_note"] = ("a rule's 0/1 call is not a probability" if s.kind == "rule"
                                   else "scores are not probabilities in [0, 1]")
    return out


def _comparison_pairs(score_sets: list[ScoreSet]) -> list[tuple[ScoreSet, ScoreSet]]:
    models = [s for s in score_sets if s.kind != "rule"]
    rules = [s for s in score_sets if s.kind == "rule"]
    return list(itertools.combinations(models, 2)) + [(m, r) for m in models for r in rules]


def _comparisons(cases: pd.DataFrame, score_sets: list[ScoreSet]) -> list[dict]:
    out = []
    labels_all = cases["label"].to_numpy(dtype=int)
    for a, b in _comparison_pairs(score_sets):
        va, vb = a.scores.reindex(cases.index), b.scores.reindex(cases.index)
        both = (va.notna() & vb.notna()).to_numpy()
        row = {"a": a.name, "b": b.name, "n": int(both.sum())}
        labels = labels_all[both]
        try:
            stats.require_both_classes(labels, f"the lesions scored by both {a.name} and {b.name}")
            test = stats.delong_paired_test(labels, va.to_numpy(float)[both], vb.to_numpy(float)[both])
            row.update({"auc_a": test.auc_a, "auc_b": test.auc_b, "difference": test.difference,
                        "ci": list(test.ci) if test.ci else None, "z": test.z, "p_value": test.p_value})
            if test.note:
                row["note"] = test.note
        except stats.SingleClassError as err:
            row["note"] = str(err)
        out.append(row)
    return out


def _subgroup_definitions(cases: pd.DataFrame) -> list[tuple[str, str, np.ndarray]]:
    groups = []
    if "centre" in cases and cases["centre"].notna().any():
        for centre in sorted(cases["centre"].dropna().unique()):
            groups.append(("centre", str(centre), (cases["centre"] == centre).to_numpy()))
    for column, cut, unit, by in (("size_mm", 40.0, "mm", "size"), ("unenhanced_hu", 10.0, "HU", "unenhanced HU")):
        if column in cases and cases[column].notna().any():
            values = pd.to_numeric(cases[column], errors="coerce")
            groups.append((by, f"<= {cut:g} {unit}", (values <= cut).to_numpy()))
            groups.append((by, f"> {cut:g} {unit}", (values > cut).to_numpy()))
            if values.isna().any():
                groups.append((by, "missing", values.isna().to_numpy()))
    if "lesion_type" in cases and cases["lesion_type"].notna().any():
        for kind in sorted(cases["lesion_type"].dropna().unique()):
            groups.append(("lesion type", str(kind), (cases["lesion_type"] == kind).to_numpy()))
    if "mask_source" in cases:
        sources = cases["mask_source"].fillna("manual")
        if sources.nunique() > 1:
            for source in [s for s in MASK_SOURCE_WORDS if (sources == s).any()]:
                groups.append(("mask", source, (sources == source).to_numpy()))
    return groups


SUBGROUP_COLUMNS = {"centre": "centre", "size_mm": "size (40 mm)", "unenhanced_hu": "unenhanced HU (10 HU)",
                    "lesion_type": "lesion type"}


def subgroups_note(cases: pd.DataFrame) -> str | None:
    """Why some subgroups are missing (their columns are absent or empty), or None."""
    absent = [(column, what) for column, what in SUBGROUP_COLUMNS.items()
              if column not in cases or cases[column].isna().all()]
    if not absent:
        return None
    return (f"no subgroups by {', '.join(what for _, what in absent)}: the evaluated lesions have no "
            f"{', '.join(column for column, _ in absent)} values; with prediction files, give the cohort directory "
            "(--cohort) or add those columns to the file")


def _subgroup_threshold(s: ScoreSet) -> float | None:
    """Sensitivity/specificity per subgroup at the training Youden threshold (a rule: its own call)."""
    if "youden" in s.training_thresholds:
        return s.training_thresholds["youden"]
    return 0.5 if s.kind == "rule" or s.is_probability else None


def _subgroups(cases: pd.DataFrame, score_sets: list[ScoreSet], settings: EvaluationSettings) -> list[dict]:
    out = []
    for by, group, mask in _subgroup_definitions(cases):
        sub = cases[mask]
        labels = sub["label"].to_numpy(dtype=int)
        positives = int(labels.sum())
        negatives = int(len(labels) - positives)
        small = (len(sub) < settings.small_subgroup_lesions
                 or min(positives, negatives) < settings.small_subgroup_per_class)
        row: dict = {"by": by, "group": group, "n": int(len(sub)), "malignant": positives, "benign": negatives,
                     "small": bool(small), "models": {}}
        if small:
            row["flag"] = (f"small subgroup (n={len(sub)}, {positives} malignant, {negatives} benign): wide "
                           "intervals, interpret with caution")
        for s in score_sets:
            values = s.scores.reindex(sub.index)
            have = values.notna().to_numpy()
            sl, sv = labels[have], values.to_numpy(float)[have]
            entry: dict = {"n": int(have.sum())}
            try:
                stats.require_both_classes(sl, f"subgroup {by} {group}")
                entry["auc"] = auc_summary(sl, sv, None, settings.auc_interval)
            except stats.SingleClassError as err:
                entry["auc"] = None
                entry["note"] = str(err)
            threshold = _subgroup_threshold(s)
            if threshold is not None and len(sl):
                point = stats.operating_point(sl, sv, threshold)
                entry["at_threshold"] = threshold
                entry["sensitivity"] = point["sensitivity"]
                entry["specificity"] = point["specificity"]
            row["models"][s.name] = entry
        out.append(row)
    return out


def cases_summary(cases: pd.DataFrame) -> dict:
    """Counts of lesions, classes, centres and lesion types."""
    labels = cases["label"].astype(int)
    out = {"lesions": int(len(cases)), "malignant": int(labels.sum()), "benign": int((1 - labels).sum())}
    if "patient_id" in cases:
        out["patients"] = int(cases["patient_id"].nunique())
    if "centre" in cases:
        out["centres"] = {str(k): int(v) for k, v in cases["centre"].value_counts().sort_index().items()}
    if "mask_source" in cases:
        out["mask_sources"] = mask_source_counts(cases["mask_source"])
    return out


def compute_metrics(cases: pd.DataFrame, score_sets: list[ScoreSet], settings: EvaluationSettings | None = None,
                    progress: bool = False) -> dict:
    """Discrimination, operating points, calibration, decision curves, comparisons and subgroups."""
    settings = settings or EvaluationSettings()
    if not score_sets:
        raise UserInputError("nothing to evaluate: no model scores were given")
    names = [s.name for s in score_sets]
    if len(set(names)) != len(names):
        raise UserInputError(f"model names must be unique; got {names}")
    check_scores(score_sets, cases)
    models = {s.name: _model_metrics(cases, s, settings)
              for s in track(score_sets, "evaluating models", enabled=progress)}
    labels = cases["label"].to_numpy(dtype=int)
    t = np.asarray(settings.decision_thresholds)
    return {
        "cohort": cases_summary(cases),
        "settings": {"bootstrap_resamples": settings.bootstrap_resamples, "bootstrap_seed": settings.seed,
                     "ci_level": 0.95, "auc_ci_methods": ["delong", "delong_logit", "stratified_bootstrap_percentile"],
                     "auc_ci_shown": settings.auc_interval, "auc_ci_shown_description": AUC_INTERVALS[settings.auc_interval],
                     "calibration_fit": "binomial GLM (statsmodels, IRLS)",
                     "calibration_ci": "ordinary bootstrap percentile (lesions resampled, event count free)",
                     "net_benefit_ci": "ordinary bootstrap percentile (lesions resampled, event count free)",
                     "observed_expected_ci": "log-scale delta method (ratio of two means)",
                     "calibration_logit_clip": [stats.LOGIT_CLIP, 1 - stats.LOGIT_CLIP],
                     "calibration_smoothing": "LOWESS, frac 2/3, no robustness iterations",
                     "proportion_ci": "wilson", "likelihood_ratio_ci": "log method (Simel 1991)",
                     "small_subgroup_lesions": settings.small_subgroup_lesions,
                     "small_subgroup_per_class": settings.small_subgroup_per_class},
        "models": models,
        "decision_curve_reference": {"thresholds": t.tolist(),
                                     "treat_all": stats.net_benefit_treat_all(labels, t).tolist(),
                                     "treat_none": [0.0] * len(t)},
        "comparisons": _comparisons(cases, score_sets),
        "subgroups": _subgroups(cases, score_sets, settings),
        "subgroups_note": subgroups_note(cases),
    }
