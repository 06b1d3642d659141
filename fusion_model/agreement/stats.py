"""Agreement statistics: intraclass correlation (pingouin) and Bland-Altman limits of agreement.

ICC(2,1): two-way random effects, absolute agreement, single rater (Shrout & Fleiss 1979; McGraw & Wong's
ICC(A,1)): would another reader, drawn from the same population of readers, give the same value? ICC(3,1):
two-way mixed effects, consistency (ICC(C,1)): do the readers rank and space the lesions alike, whatever a
constant offset between them? Bands after Koo & Li (2016): below 0.5 poor, 0.5-0.75 moderate, 0.75-0.9 good,
above 0.9 excellent; a feature under 0.75 is flagged as not reproducible, under 0.9 as short of excellent.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats as sps

ICC_BANDS = ((0.9, "excellent"), (0.75, "good"), (0.5, "moderate"))
POOR = "poor"
# pingouin names the forms ICC2 / ICC3 (before 0.6) or ICC(A,1) / ICC(C,1) (0.6 on)
_ICC_FORMS = {"icc2_1": ("ICC(A,1)", "ICC2"), "icc3_1": ("ICC(C,1)", "ICC3")}


def icc_band(value: float | None) -> str | None:
    """Koo & Li's band of an ICC: excellent, good, moderate or poor."""
    if value is None or not math.isfinite(value):
        return None
    return next((name for bound, name in ICC_BANDS if value >= bound), POOR)


def intraclass_correlation(ratings) -> dict:
    """ICC(2,1) and ICC(3,1) with 95% CIs, F test and p value, of a (targets x raters) array (pingouin).

    Targets with a missing rating are left out. Returns ``{"n": targets used, "icc2_1": {...}, "icc3_1": {...}}``
    with ``icc``, ``ci95``, ``f``, ``p_value`` per form; the forms are None (with a ``note``) where fewer than 3
    targets remain or the targets do not vary (an ICC is a share of variance, undefined without any).
    """
    import pingouin as pg

    ratings = np.asarray(ratings, dtype=float)
    ratings = ratings[np.isfinite(ratings).all(axis=1)]
    n, k = ratings.shape
    out: dict = {"n": int(n), "raters": int(k), "icc2_1": None, "icc3_1": None, "note": None}
    if n < 3:
        out["note"] = f"{n} lesion(s) with every reading: an ICC needs at least 3"
        return out
    scale = max(1.0, float(np.abs(ratings).max()))
    if np.ptp(ratings) <= 1e-9 * scale:
        out["note"] = "every reading is the same value: no variance between lesions, so no ICC"
        return out
    if np.ptp(ratings, axis=1).max() <= 1e-9 * scale:  # no residual variance: F and the CIs are infinite
        exact = {"icc": 1.0, "ci95": None, "f": None, "p_value": None, "band": icc_band(1.0)}
        out.update(icc2_1=dict(exact), icc3_1=dict(exact), note="the readers' values are identical")
        return out
    long = pd.DataFrame({"target": np.repeat(np.arange(n), k), "rater": np.tile(np.arange(k), n),
                         "rating": ratings.ravel()})
    saved = dict(pg.options)
    pg.options["round"] = None
    pg.options["round.column.CI95"] = None
    try:
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore")
            table = pg.intraclass_corr(data=long, targets="target", raters="rater", ratings="rating")
    finally:
        pg.options.clear()
        pg.options.update(saved)
    table = table.set_index("Type")
    for key, names in _ICC_FORMS.items():
        name = next(n for n in names if n in table.index)
        row = table.loc[name]
        value = float(row["ICC"])
        if not math.isfinite(value):
            out["note"] = "the ICC is undefined for these readings (no residual variance)"
            continue
        lo, hi = (float(v) for v in row["CI95"])
        out[key] = {"icc": value, "ci95": [lo, hi] if math.isfinite(lo) and math.isfinite(hi) else None, "f": float(row["F"]), "p_value": float(row["pval"]),
                    "band": icc_band(value)}
    return out


def bland_altman(reader_a, reader_b) -> dict:
    """Bland-Altman agreement of paired measurements (B minus A): bias with its 95% CI, SD of the differences,
    95% limits of agreement (bias +/- 1.96 SD) with their approximate 95% CIs (Bland & Altman 1999), and the
    share of pairs outside the limits. Pairs with a missing value are left out."""
    a, b = np.asarray(reader_a, dtype=float), np.asarray(reader_b, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = len(a)
    if n < 3:
        return {"n": int(n), "bias": None, "sd": None, "limits": None, "note": "fewer than 3 pairs"}
    diff = b - a
    bias, sd = float(diff.mean()), float(diff.std(ddof=1))
    t = float(sps.t.ppf(0.975, n - 1))
    se_bias, se_limit = sd / math.sqrt(n), sd * math.sqrt(3.0 / n)
    limits = [bias - 1.96 * sd, bias + 1.96 * sd]
    return {
        "n": int(n), "bias": bias, "bias_ci95": [bias - t * se_bias, bias + t * se_bias], "sd": sd,
        "limits": limits,
        "limits_ci95": [[limit - t * se_limit, limit + t * se_limit] for limit in limits],
        "outside_limits": float(np.mean((diff < limits[0]) | (diff > limits[1]))),
        "mean_absolute_difference": float(np.abs(diff).mean()),
        "note": None,
    }
