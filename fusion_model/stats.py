"""Statistics for ROC reports: small pure functions on label and score arrays.

- AUC as the Mann-Whitney statistic (ties count one half), with DeLong's variance computed by
  the midrank algorithm of Sun & Xu (2014, IEEE Signal Processing Letters 21:1389), and the
  paired DeLong test between two scores on the same lesions (DeLong et al. 1988,
  Biometrics 44:837);
- the AUC's stratified bootstrap CI (positives and negatives resampled separately, seeded): the AUC is a
  figure conditional on the two class sizes;
- proportions with Wilson score intervals, likelihood ratios with the log method
  (Simel et al. 1991, J Clin Epidemiol 44:763);
- calibration intercept (calibration-in-the-large: logistic model with logit(p) as offset)
  and slope (logistic regression on logit(p)), fitted by statsmodels' GLM, which reports
  non-convergence and separation; probabilities are clipped to [1e-6, 1 - 1e-6] before the
  logit (the count of clipped predictions is reported); the observed/expected ratio (log-scale delta-method
  interval for a ratio of two means); a LOWESS
  smoothed calibration curve; Brier score (Van Calster et al. 2019); seeded ordinary (not stratified)
  bootstrap CIs of the calibration figures and of net benefit, which depend on the event rate;
- the logit-transformed DeLong interval for an AUC, which stays inside (0, 1) and covers better
  near 1 and in small samples than AUC +/- 1.96 SE (e.g. Pepe 2003, section 5.2);
- net benefit for decision curves (Vickers & Elkin 2006, Med Decis Making 26:565).

Inputs are 1-D arrays; labels are 0/1 with 1 = malignant. Nothing here reads files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from fusion_model.errors import UserInputError

Z95 = float(sps.norm.ppf(0.975))


class SingleClassError(UserInputError):
    """AUC, sensitivity/specificity pairs and DeLong need lesions of both classes."""


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=float)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be 1-D of one length")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN; drop those lesions first")
    labels = labels.astype(int)
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return labels, scores


def require_both_classes(labels, what: str = "the cohort") -> None:
    """Refuse labels of one class only (no AUC can be computed)."""
    labels = np.asarray(labels).astype(int)
    positives, negatives = int(labels.sum()), int(len(labels) - labels.sum())
    if positives == 0 or negatives == 0:
        only = "benign" if positives == 0 else "malignant"
        raise SingleClassError(f"{what} has only {only} lesions (n={len(labels)}); an AUC needs benign and "
                               "malignant lesions")


# ----------------------------------------------------------------------------- AUC and DeLong
def nan_safe_auc(labels, scores) -> float:
    """AUC over the lesions that have a score; NaN when they hold one class only (for model selection)."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=float)
    keep = ~np.isnan(scores)
    if len(np.unique(labels[keep])) < 2:
        return float("nan")
    return float(roc_auc_score(labels[keep], scores[keep]))


def midranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given the mean of their ranks."""
    return sps.rankdata(x, method="average")


def auc_mann_whitney(labels, scores) -> float:
    """P(score of a malignant lesion > score of a benign one) + 0.5 P(equal)."""
    labels, scores = _check(labels, scores)
    require_both_classes(labels)
    m, n = int(labels.sum()), int((1 - labels).sum())
    ranks = midranks(scores)
    return float((ranks[labels == 1].sum() - m * (m + 1) / 2) / (m * n))


@dataclass(frozen=True)
class DeLong:
    """AUCs of k scores on the same lesions and their DeLong covariance matrix (k x k)."""

    aucs: np.ndarray
    covariance: np.ndarray
    positives: int
    negatives: int

    def se(self, i: int = 0) -> float:
        """DeLong standard error of score ``i``'s AUC."""
        return float(math.sqrt(max(self.covariance[i, i], 0.0)))

    def ci(self, i: int = 0, z: float = Z95) -> tuple[float, float]:
        """AUC +/- z SE for score ``i``, clipped to [0, 1]."""
        auc, se = float(self.aucs[i]), self.se(i)
        return max(0.0, auc - z * se), min(1.0, auc + z * se)

    def logit_ci(self, i: int = 0, z: float = Z95) -> tuple[float, float] | None:
        """The interval on the logit scale, back-transformed (SE by the delta method); None where the AUC is
        0 or 1 or its SE is 0 (no interval exists)."""
        auc, se = float(self.aucs[i]), self.se(i)
        if not 0 < auc < 1 or se <= 0:
            return None
        centre, half = math.log(auc / (1 - auc)), z * se / (auc * (1 - auc))
        return _expit(centre - half), _expit(centre + half)

    def degenerate_note(self, i: int = 0) -> str | None:
        """Why score ``i`` has no interval (its DeLong SE is 0), or None."""
        if self.se(i) > 0:
            return None
        auc = float(self.aucs[i])
        if auc in (0.0, 1.0):
            return ("the scores separate the classes perfectly on these lesions, so DeLong's SE is 0 and no "
                    "interval can be given; a larger sample would show the uncertainty")
        return ("DeLong's SE is 0 (e.g. every lesion has the same score), so no interval can be given")


def _expit(x: float) -> float:
    return float(1 / (1 + math.exp(-x)))


def delong(labels, *score_arrays) -> DeLong:
    """AUC of each score array and DeLong's covariance, via midranks: O(k N log N)."""
    if not score_arrays:
        raise ValueError("give at least one score array")
    checked = [_check(labels, s) for s in score_arrays]
    labels = checked[0][0]
    require_both_classes(labels)
    pos, neg = labels == 1, labels == 0
    m, n = int(pos.sum()), int(neg.sum())
    k = len(score_arrays)
    v10 = np.empty((k, m))  # per malignant lesion: share of benign lesions it outranks
    v01 = np.empty((k, n))  # per benign lesion: share of malignant lesions that outrank it
    aucs = np.empty(k)
    for r, (_, scores) in enumerate(checked):
        x, y = scores[pos], scores[neg]
        tx, ty, tz = midranks(x), midranks(y), midranks(np.concatenate([x, y]))
        aucs[r] = (tz[:m].sum() - m * (m + 1) / 2) / (m * n)
        v10[r] = (tz[:m] - tx) / n
        v01[r] = 1.0 - (tz[m:] - ty) / m
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((k, k))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((k, k))
    return DeLong(aucs, s10 / m + s01 / n, m, n)


@dataclass(frozen=True)
class PairedTest:
    """Paired DeLong comparison of two scores on the same lesions."""

    auc_a: float
    auc_b: float
    difference: float
    ci: tuple[float, float] | None
    z: float | None
    p_value: float | None
    note: str | None = None


def delong_paired_test(labels, scores_a, scores_b) -> PairedTest:
    """DeLong's test of AUC(a) = AUC(b) on the same lesions (two-sided); no test (None and a note) where
    the variance of the difference is 0."""
    d = delong(labels, scores_a, scores_b)
    diff = float(d.aucs[0] - d.aucs[1])
    var = float(d.covariance[0, 0] + d.covariance[1, 1] - 2 * d.covariance[0, 1])
    if var <= 1e-15:
        both_perfect = all(a in (0.0, 1.0) for a in d.aucs)
        note = ("both scores separate the classes perfectly on these lesions" if both_perfect
                else "the two scores rank these lesions identically")
        return PairedTest(float(d.aucs[0]), float(d.aucs[1]), diff, None, None, None,
                          note + ": the variance of the AUC difference is 0, so DeLong's test cannot be computed")
    se = math.sqrt(var)
    z = diff / se
    p = float(2 * sps.norm.sf(abs(z)))
    return PairedTest(float(d.aucs[0]), float(d.aucs[1]), diff, (diff - Z95 * se, diff + Z95 * se), z, p)


def bootstrap_auc(labels, scores, resamples: int = 2000, seed: int = 0, level: float = 0.95,
                  chunk: int = 250) -> tuple[float, float, np.ndarray]:
    """Percentile CI of the AUC from a stratified bootstrap; returns (low, high, the resampled AUCs)."""
    labels, scores = _check(labels, scores)
    require_both_classes(labels)
    rng = np.random.default_rng(seed)
    x, y = scores[labels == 1], scores[labels == 0]
    m, n = len(x), len(y)
    out = []
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        xs = x[rng.integers(0, m, size=(b, m))]
        ys = y[rng.integers(0, n, size=(b, n))]
        ranks = sps.rankdata(np.concatenate([xs, ys], axis=1), method="average", axis=1)
        out.append((ranks[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n))
    aucs = np.concatenate(out)
    alpha = (1 - level) / 2
    low, high = np.quantile(aucs, [alpha, 1 - alpha])
    return float(low), float(high), aucs


# ------------------------------------------------------------------------ operating points
def wilson_ci(successes: int, total: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval; None when there is nothing to count."""
    from statsmodels.stats.proportion import proportion_confint

    if total <= 0:
        return None
    low, high = proportion_confint(successes, total, alpha=float(2 * sps.norm.sf(z)), method="wilson")
    return (0.0 if successes == 0 else max(0.0, float(low))), (1.0 if successes == total else min(1.0, float(high)))


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def likelihood_ratios(tp: int, fp: int, tn: int, fn: int, z: float = Z95) -> dict:
    """LR+ and LR- with log-method CIs; a 0.5 continuity correction where a cell is 0."""
    out = {}
    a, b, c, d = float(tp), float(fp), float(fn), float(tn)
    if a + c == 0 or b + d == 0:
        return {"lr_positive": {"value": None, "ci": None}, "lr_negative": {"value": None, "ci": None}}
    corrected = min(a, b, c, d) == 0
    if corrected:
        a, b, c, d = a + 0.5, b + 0.5, c + 0.5, d + 0.5
    sens, spec = a / (a + c), d / (b + d)
    for name, value, se in (
        ("lr_positive", sens / (1 - spec), math.sqrt(1 / a - 1 / (a + c) + 1 / b - 1 / (b + d))),
        ("lr_negative", (1 - sens) / spec, math.sqrt(1 / c - 1 / (a + c) + 1 / d - 1 / (b + d))),
    ):
        out[name] = {"value": value, "ci": (value * math.exp(-z * se), value * math.exp(z * se)),
                     "continuity_corrected": corrected}
    return out


def confusion(labels, scores, threshold: float) -> dict[str, int]:
    """Counts with 'suspicious' meaning score >= threshold."""
    labels, scores = _check(labels, scores)
    called = scores >= threshold
    return {"tp": int((called & (labels == 1)).sum()), "fp": int((called & (labels == 0)).sum()),
            "tn": int((~called & (labels == 0)).sum()), "fn": int((~called & (labels == 1)).sum())}


def operating_point(labels, scores, threshold: float) -> dict:
    """Sensitivity, specificity, accuracy, PPV, NPV (Wilson CIs), LR+ / LR- and the confusion matrix."""
    counts = confusion(labels, scores, threshold)
    tp, fp, tn, fn = counts["tp"], counts["fp"], counts["tn"], counts["fn"]
    out: dict = {"threshold": float(threshold), "confusion": counts}
    for name, num, den in (("sensitivity", tp, tp + fn), ("specificity", tn, tn + fp),
                           ("accuracy", tp + tn, tp + tn + fp + fn), ("ppv", tp, tp + fp), ("npv", tn, tn + fn)):
        out[name] = {"value": _ratio(num, den), "ci": wilson_ci(num, den), "n": den}
    out.update(likelihood_ratios(tp, fp, tn, fn))
    return out


def threshold_for_sensitivity(labels, scores, target: float) -> float:
    """The highest threshold whose sensitivity on these lesions reaches ``target``."""
    labels, scores = _check(labels, scores)
    positives = np.sort(scores[labels == 1])[::-1]
    k = max(1, math.ceil(target * len(positives) - 1e-12))
    return float(positives[k - 1])


def threshold_for_specificity(labels, scores, target: float) -> float:
    """The lowest threshold whose specificity on these lesions reaches ``target``."""
    labels, scores = _check(labels, scores)
    negatives = np.sort(scores[labels == 0])
    k = max(1, math.ceil(target * len(negatives) - 1e-12))  # at least k benign lesions must be below
    candidate = negatives[k - 1]
    above = scores[scores > candidate]
    return float(above.min()) if above.size else float(np.nextafter(candidate, np.inf))


# ------------------------------------------------------------------------------ calibration
LOGIT_CLIP = 1e-6  # probabilities are clipped to [LOGIT_CLIP, 1 - LOGIT_CLIP] before the logit


def _logit(p: np.ndarray, eps: float = LOGIT_CLIP) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), eps, 1 - eps)
    return np.log(p / (1 - p))


def _glm_logistic(y: np.ndarray, X: np.ndarray, offset: np.ndarray | None = None):
    """statsmodels' binomial GLM; (fitted result, None) or (None, why it has no estimate)."""
    import warnings

    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationError, PerfectSeparationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", PerfectSeparationWarning)
        warnings.simplefilter("error", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            result = sm.GLM(y, X, family=sm.families.Binomial(), offset=offset).fit(maxiter=100)
        except (PerfectSeparationError, PerfectSeparationWarning):
            return None, "perfect separation: the estimate grows without bound"
        except ConvergenceWarning:
            return None, "the fit did not converge"
    if not result.converged or not np.all(np.isfinite(result.params)):
        return None, "the fit did not converge"
    return result, None


def separation(labels: np.ndarray, scores: np.ndarray) -> bool:
    """Whether a threshold on the scores splits the classes with no overlap (ties at it allowed)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    return bool(pos.size and neg.size and (neg.max() <= pos.min() or pos.max() <= neg.min()))


def calibration_intercept_slope(labels, probabilities) -> dict:
    """Calibration intercept (slope fixed at 1) and slope; None with a note where one does not exist."""
    labels, p = np.asarray(labels).astype(int), np.asarray(probabilities, dtype=float)
    lp = _logit(p)
    ones = np.ones((len(p), 1))
    out: dict = {"intercept": None, "slope": None}
    notes = []
    fit, why = _glm_logistic(labels, ones, offset=lp)
    if fit is None:
        notes.append(f"calibration intercept: {why}")
    else:
        out["intercept"] = float(fit.params[0])
    if np.ptp(lp) == 0:
        notes.append("calibration slope: every lesion has the same predicted probability, so the slope is "
                     "undefined")
    elif separation(labels, lp):
        notes.append("calibration slope: the predictions separate the classes perfectly, so the slope does not "
                     "exist (its estimate grows without bound)")
    else:
        fit, why = _glm_logistic(labels, np.column_stack([ones, lp]))
        if fit is None:
            notes.append(f"calibration slope: {why}")
        else:
            out["slope"] = float(fit.params[1])
    if notes:
        out["note"] = "; ".join(notes)
    return out


def observed_expected(labels, probabilities, z: float = Z95) -> dict:
    """Observed / expected number of malignant lesions with a log-scale delta-method CI for the ratio of two
    means over the same lesions (the outcome's variance, the predictions' variance and their covariance: a
    Poisson interval on the observed count alone is far too wide for a model whose predictions carry the
    information)."""
    y, p = np.asarray(labels, dtype=float), np.asarray(probabilities, dtype=float)
    observed, expected = float(np.sum(y)), float(np.sum(p))
    if observed == 0 or expected == 0:
        return {"value": None if expected == 0 else 0.0, "ci": None}
    ratio, n = observed / expected, len(y)
    y_mean, p_mean = observed / n, expected / n
    covariance = np.cov(y, p, ddof=1) if n > 1 else np.zeros((2, 2))
    variance = (covariance[0, 0] / y_mean ** 2 + covariance[1, 1] / p_mean ** 2
                - 2 * covariance[0, 1] / (y_mean * p_mean)) / n
    half = z * math.sqrt(max(float(variance), 0.0))
    return {"value": ratio, "ci": [ratio * math.exp(-half), ratio * math.exp(half)]}


def smoothed_calibration(labels, probabilities, points: int = 50, frac: float = 2 / 3) -> dict | None:
    """LOWESS of the outcome on the predicted probability over the predictions' range (None when they are
    all equal)."""
    from statsmodels.nonparametric.smoothers_lowess import lowess

    labels, p = np.asarray(labels, dtype=float), np.asarray(probabilities, dtype=float)
    if np.ptp(p) == 0:
        return None
    grid = np.linspace(p.min(), p.max(), points)
    observed = np.clip(lowess(labels, p, frac=frac, it=0, xvals=grid), 0.0, 1.0)
    return {"predicted": grid.tolist(), "observed": observed.tolist(), "method": f"LOWESS (frac {frac:.2f})"}


def calibration(labels, probabilities) -> dict:
    """Brier score, calibration intercept and slope (None and a note where undefined), observed/expected
    ratio, LOWESS curve; ideal: intercept 0, slope 1, O/E 1."""
    labels, p = _check(labels, probabilities)
    if (p < 0).any() or (p > 1).any():
        raise ValueError("calibration needs probabilities in [0, 1]")
    out = {"brier": float(np.mean((p - labels) ** 2)), **calibration_intercept_slope(labels, p),
           "mean_predicted": float(p.mean()), "observed_rate": float(labels.mean()),
           "observed_expected": observed_expected(labels, p),
           "clipped_predictions": int(((p < LOGIT_CLIP) | (p > 1 - LOGIT_CLIP)).sum()),
           "smoothed": smoothed_calibration(labels, p)}
    return out


def _weighted_intercepts(y: np.ndarray, lp: np.ndarray, w: np.ndarray, iterations: int = 60) -> np.ndarray:
    """Calibration intercept (logit(p) as offset) of each row of bootstrap weights ``w`` (resamples x lesions),
    by Newton's method on the binomial log-likelihood; NaN where it does not exist (one class only)."""
    events, total = w @ y, w.sum(axis=1)
    exists = (events > 0) & (events < total)
    a = np.zeros(len(w))
    for _ in range(iterations):
        mu = 1 / (1 + np.exp(-(a[:, None] + lp[None, :])))
        gradient = w @ y - (w * mu).sum(axis=1)
        information = (w * mu * (1 - mu)).sum(axis=1)
        step = np.clip(np.divide(gradient, information, out=np.zeros_like(a), where=information > 0), -5, 5)
        a = np.where(exists, a + step, 0.0)
        if np.all(np.abs(step[exists]) < 1e-10):
            break
    return np.where(exists, a, np.nan)


def _weighted_slopes(y: np.ndarray, lp: np.ndarray, w: np.ndarray, iterations: int = 60) -> np.ndarray:
    """Calibration slope (logistic regression on logit(p)) of each row of bootstrap weights, by Newton's method;
    NaN where it does not exist: equal predictions, predictions that separate the classes, no convergence."""
    drawn = w > 0
    pos, neg = drawn & (y[None, :] == 1), drawn & (y[None, :] == 0)
    big = np.inf
    pos_min, pos_max = np.where(pos, lp, big).min(axis=1), np.where(pos, lp, -big).max(axis=1)
    neg_min, neg_max = np.where(neg, lp, big).min(axis=1), np.where(neg, lp, -big).max(axis=1)
    both = pos.any(axis=1) & neg.any(axis=1)
    spread = np.where(drawn, lp, -big).max(axis=1) > np.where(drawn, lp, big).min(axis=1)
    exists = both & spread & ~((neg_max <= pos_min) | (pos_max <= neg_min))
    theta = np.zeros((len(w), 2))
    converged = np.zeros(len(w), dtype=bool)
    for _ in range(iterations):
        eta = theta[:, :1] + theta[:, 1:] * lp[None, :]
        mu = 1 / (1 + np.exp(-np.clip(eta, -50, 50)))
        r, v = w * (y[None, :] - mu), w * mu * (1 - mu)
        g = np.stack([r.sum(axis=1), r @ lp], axis=1)
        h00, h01, h11 = v.sum(axis=1), v @ lp, v @ (lp * lp)
        det = h00 * h11 - h01 * h01
        ok = exists & (det > 0)
        safe = np.where(ok, det, 1.0)
        step = np.stack([(h11 * g[:, 0] - h01 * g[:, 1]) / safe, (h00 * g[:, 1] - h01 * g[:, 0]) / safe], axis=1)
        step = np.where(ok[:, None], np.clip(step, -5, 5), 0.0)
        theta += step
        converged = np.abs(step).max(axis=1) < 1e-8
        if np.all(converged[exists]):
            break
    return np.where(exists & converged, theta[:, 1], np.nan)


def bootstrap_calibration(labels, probabilities, thresholds, resamples: int = 2000, seed: int = 0,
                          level: float = 0.95, chunk: int = 250) -> dict:
    """Percentile CIs from a seeded ordinary bootstrap (lesions resampled with replacement, so the number of
    malignant lesions varies from resample to resample as it does from sample to sample): Brier score,
    calibration intercept and slope, and net benefit at each threshold. Each figure depends on the event rate,
    so a bootstrap that fixes the number of events per class (as the AUC's stratified one does, rightly for a
    figure conditional on the class sizes) makes their intervals far too narrow. Resamples where the intercept
    or slope does not exist (one class drawn, separation) are counted and left out of that figure's interval."""
    labels, p = _check(labels, probabilities)
    require_both_classes(labels)
    rng = np.random.default_rng(seed)
    n = len(labels)
    y, lp = labels.astype(float), _logit(p)
    t = np.asarray(thresholds, dtype=float)
    called = (p[None, :] >= t[:, None]).astype(float)  # thresholds x lesions
    harm = t / (1 - t)
    briers, intercepts, slopes, benefits = [], [], [], []
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        w = rng.multinomial(n, np.full(n, 1 / n), size=b).astype(float)  # how often each lesion is drawn
        briers.append(w @ ((p - y) ** 2) / n)
        intercepts.append(_weighted_intercepts(y, lp, w))
        slopes.append(_weighted_slopes(y, lp, w))
        benefits.append(((w * y) @ called.T - (w * (1 - y)) @ called.T * harm[None, :]) / n)
    briers, intercepts, slopes = np.concatenate(briers), np.concatenate(intercepts), np.concatenate(slopes)
    benefits = np.concatenate(benefits)
    alpha = (1 - level) / 2

    def interval(values) -> list[float] | None:
        values = values[np.isfinite(values)]
        return None if values.size < 0.5 * resamples else np.quantile(values, [alpha, 1 - alpha]).tolist()

    return {"brier_ci": interval(briers), "intercept_ci": interval(intercepts), "slope_ci": interval(slopes),
            "resamples_without_slope": int(np.isnan(slopes).sum()),
            "resamples_without_intercept": int(np.isnan(intercepts).sum()),
            "net_benefit_ci": {"low": np.quantile(benefits, alpha, axis=0).tolist(),
                               "high": np.quantile(benefits, 1 - alpha, axis=0).tolist()}}


def reliability_bins(labels, probabilities, bins: int = 10) -> list[dict]:
    """Observed rate per bin of predicted probability (equal-width bins; empty bins left out)."""
    labels, p = _check(labels, probabilities)
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        if count:
            events = int(labels[inside].sum())
            out.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": count,
                        "mean_predicted": float(p[inside].mean()), "observed": events / count,
                        "observed_ci": wilson_ci(events, count)})
    return out


# ---------------------------------------------------------------------------- decision curve
def net_benefit(labels, probabilities, thresholds) -> np.ndarray:
    """Net benefit of treating lesions with p >= t, for each threshold probability t."""
    labels, p = _check(labels, probabilities)
    t = np.asarray(thresholds, dtype=float)
    n = len(labels)
    called = p[None, :] >= t[:, None]
    tp = (called & (labels == 1)).sum(axis=1)
    fp = (called & (labels == 0)).sum(axis=1)
    return tp / n - fp / n * t / (1 - t)


def net_benefit_treat_all(labels, thresholds) -> np.ndarray:
    """Net benefit of treating every lesion at each threshold probability."""
    labels = np.asarray(labels).astype(int)
    t = np.asarray(thresholds, dtype=float)
    prevalence = labels.mean()
    return prevalence - (1 - prevalence) * t / (1 - t)
