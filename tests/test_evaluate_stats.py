"""The report's statistics against direct computations from their definitions."""

import math

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from fusion_model import stats


def _psi(x, y):
    return (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])


def _delong_by_definition(labels, *scores):
    """O(m*n) DeLong (1988): structural components from the kernel psi, then their covariances."""
    labels = np.asarray(labels)
    comps10, comps01, aucs = [], [], []
    for s in scores:
        x, y = s[labels == 1], s[labels == 0]
        kernel = _psi(x, y)
        aucs.append(kernel.mean())
        comps10.append(kernel.mean(axis=1))
        comps01.append(kernel.mean(axis=0))
    m, n = len(comps10[0]), len(comps01[0])
    k = len(scores)
    cov = np.empty((k, k))
    for i in range(k):
        for j in range(k):
            s10 = np.sum((comps10[i] - aucs[i]) * (comps10[j] - aucs[j])) / (m - 1)
            s01 = np.sum((comps01[i] - aucs[i]) * (comps01[j] - aucs[j])) / (n - 1)
            cov[i, j] = s10 / m + s01 / n
    return np.array(aucs), cov


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_the_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 150
    labels = rng.integers(0, 2, n)
    a = np.round(labels + rng.normal(0, 1.2, n), 1)  # rounding makes ties, within and across classes
    b = np.round(0.5 * labels + rng.normal(0, 1, n), 0)
    aucs, cov = _delong_by_definition(labels, a, b)
    fast = stats.delong(labels, a, b)
    np.testing.assert_allclose(fast.aucs, aucs, atol=1e-12)
    np.testing.assert_allclose(fast.covariance, cov, atol=1e-9, rtol=0)

    test = stats.delong_paired_test(labels, a, b)
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    z = (aucs[0] - aucs[1]) / math.sqrt(var)
    assert test.difference == pytest.approx(aucs[0] - aucs[1], abs=1e-12)
    assert test.z == pytest.approx(z, abs=1e-9)
    assert test.p_value == pytest.approx(2 * sps.norm.sf(abs(z)), abs=1e-9)


def test_auc_is_the_mann_whitney_statistic_with_ties():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 300)
    scores = rng.integers(0, 5, 300).astype(float) + labels  # heavy ties
    u = sps.mannwhitneyu(scores[labels == 1], scores[labels == 0]).statistic
    expected = u / ((labels == 1).sum() * (labels == 0).sum())
    assert stats.auc_mann_whitney(labels, scores) == pytest.approx(expected, abs=1e-12)
    assert stats.auc_mann_whitney(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    binary = (scores > 2).astype(float)  # a 0/1 rule: AUC = (sensitivity + specificity) / 2
    sens = binary[labels == 1].mean()
    spec = 1 - binary[labels == 0].mean()
    assert stats.auc_mann_whitney(labels, binary) == pytest.approx((sens + spec) / 2, abs=1e-12)


def test_delong_agrees_with_the_bootstrap_on_larger_data():
    rng = np.random.default_rng(4)
    n = 1500
    labels = rng.integers(0, 2, n)
    a = labels * 0.8 + rng.normal(0, 1, n)
    b = a + rng.normal(0, 0.7, n)  # correlated with a, as two variants of one model are
    d = stats.delong(labels, a, b)
    low, high, boot = stats.bootstrap_auc(labels, a, resamples=2000, seed=1)
    assert boot.std(ddof=1) == pytest.approx(d.se(0), rel=0.1)
    assert low == pytest.approx(d.ci(0)[0], abs=0.01) and high == pytest.approx(d.ci(0)[1], abs=0.01)

    # the paired difference's variance against a paired bootstrap (same resampled lesions for a and b)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    diffs = []
    for _ in range(600):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        diffs.append(roc_auc_score(labels[idx], a[idx]) - roc_auc_score(labels[idx], b[idx]))
    var = d.covariance[0, 0] + d.covariance[1, 1] - 2 * d.covariance[0, 1]
    assert np.std(diffs, ddof=1) == pytest.approx(math.sqrt(var), rel=0.12)


def test_bootstrap_is_seeded():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 80)
    scores = labels + rng.normal(0, 1, 80)
    assert stats.bootstrap_auc(labels, scores, 500, seed=7)[:2] == stats.bootstrap_auc(labels, scores, 500, seed=7)[:2]
    assert stats.bootstrap_auc(labels, scores, 500, seed=7)[:2] != stats.bootstrap_auc(labels, scores, 500, seed=8)[:2]


def test_single_class_gets_a_clear_message_not_nan():
    with pytest.raises(stats.SingleClassError, match="only benign lesions .n=4.*benign and malignant"):
        stats.delong([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(stats.SingleClassError, match="only malignant"):
        stats.bootstrap_auc([1, 1], [0.1, 0.2])


def test_wilson_and_likelihood_ratios_known_values():
    low, high = stats.wilson_ci(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert stats.wilson_ci(0, 0) is None
    lr = stats.likelihood_ratios(tp=90, fp=20, tn=80, fn=10)
    assert lr["lr_positive"]["value"] == pytest.approx(0.9 / 0.2)
    assert lr["lr_negative"]["value"] == pytest.approx(0.1 / 0.8)
    se = math.sqrt(1 / 90 - 1 / 100 + 1 / 20 - 1 / 100)
    assert lr["lr_positive"]["ci"][0] == pytest.approx(4.5 * math.exp(-stats.Z95 * se))
    perfect = stats.likelihood_ratios(tp=10, fp=0, tn=10, fn=0)  # zero cells: corrected, finite
    assert perfect["lr_positive"]["continuity_corrected"] and math.isfinite(perfect["lr_positive"]["value"])


def test_operating_point_counts_and_thresholds_for_targets():
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 2, 200)
    scores = labels + rng.normal(0, 1, 200)
    point = stats.operating_point(labels, scores, 0.5)
    c = point["confusion"]
    assert c["tp"] + c["fn"] == labels.sum() and c["tn"] + c["fp"] == (labels == 0).sum()
    assert point["sensitivity"]["value"] == pytest.approx(c["tp"] / (c["tp"] + c["fn"]))
    for target in (0.9, 0.95):
        t = stats.threshold_for_sensitivity(labels, scores, target)
        assert stats.operating_point(labels, scores, t)["sensitivity"]["value"] >= target
        assert stats.operating_point(labels, scores, np.nextafter(t, np.inf))["sensitivity"]["value"] < target
    t = stats.threshold_for_specificity(labels, scores, 0.95)
    assert stats.operating_point(labels, scores, t)["specificity"]["value"] >= 0.95


def test_calibration_of_calibrated_and_overconfident_predictions():
    rng = np.random.default_rng(7)
    logit = rng.normal(0, 1.5, 20000)
    p = 1 / (1 + np.exp(-logit))
    labels = (rng.random(20000) < p).astype(int)
    good = stats.calibration(labels, p)
    assert good["slope"] == pytest.approx(1, abs=0.06) and good["intercept"] == pytest.approx(0, abs=0.05)
    overconfident = stats.calibration(labels, 1 / (1 + np.exp(-2 * logit)))
    assert overconfident["slope"] == pytest.approx(0.5, abs=0.04)
    assert good["brier"] == pytest.approx(np.mean((p - labels) ** 2))


def test_net_benefit_by_hand():
    labels = np.array([1, 1, 0, 0, 0])
    p = np.array([0.9, 0.2, 0.6, 0.1, 0.05])
    nb = stats.net_benefit(labels, p, [0.5])
    assert nb[0] == pytest.approx(1 / 5 - 1 / 5 * 0.5 / 0.5)
    assert stats.net_benefit_treat_all(labels, [0.25])[0] == pytest.approx(0.4 - 0.6 * 0.25 / 0.75)


# ----------------------------------------------------------------------- degenerate statistics
SEPARATED = (np.array([0, 0, 0, 0, 1, 1, 1, 1]), np.array([0.05, 0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 0.95]))


def _logistic_newton(x: np.ndarray, y: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """An independent maximum-likelihood fit (Newton-Raphson) to check statsmodels' against."""
    beta = np.zeros(x.shape[1])
    for _ in range(200):
        mu = 1 / (1 + np.exp(-(x @ beta + offset)))
        step = np.linalg.solve(x.T @ ((mu * (1 - mu))[:, None] * x), x.T @ (y - mu))
        beta += step
        if np.abs(step).max() < 1e-12:
            break
    return beta


def test_calibration_intercept_and_slope_agree_with_an_independent_fit():
    rng = np.random.default_rng(3)
    p = rng.uniform(0.02, 0.98, 300)
    labels = (rng.random(300) < p ** 1.3).astype(int)
    result = stats.calibration(labels, p)
    lp = np.log(p / (1 - p))
    ones = np.ones((300, 1))
    assert result["intercept"] == pytest.approx(_logistic_newton(ones, labels, lp)[0], abs=1e-7)
    assert result["slope"] == pytest.approx(_logistic_newton(np.column_stack([ones, lp]), labels, 0 * lp)[1], abs=1e-7)
    assert result["observed_expected"]["value"] == pytest.approx(labels.sum() / p.sum())
    low, high = result["observed_expected"]["ci"]
    assert low < result["observed_expected"]["value"] < high
    assert result["clipped_predictions"] == 0 and "note" not in result
    smoothed = result["smoothed"]
    assert len(smoothed["predicted"]) == len(smoothed["observed"]) and 0 <= min(smoothed["observed"])


def test_calibration_slope_is_missing_with_a_reason_when_it_does_not_exist():
    labels, p = SEPARATED
    separated = stats.calibration(labels, p)
    assert separated["slope"] is None and "separate the classes perfectly" in separated["note"]
    assert separated["intercept"] is not None and math.isfinite(separated["intercept"])
    constant = stats.calibration(labels, np.full(8, 0.3))
    assert constant["slope"] is None and "same predicted probability" in constant["note"]
    assert constant["smoothed"] is None
    clipped = stats.calibration(np.array([0, 1, 0, 1]), np.array([0.0, 1.0, 0.4, 0.6]))
    assert clipped["clipped_predictions"] == 2


def test_perfect_and_constant_scores_have_no_auc_interval_but_a_note():
    labels, p = SEPARATED
    perfect = stats.delong(labels, p)
    assert perfect.se(0) == 0 and perfect.logit_ci(0) is None and "perfectly" in perfect.degenerate_note(0)
    constant = stats.delong(labels, np.full(8, 0.5))
    assert constant.aucs[0] == 0.5 and constant.degenerate_note(0)
    rng = np.random.default_rng(1)
    scores = labels + rng.normal(0, 0.8, 8)
    ordinary = stats.delong(labels, scores)
    low, high = ordinary.logit_ci(0)
    assert 0 < low < ordinary.aucs[0] < high < 1 and ordinary.degenerate_note(0) is None


def test_logit_interval_stays_inside_and_is_asymmetric_near_one():
    rng = np.random.default_rng(5)
    labels = np.repeat([0, 1], 15)
    scores = labels * 2.5 + rng.normal(0, 1, 30)
    d = stats.delong(labels, scores)
    assert 0.9 < d.aucs[0] < 1
    wald, logit = d.ci(0), d.logit_ci(0)
    assert logit[1] < 1 and (1 - logit[1]) < (d.aucs[0] - logit[0])  # shorter towards 1
    assert wald[1] == pytest.approx(min(1.0, d.aucs[0] + stats.Z95 * d.se(0)))


def test_paired_test_of_two_perfect_models_is_not_computed():
    labels, p = SEPARATED
    test = stats.delong_paired_test(labels, p, p ** 2)
    assert test.auc_a == test.auc_b == 1.0
    assert test.ci is None and test.z is None and test.p_value is None and "perfectly" in test.note


def test_bootstrap_calibration_is_seeded_and_brackets_the_estimates():
    rng = np.random.default_rng(11)
    p = rng.uniform(0.05, 0.95, 200)
    labels = (rng.random(200) < p).astype(int)
    thresholds = [0.1, 0.2, 0.3]
    first = stats.bootstrap_calibration(labels, p, thresholds, resamples=300, seed=4)
    assert first == stats.bootstrap_calibration(labels, p, thresholds, resamples=300, seed=4)
    point = stats.calibration(labels, p)
    for key in ("brier", "intercept", "slope"):
        low, high = first[f"{key}_ci"]
        assert low < point[key] < high
    benefit = stats.net_benefit(labels, p, thresholds)
    assert (np.array(first["net_benefit_ci"]["low"]) <= benefit + 1e-12).all()
    assert (np.array(first["net_benefit_ci"]["high"]) >= benefit - 1e-12).all()


def _population(mu: float = -1.0, sigma: float = 1.5, size: int = 2_000_000):
    """Probabilities of a perfectly calibrated model: logit(p) ~ N(mu, sigma), each lesion malignant with its p."""
    return 1 / (1 + np.exp(-np.random.default_rng(123).normal(mu, sigma, size)))


def test_intervals_cover_their_true_values_at_the_stated_rate():
    """Over 300 simulated data sets of 600 lesions from a perfectly calibrated model, every 95% interval of the
    report covers the population's value in 95% of them, within a binomial margin (3 SD: 0.912-0.988). The
    stratified bootstrap this replaced covered the intercept in 24 and net benefit in 15-24 of 40."""
    population = _population()
    thresholds = np.array([0.01, 0.05, 0.2, 0.4])
    truth = {"brier": np.mean(population * (1 - population)), "intercept": 0.0, "slope": 1.0, "o/e": 1.0}
    net = [np.mean(population * (population >= t)) - np.mean((1 - population) * (population >= t)) * t / (1 - t)
           for t in thresholds]
    order = np.sort(population)  # AUC = P(p of a malignant lesion > p of a benign one), each weighted by p, 1 - p
    below_benign = np.concatenate([[0.0], np.cumsum(1 - order)[:-1]])
    truth["auc"] = np.sum(order * below_benign) / (order.sum() * (1 - order).sum())
    datasets, lesions = 300, 600
    hits = {k: 0 for k in ("brier", "intercept", "slope", "o/e", "auc logit", "auc bootstrap")}
    net_hits = np.zeros(len(thresholds))
    for d in range(datasets):
        rng = np.random.default_rng([7, d])
        p = 1 / (1 + np.exp(-rng.normal(-1.0, 1.5, lesions)))
        labels = (rng.random(lesions) < p).astype(int)
        boot = stats.bootstrap_calibration(labels, p, thresholds, resamples=400, seed=d)
        for key in ("brier", "intercept", "slope"):
            low, high = boot[f"{key}_ci"]
            hits[key] += low <= truth[key] <= high
        low, high = stats.observed_expected(labels, p)["ci"]
        hits["o/e"] += low <= 1.0 <= high
        low, high = stats.delong(labels, p).logit_ci(0)
        hits["auc logit"] += low <= truth["auc"] <= high
        low, high, _ = stats.bootstrap_auc(labels, p, resamples=400, seed=d)
        hits["auc bootstrap"] += low <= truth["auc"] <= high
        net_hits += (np.array(boot["net_benefit_ci"]["low"]) <= net) & (net <= np.array(boot["net_benefit_ci"]["high"]))
    margin = 3 * math.sqrt(0.95 * 0.05 / datasets)
    coverage = {**{k: v / datasets for k, v in hits.items()},
                **{f"net benefit at {t}": h / datasets for t, h in zip(thresholds, net_hits)}}
    assert all(abs(c - 0.95) <= margin for c in coverage.values()), coverage


def test_net_benefit_band_has_width_where_every_malignant_lesion_is_called():
    """Below every malignant lesion's probability net benefit is prevalence - (false positives / n) t / (1 - t):
    its uncertainty is the prevalence's, which a bootstrap that fixes the event count would remove."""
    rng = np.random.default_rng(3)
    p = rng.uniform(0.3, 0.9, 400)
    labels = (rng.random(400) < p).astype(int)
    boot = stats.bootstrap_calibration(labels, p, [0.01, 0.1, 0.2], resamples=500, seed=0)
    width = np.array(boot["net_benefit_ci"]["high"]) - np.array(boot["net_benefit_ci"]["low"])
    prevalence_se = math.sqrt(labels.mean() * (1 - labels.mean()) / len(labels))
    assert (width > 2 * prevalence_se).all(), width


def test_bootstrap_fits_equal_statsmodels_on_the_resampled_lesions():
    rng = np.random.default_rng(5)
    p = 1 / (1 + np.exp(-rng.normal(-0.5, 1.2, 150)))
    labels = (rng.random(150) < p).astype(int)
    weights = rng.multinomial(150, np.full(150, 1 / 150), size=6).astype(float)
    intercepts = stats._weighted_intercepts(labels.astype(float), stats._logit(p), weights)
    slopes = stats._weighted_slopes(labels.astype(float), stats._logit(p), weights)
    for k in range(6):
        drawn = np.repeat(np.arange(150), weights[k].astype(int))
        fit = stats.calibration_intercept_slope(labels[drawn], p[drawn])
        assert intercepts[k] == pytest.approx(fit["intercept"], abs=1e-8)
        assert slopes[k] == pytest.approx(fit["slope"], abs=1e-8)


def test_bootstrap_leaves_out_resamples_without_a_slope():
    labels, p = SEPARATED
    result = stats.bootstrap_calibration(labels, p, [0.2], resamples=200, seed=0)
    assert result["slope_ci"] is None and result["resamples_without_slope"] == 200
    assert result["brier_ci"] is not None


def test_wilson_interval_is_statsmodels_and_matches_the_formula():
    for successes, total in ((0, 7), (3, 10), (10, 10), (41, 97)):
        p, z = successes / total, stats.Z95
        centre = (p + z * z / (2 * total)) / (1 + z * z / total)
        half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
        low, high = stats.wilson_ci(successes, total)
        assert low == pytest.approx(max(0, centre - half), abs=1e-12)
        assert high == pytest.approx(min(1, centre + half), abs=1e-12)
    assert stats.wilson_ci(0, 7)[0] == 0.0 and stats.wilson_ci(10, 10)[1] == 1.0
