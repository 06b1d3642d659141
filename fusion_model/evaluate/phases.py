"""The per-phase table of an evaluation: the same experiment trained on each CT phase alone against all phases
together (``compare_phases: true`` at training), on the same lesions of the evaluated cohort.

For each phase set, the primary variant's malignancy AUC (DeLong 95% CI) and, with lesion-type heads, each
type's one-vs-rest AUC (DeLong 95% CI) and the macro AUC (percentile CI from a lesion bootstrap); against all
phases, DeLong's paired test per target and type (difference, its 95% CI, two-sided p) and the macro AUC's
difference with a paired bootstrap CI (the same resampled lesions for both). The reference row is the model
trained on all phases, i.e. the evaluated model itself.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fusion_model import stats
from fusion_model.heads.subtype import (
    MACRO_BOOTSTRAP_RESAMPLES,
    SubtypeClasses,
    bootstrap_macro_auc,
    one_vs_rest_auc,
    small_classes,
)

def _auc_block(labels: np.ndarray, scores: np.ndarray) -> dict:
    try:
        d = stats.delong(labels, scores)
    except stats.SingleClassError:
        return {"auc": None, "auc_ci95": None}
    note = d.degenerate_note(0)  # no interval where DeLong's SE is 0 (e.g. AUC 1), rather than a zero-width one
    return {"auc": float(d.aucs[0]), "auc_ci95": None if note else list(d.ci(0)), **({"note": note} if note else {})}


def _paired(labels: np.ndarray, scores: np.ndarray, reference: np.ndarray) -> dict:
    try:
        test = stats.delong_paired_test(labels, scores, reference)
    except stats.SingleClassError:
        return {"difference": None, "difference_ci95": None, "p_value": None, "note": "one class only"}
    return {"difference": test.difference, "difference_ci95": list(test.ci) if test.ci else None,
            "p_value": test.p_value, "note": test.note}


def phase_comparison(labels: pd.Series, scores: dict[str, pd.Series], types: pd.Series | None = None,
                     type_probabilities: dict[str, pd.DataFrame] | None = None,
                     lesion_types: SubtypeClasses | None = None,
                     reference: str = "all", phases: dict[str, list[str]] | None = None,
                     variant: str | None = None) -> dict:
    """The table: ``scores`` maps a phase set's name to its malignancy probabilities (``reference`` the model
    on all phases), ``type_probabilities`` to its p_type_* frame (classes of ``lesion_types``); all on the same
    lesions (``labels``' index)."""
    index = labels.index
    y = labels.to_numpy(int)
    ref = scores[reference].reindex(index).to_numpy(float)
    out = {"reference": reference, "variant": variant, "lesions": len(index), "sets": []}
    subtype = None
    if type_probabilities and lesion_types and types is not None:
        classes = list(lesion_types.classes)
        codes = lesion_types.encode(types.reindex(index))
        kept = codes >= 0
        y_type = codes[kept]
        matrices = {name: frame.reindex(index).loc[kept, [f"p_type_{c}" for c in classes]].to_numpy(float)
                    for name, frame in type_probabilities.items()}
        names = [n for n in scores if n in matrices]
        macro = bootstrap_macro_auc(y_type, [matrices[n] for n in names]) if kept.sum() and names else None
        subtype = {"classes": classes, "lesions": int(kept.sum()), "names": names, "y": y_type,
                   "matrices": matrices, "macro": macro}
        out["subtype_classes"], out["subtype_lesions"] = classes, int(kept.sum())
        out["small_classes"] = small_classes(y_type, classes)
        out["bootstrap"] = {"resamples": MACRO_BOOTSTRAP_RESAMPLES, "seed": 0, "unit": "lesion"}
    for name, series in scores.items():
        p = series.reindex(index).to_numpy(float)
        row = {"name": name, "phases": (phases or {}).get(name, [name]), "is_reference": name == reference,
               "malignancy": {**_auc_block(y, p),
                              "vs_reference": None if name == reference else _paired(y, p, ref)}}
        if subtype is not None and name in subtype["matrices"]:
            row["subtype"] = _subtype_row(subtype, name, reference)
        out["sets"].append(row)
    return out


def _subtype_row(subtype: dict, name: str, reference: str) -> dict:
    y, classes = subtype["y"], subtype["classes"]
    matrix, ref = subtype["matrices"][name], subtype["matrices"].get(reference)
    per_class = {}
    for k, c in enumerate(classes):
        labels = (y == k).astype(int)
        block = _auc_block(labels, matrix[:, k])
        block["vs_reference"] = None if name == reference or ref is None else _paired(labels, matrix[:, k], ref[:, k])
        per_class[c] = block
    aucs = [b["auc"] for b in per_class.values() if b["auc"] is not None]
    row = {"per_class": per_class, "macro_auc": float(np.mean(aucs)) if aucs else None,
           "macro_auc_ci95": None, "macro_vs_reference": None}
    macro = subtype["macro"]
    if macro is not None:
        j = subtype["names"].index(name)
        row["macro_auc_ci95"] = [float(v) for v in np.quantile(macro[:, j], [0.025, 0.975])]
        if name != reference and reference in subtype["names"]:
            difference = macro[:, j] - macro[:, subtype["names"].index(reference)]
            low, high = np.quantile(difference, [0.025, 0.975])
            reference_macro = one_vs_rest_auc(y, subtype["matrices"][reference], classes, interval=False)["macro"]
            row["macro_vs_reference"] = {"difference": row["macro_auc"] - reference_macro,
                                         "difference_ci95": [float(low), float(high)],
                                         "reference_lower_beyond_ci": bool(low > 0)}
    return row

