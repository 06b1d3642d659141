"""The subtype section of an evaluation: how well each variant names the lesion type.

Per type (one-vs-rest): AUC with its DeLong 95% CI, sensitivity and positive predictive value of the most likely
type with Wilson CIs, and a flag where the type has fewer than SMALL_CLASS_LESIONS evaluated lesions (its AUC moves
by a large step with one lesion); overall: macro AUC with a lesion-bootstrap percentile CI, prevalence-weighted AUC, top-1 and balanced accuracy, the multi-class
Brier score (mean over lesions of the summed squared differences between the probabilities and the one-hot
truth; 0 is perfect, 2 the worst), and the confusion matrix (counts and rows normalised to the true type).
Lesions whose type is missing, ``other``, or a type the model has no class for are left out and counted.
With a synthetic cohort's truth.csv, the generator's exact posterior is scored the same way (the oracle).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fusion_model import stats
from fusion_model.heads.subtype import RARE, SMALL_CLASS_LESIONS, SubtypeClasses, macro_auc_ci, small_classes


def _class_block(y: np.ndarray, probabilities: np.ndarray, k: int, predicted: np.ndarray) -> dict:
    positives = int((y == k).sum())
    block: dict = {"lesions": positives, "prevalence": positives / len(y) if len(y) else None,
                   "small": positives < SMALL_CLASS_LESIONS}
    try:
        d = stats.delong((y == k).astype(int), probabilities[:, k])
        note = d.degenerate_note(0)  # e.g. AUC 1: DeLong's SE is 0, so no interval exists (not a zero-width one)
        block["auc"], block["auc_ci95"] = float(d.aucs[0]), None if note else list(d.ci(0))
        if note:
            block["auc_note"] = note
    except stats.SingleClassError:
        block["auc"], block["auc_ci95"] = None, None
    true_positive = int(((predicted == k) & (y == k)).sum())
    called = int((predicted == k).sum())
    block["sensitivity"] = true_positive / positives if positives else None
    block["sensitivity_ci95"] = stats.wilson_ci(true_positive, positives)
    block["ppv"] = true_positive / called if called else None
    block["ppv_ci95"] = stats.wilson_ci(true_positive, called)
    return block


def score_types(y: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> dict:
    """Every figure of one set of type probabilities (rows: lesions, columns: ``classes``) against the class
    indices ``y``."""
    predicted = probabilities.argmax(axis=1)
    per_class = {c: _class_block(y, probabilities, k, predicted) for k, c in enumerate(classes)}
    aucs = {c: b["auc"] for c, b in per_class.items() if b["auc"] is not None}
    weights = {c: per_class[c]["prevalence"] for c in aucs}
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    np.add.at(confusion, (y, predicted), 1)
    rows = confusion.sum(axis=1, keepdims=True)
    recalls = [per_class[c]["sensitivity"] for c in classes if per_class[c]["sensitivity"] is not None]
    onehot = np.eye(len(classes))[y]
    correct = int((predicted == y).sum())
    return {
        "lesions": len(y), "per_class": per_class,
        "macro_auc": float(np.mean(list(aucs.values()))) if aucs else None,
        "macro_auc_ci95": macro_auc_ci(y, probabilities) if aucs else None,
        "small_classes": small_classes(y, classes),
        "weighted_auc": float(sum(weights[c] * a for c, a in aucs.items()) / sum(weights.values())) if aucs else None,
        "top1_accuracy": correct / len(y) if len(y) else None, "top1_accuracy_ci95": stats.wilson_ci(correct, len(y)),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else None,
        "brier": float(np.mean(((probabilities - onehot) ** 2).sum(axis=1))) if len(y) else None,
        "confusion": {"classes": classes, "counts": confusion.tolist(),
                      "row_normalised": np.divide(confusion, np.maximum(rows, 1)).tolist()},
    }


def oracle_probabilities(cohort_root: Path, lesion_ids, classes: list[str], merged: list[str]) -> np.ndarray | None:
    """The generator's exact type posterior (truth.csv) on the model's classes (merged types summed)."""
    truth_path = Path(cohort_root) / "truth.csv"
    if not truth_path.is_file():
        return None
    truth = pd.read_csv(truth_path, dtype={"lesion_id": str}).set_index("lesion_id")
    columns = {c: [f"oracle_type_{t}" for t in (merged if c == RARE else [c])] for c in classes}
    if not all(col in truth for cols in columns.values() for col in cols) or not set(lesion_ids) <= set(truth.index):
        return None
    rows = truth.loc[list(lesion_ids)]
    values = np.column_stack([rows[cols].sum(axis=1).to_numpy(float) for cols in columns.values()])
    return values / values.sum(axis=1, keepdims=True)


def subtype_metrics(types: pd.Series, probabilities: dict[str, pd.DataFrame], lesion_types: SubtypeClasses,
                    cohort_root: Path | None = None) -> dict:
    """The subtype section: ``types`` the cohort's lesion_type per lesion, ``probabilities`` each variant's
    p_type_* frame (same index), ``lesion_types`` the model's classes (merged types, training lesions per class when known)."""
    classes, merged = list(lesion_types.classes), list(lesion_types.merged)
    codes = lesion_types.encode(types)
    kept = pd.Series(codes >= 0, index=types.index)
    y = codes[codes >= 0]
    left_out = {"type missing": int(types.isna().sum()), "type other": int((types == "other").sum()),
                "type without a class in the model": int((types.notna() & (types != "other") & ~kept).sum())}
    out = {"classes": classes, "merged_into_rare": merged, "lesions": int(kept.sum()), "left_out": left_out,
           "small_class_lesions": SMALL_CLASS_LESIONS,
           "training_lesions": lesion_types.counts or None, "variants": {}, "oracle": None}
    if kept.sum() == 0:
        out["note"] = "no lesion of this cohort has a type the model names"
        return out
    for variant, frame in probabilities.items():
        out["variants"][variant] = score_types(y, frame.loc[kept].to_numpy(float), classes)
    if cohort_root is not None:
        oracle = oracle_probabilities(cohort_root, types.index[kept], classes, merged)
        if oracle is not None:
            out["oracle"] = score_types(y, oracle, classes)
    return out
