"""`fusion-model reader-study analyze`: do readers do better with the model?

From a study's answers and key (or a ratings file in the long format, for studies read elsewhere): the
Obuchowski-Rockette-Hillis MRMC analysis (:mod:`fusion_model.reader_study.mrmc`) of the readers' AUC
(malignancy likelihood 0-100; also the 5-point score), and of their sensitivity and specificity at their own
operating point (likelihood >= 50, score >= 3); per-reader AUCs and ROC curves; the model alone on the same
cases; lesion-type accuracy; reading time; and how often a reader's call on a case differed between the arms
toward or against the truth. Only readers who read every case in both arms enter the MRMC analysis (the
others are counted and named); report.html, metrics.json and ratings.csv (the long format).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from fusion_model import __version__
from fusion_model.errors import UserInputError
from fusion_model.fileio import check_output_dir, json_safe
from fusion_model.reader_study.design import ANSWERS_FILE, ARMS, load_key, load_study
from fusion_model.reader_study.mrmc import (
    AUC,
    FigureOfMerit,
    Ratings,
    analyze_ratings,
    ratings_from_frame,
    read_ratings_csv,
)
from fusion_model.reader_study.store import AnswerStore
from fusion_model.stats import nan_safe_auc

MODALITY_ORDER = ["aided", "unaided"]   # differences are reported as aided - unaided


def study_readings(study_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, object]:
    """(readings joined with the key, key, study) of a study folder."""
    study = load_study(study_dir)
    key = load_key(study_dir, study)
    path = Path(study_dir) / ANSWERS_FILE
    if not path.is_file():
        raise UserInputError(f"{path}: no answers yet; readers answer through 'reader-study serve' (or "
                             "'reader-study simulate' on a synthetic study)")
    readings = AnswerStore(path).readings()
    if readings.empty:
        raise UserInputError(f"{path}: no answers yet")
    unknown = sorted(set(readings["reader"]) - {r.code for r in study.readers})
    if unknown:
        raise UserInputError(f"{path}: answers of reader {unknown[0]}, who is not in {study_dir / 'study.json'}; "
                             "the design and the answers belong to different studies")
    cases = {c.code for c in study.cases}
    stray = sorted(set(readings["case_code"]) - cases)
    if stray:
        raise UserInputError(f"{path}: answers for case {stray[0]}, which is not in the design")
    readings = readings.rename(columns={"case_code": "case"})
    readings["truth"] = key.loc[readings["case"], "label"].astype(int).to_numpy()
    readings["true_type"] = key.loc[readings["case"], "lesion_type"].fillna("").astype(str).to_numpy() \
        if "lesion_type" in key else ""
    return readings, key, study


def complete_readers(readings: pd.DataFrame, n_cases: int) -> tuple[list[str], dict[str, int]]:
    """Readers with every case read in both arms, and the readings count of the others."""
    counts = readings.groupby("reader").size()
    complete = [r for r, n in counts.items() if n == 2 * n_cases]
    return complete, {r: int(n) for r, n in counts.items() if n != 2 * n_cases}


def _ratings(readings: pd.DataFrame, column: str) -> Ratings:
    frame = readings.rename(columns={"arm": "modality"})[["reader", "modality", "case", "truth", column]]
    return ratings_from_frame(frame.rename(columns={column: "rating"}), "the study's answers", MODALITY_ORDER)


def _roc_points(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(truth, scores, drop_intermediate=False)
    return fpr, tpr


def _roc_figure(readings: pd.DataFrame, readers: list[str], model: pd.Series | None) -> bytes:
    import matplotlib.pyplot as plt

    from fusion_model.report.figures import png_bytes

    n = len(readers)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax, reader in zip(axes.ravel(), readers):
        mine = readings[readings["reader"] == reader]
        for arm, colour in (("unaided", "#4a6fa5"), ("aided", "#c9541f")):
            part = mine[mine["arm"] == arm].sort_values("case")
            fpr, tpr = _roc_points(part["truth"].to_numpy(), part["likelihood"].to_numpy(float))
            auc = nan_safe_auc(part["truth"], part["likelihood"])
            ax.plot(fpr, tpr, color=colour, lw=1.6, marker="o", ms=2.5, label=f"{arm} {auc:.3f}")
        if model is not None:
            part = mine[mine["arm"] == "aided"].sort_values("case")
            scores = model.loc[part["case"]].to_numpy(float)
            fpr, tpr = _roc_points(part["truth"].to_numpy(), scores)
            ax.plot(fpr, tpr, color="#777", lw=1, ls="--", label=f"model {nan_safe_auc(part['truth'], scores):.3f}")
        ax.plot([0, 1], [0, 1], color="#ccc", lw=0.8)
        ax.set_title(f"reader {reader}", fontsize=9)
        ax.set_xlabel("1 - specificity", fontsize=8)
        ax.set_ylabel("sensitivity", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
        ax.set_aspect("equal")
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.tight_layout()
    return png_bytes(fig)


def _changes(readings: pd.DataFrame, readers: list[str], threshold: float = 50) -> dict:
    """Per reader: cases whose call (likelihood >= threshold) differs between the arms, toward or against the
    truth, and the mean shift of the likelihood toward the truth (points)."""
    out = {}
    for reader in readers:
        mine = readings[readings["reader"] == reader].pivot(index="case", columns="arm", values="likelihood")
        truth = readings[readings["reader"] == reader].groupby("case")["truth"].first().loc[mine.index]
        unaided_call, aided_call = mine["unaided"] >= threshold, mine["aided"] >= threshold
        right_before, right_after = unaided_call == (truth == 1), aided_call == (truth == 1)
        shift = np.where(truth == 1, mine["aided"] - mine["unaided"], mine["unaided"] - mine["aided"])
        out[reader] = {"cases": int(len(mine)), "changed": int((unaided_call != aided_call).sum()),
                       "toward_truth": int((~right_before & right_after).sum()),
                       "against_truth": int((right_before & ~right_after).sum()),
                       "mean_shift_toward_truth": float(np.mean(shift))}
    total = {k: int(sum(v[k] for v in out.values())) for k in ("cases", "changed", "toward_truth", "against_truth")}
    total["mean_shift_toward_truth"] = float(np.mean([v["mean_shift_toward_truth"] for v in out.values()]))
    return {"per_reader": out, "all": total, "threshold": threshold}


def analyze_study(study_dir: Path | None, out: Path, ratings_csv: Path | None = None, covariance: str = "delong",
                  positive_at: float | None = None, overwrite: bool = False) -> dict:
    """Analyse a study (or a ratings file) into ``out``: report.html, metrics.json, ratings.csv."""
    from fusion_model.report import data_uri, render, write_report_dir

    check_output_dir(out, overwrite)
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    files: dict[str, str | bytes] = {}
    images: dict[str, bytes] = {}
    metrics: dict = {"created_utc": created, "covariance_method": covariance, "package_version": __version__}
    if ratings_csv is not None:
        ratings = read_ratings_csv(ratings_csv)
        threshold = positive_at if positive_at is not None else (3 if np.nanmax(ratings.values) <= 5 else 50)
        metrics.update(source=str(ratings_csv), readers=list(ratings.readers), modalities=list(ratings.modalities),
                       cases=len(ratings.cases), positives=ratings.positives, negatives=ratings.negatives,
                       incomplete_readers={}, threshold=threshold)
        metrics["analyses"] = {
            "auc": analyze_ratings(ratings, AUC, covariance).to_dict(),
            "sensitivity": analyze_ratings(ratings, FigureOfMerit("sensitivity", threshold), covariance).to_dict(),
            "specificity": analyze_ratings(ratings, FigureOfMerit("specificity", threshold), covariance).to_dict()}
        files["ratings.csv"] = ratings.to_frame().to_csv(index=False)
        title = f"MRMC analysis of {Path(ratings_csv).name}"
    else:
        readings, key, study = study_readings(Path(study_dir))
        readers, incomplete = complete_readers(readings, len(study.cases))
        if not readers:
            progress = ", ".join(f"{r}: {n} of {2 * len(study.cases)}" for r, n in incomplete.items())
            raise UserInputError(f"{study_dir}: no reader has read every case in both arms yet ({progress}); "
                                 "the analysis needs at least one complete reader")
        used = readings[readings["reader"].isin(readers)].copy()
        threshold = 50 if positive_at is None else positive_at
        likelihood = _ratings(used, "likelihood")
        score = _ratings(used, "scale5")
        metrics.update(source=str(study_dir), study=study.name, design=study.design, readers=readers,
                       modalities=MODALITY_ORDER, cases=len(study.cases), positives=likelihood.positives,
                       negatives=likelihood.negatives, incomplete_readers=incomplete, threshold=threshold)
        metrics["analyses"] = {
            "auc": analyze_ratings(likelihood, AUC, covariance).to_dict(),
            "auc_5_point": analyze_ratings(score, AUC, covariance).to_dict(),
            "sensitivity": analyze_ratings(likelihood, FigureOfMerit("sensitivity", threshold), covariance).to_dict(),
            "specificity": analyze_ratings(likelihood, FigureOfMerit("specificity", threshold), covariance).to_dict(),
            "sensitivity_5_point": analyze_ratings(score, FigureOfMerit("sensitivity", 3), covariance).to_dict(),
            "specificity_5_point": analyze_ratings(score, FigureOfMerit("specificity", 3), covariance).to_dict()}
        model = key["model_probability"] if "model_probability" in key else None
        if model is not None:
            cases = [c.code for c in study.cases]
            truth = key.loc[cases, "label"].astype(int).to_numpy()
            metrics["model_alone"] = {"auc": nan_safe_auc(truth, model.loc[cases].to_numpy(float))}
        typed = used[used["true_type"] != ""]
        metrics["lesion_type_accuracy"] = {
            arm: {"overall": float((typed[typed["arm"] == arm]["lesion_type"] == typed[typed["arm"] == arm]
                                    ["true_type"]).mean()) if len(typed) else None,
                  "per_reader": {r: float((g["lesion_type"] == g["true_type"]).mean())
                                 for r, g in typed[typed["arm"] == arm].groupby("reader")},
                  "cases_with_known_type": int(typed[typed["arm"] == arm]["case"].nunique())} for arm in ARMS}
        metrics["reading_seconds"] = {
            arm: {"median": float(used[used["arm"] == arm]["seconds"].median()),
                  "per_reader_median": {r: float(g["seconds"].median())
                                        for r, g in used[used["arm"] == arm].groupby("reader")}} for arm in ARMS}
        metrics["changes"] = _changes(used, readers, threshold)
        images["roc_per_reader.png"] = _roc_figure(used, readers, model)
        long = used.rename(columns={"arm": "modality", "likelihood": "rating"})[
            ["reader", "modality", "case", "truth", "rating", "scale5", "lesion_type", "confidence", "seconds"]]
        files["ratings.csv"] = long.to_csv(index=False)
        title = f"Reader study: {study.name}"
    metrics = json_safe(metrics)
    files["metrics.json"] = json.dumps(metrics, indent=1)
    files["report.html"] = render("reader_study.html.j2", m=metrics, title=title,
                                  images={k: data_uri(v) for k, v in images.items()}, package_version=__version__,
                                  created_utc=created)
    for name, content in images.items():
        files[name] = content
    write_report_dir(Path(out), files, overwrite=overwrite)
    return metrics
