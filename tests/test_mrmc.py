"""The MRMC statistics: the Van Dyke et al. (1993) worked example as the OR-DBM MRMC 2.51 software reports it,
DeLong's components against their definition, the ratings file's checks, and the test's size by simulation."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fusion_model.errors import UserInputError
from fusion_model.reader_study.mrmc import (
    AUC,
    FigureOfMerit,
    analyze_ratings,
    error_covariance,
    ratings_from_frame,
    read_ratings_csv,
    rrrc_power,
)
from fusion_model.reader_study.roemetz import CONFIGS, rejection_rate

VANDYKE = Path(__file__).parent / "data" / "vandyke_ratings.csv"


def close(value, printed: str):
    """``value`` equals a published figure printed as ``printed``: within 1e-4, or within the rounding of the
    printed digits when fewer than four decimals are printed."""
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    tolerance = max(1e-4, 0.5 * 10 ** -decimals) + 1e-12
    return abs(value - float(printed)) <= tolerance


@pytest.fixture(scope="module")
def vandyke():
    """Van Dyke et al. (1993, Radiology 187:567) MRI vs cine MRI of aortic dissection: 5 readers, 2 modalities,
    114 cases (45 diseased), 5-point ratings; the data set of OR-DBM MRMC, RJafroc (dataset02) and MRMCaov."""
    ratings = read_ratings_csv(VANDYKE)
    return ratings, analyze_ratings(ratings, AUC, "jackknife")


def test_vandyke_aucs_and_anova_equal_the_published_output(vandyke):
    # OR-DBM MRMC 2.51, trapezoidal area, jackknife covariances ("VanDyke trap area jackknife anova.txt")
    ratings, result = vandyke
    assert (len(ratings.readers), len(ratings.cases), ratings.positives) == (5, 114, 45)
    published = {("treatment1", 0): "0.91964573", ("treatment2", 0): "0.94782609", ("treatment1", 1): "0.85877617",
                 ("treatment2", 1): "0.90531401", ("treatment1", 2): "0.90386473", ("treatment2", 2): "0.92173913",
                 ("treatment1", 3): "0.97310789", ("treatment2", 3): "0.99935588", ("treatment1", 4): "0.82979066",
                 ("treatment2", 4): "0.92995169"}
    for (modality, reader), printed in published.items():
        assert close(result.theta[ratings.modalities.index(modality), reader], printed)
    assert close(result.modality_means[0], "0.89703704") and close(result.modality_means[1], "0.94083736")
    assert close(result.ms_t, "0.00479617") and close(result.ms_r, "0.00383620")
    assert close(result.ms_tr, "0.00055103")
    assert close(result.ms_r_per_modality[0], "0.00308263") and close(result.ms_r_per_modality[1], "0.00130460")


def test_vandyke_variance_components_equal_the_published_output(vandyke):
    _, result = vandyke
    c = result.covariances
    assert close(result.var_r, "0.00153500") and close(result.var_tr, "0.00020040")
    assert close(c.cov1, "0.00034661") and close(c.cov2, "0.00034407") and close(c.cov3, "0.00023903")
    assert close(c.var, "0.00080229")
    assert close(c.cov1 / c.var, "0.43203138") and close(c.cov2 / c.var, "0.42886683")
    assert close(c.cov3 / c.var, "0.29793328")
    assert close(result.var_per_modality[0], "0.00101410") and close(result.var_per_modality[1], "0.00059047")
    assert close(result.cov2_per_modality[0], "0.00048396") and close(result.cov2_per_modality[1], "0.00020419")
    for j, (var, cov1) in enumerate([("0.00069890", "0.00037347"), ("0.00110605", "0.00076016"),
                                     ("0.00084234", "0.00035532"), ("0.00015058", "0.00000108"),
                                     ("0.00121357", "0.00024304")]):
        assert close(result.var_per_reader[j], var) and close(result.cov1_per_reader[j], cov1)


def test_vandyke_random_readers_random_cases_equal_the_published_output(vandyke):
    _, result = vandyke
    a = result.analyses["RRRC"]
    assert close(a.statistic, "4.46") and close(a.df2, "15.26") and close(a.p, "0.0517")
    assert close(a.denominator, "0.00107626")
    d = a.differences[0]
    assert close(d.estimate, "-0.04380032") and close(d.se, "0.02075") and close(d.statistic, "-2.11")
    assert close(d.ci[0], "-0.08796") and close(d.ci[1], "0.00036") and close(d.p, "0.0517")
    for m, (se, df, lo, hi) in zip(a.modalities, [("0.03317360", "12.74", "0.82522360", "0.96885048"),
                                                  ("0.02156637", "12.71", "0.89413783", "0.98753689")]):
        assert close(m.se, se) and close(m.df, df) and close(m.ci[0], lo) and close(m.ci[1], hi)


def test_vandyke_fixed_readers_and_fixed_cases_equal_the_published_output(vandyke):
    _, result = vandyke
    a = result.analyses["FRRC"]
    assert close(a.statistic, "5.47595") and a.df1 == 1 and close(a.p, "0.0193")
    d = a.differences[0]
    assert close(d.se, "0.01872") and close(d.ci[0], "-0.08049") and close(d.ci[1], "-0.00711")
    assert close(d.statistic, "-2.34") and close(d.p, "0.0193")
    for m, (se, lo, hi) in zip(a.modalities, [("0.02428971", "0.84943008", "0.94464399"),
                                              ("0.01677632", "0.90795637", "0.97371835")]):
        assert close(m.se, se) and close(m.ci[0], lo) and close(m.ci[1], hi)
    published = [("-0.02818", "0.02551", "0.2693", "-0.07818", "0.02182"),
                 ("-0.04654", "0.02630", "0.0768", "-0.09809", "0.00501"),
                 ("-0.01787", "0.03121", "0.5668", "-0.07904", "0.04330"),
                 ("-0.02625", "0.01729", "0.1290", "-0.06014", "0.00764"),
                 ("-0.10016", "0.04406", "0.0230", "-0.18651", "-0.01381")]
    for d, (est, se, p, lo, hi) in zip(a.reader_differences, published):
        assert close(d.estimate, est) and close(d.se, se) and close(d.p, p)
        assert close(d.ci[0], lo) and close(d.ci[1], hi)
    b = result.analyses["RRFC"]
    assert close(b.statistic, "8.70") and b.df2 == 4 and close(b.p, "0.0420")
    d = b.differences[0]
    assert close(d.se, "0.01485") and close(d.ci[0], "-0.08502") and close(d.ci[1], "-0.00258")
    for m, (se, lo, hi) in zip(b.modalities, [("0.02482994", "0.82809808", "0.96597599"),
                                              ("0.01615303", "0.89598936", "0.98568536")]):
        assert close(m.se, se) and close(m.ci[0], lo) and close(m.ci[1], hi)


def test_delong_covariance_follows_its_definition():
    # DeLong et al. (1988): V10(x_i) = mean_j psi(x_i, y_j), V01(y_j) = mean_i psi(x_i, y_j);
    # cov(AUC_a, AUC_b) = S10_ab / m + S01_ab / n with sample covariances over cases
    rng = np.random.default_rng(3)
    rows = []
    truth = np.r_[np.zeros(7, int), np.ones(5, int)]
    for reader in ("a", "b"):
        for modality in ("m1", "m2"):
            scores = rng.integers(1, 6, 12) + truth * rng.integers(0, 3, 12)
            rows += [{"reader": reader, "modality": modality, "case": f"c{k}", "truth": truth[k], "rating": scores[k]}
                     for k in range(12)]
    ratings = ratings_from_frame(pd.DataFrame(rows))
    theta, cov = error_covariance(ratings, AUC, "delong")
    flat = ratings.values.reshape(4, 12)
    pos, neg = flat[:, truth == 1], flat[:, truth == 0]

    def psi(x, y):
        return 1.0 if x > y else 0.5 if x == y else 0.0

    v10 = np.array([[np.mean([psi(x, y) for y in neg[s]]) for x in pos[s]] for s in range(4)])
    v01 = np.array([[np.mean([psi(x, y) for x in pos[s]]) for y in neg[s]] for s in range(4)])
    expected = np.zeros((4, 4))
    for s in range(4):
        for u in range(4):
            expected[s, u] = (np.sum((v10[s] - v10[s].mean()) * (v10[u] - v10[u].mean())) / (5 - 1) / 5
                              + np.sum((v01[s] - v01[s].mean()) * (v01[u] - v01[u].mean())) / (7 - 1) / 7)
    np.testing.assert_allclose(cov, expected, atol=1e-12)
    np.testing.assert_allclose(theta.ravel(), v10.mean(axis=1), atol=1e-12)


def test_sensitivity_and_specificity_are_proportions_at_the_threshold(vandyke):
    ratings, _ = vandyke
    result = analyze_ratings(ratings, FigureOfMerit("sensitivity", 3), "delong")
    positive = ratings.values[..., ratings.truth == 1]
    np.testing.assert_allclose(result.theta, (positive >= 3).mean(axis=-1))
    variance = (positive >= 3).reshape(10, -1).var(axis=1, ddof=1) / ratings.positives
    assert result.covariances.var == pytest.approx(variance.mean())
    spec = analyze_ratings(ratings, FigureOfMerit("specificity", 3), "jackknife")
    np.testing.assert_allclose(spec.theta, (ratings.values[..., ratings.truth == 0] < 3).mean(axis=-1))


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.drop(columns="truth"), "column(s) truth missing"),
    (lambda f: f.assign(rating=f["rating"].astype(object).where(f.index != 7, "high")), "line 9: rating 'high'"),
    (lambda f: f.assign(truth=f["truth"].where(f.index != 3, 2)), "line 5: truth 2 must be 0"),
    (lambda f: pd.concat([f, f.iloc[[10]]]), "read case"),
    (lambda f: f.drop(index=[20]), "reading(s) missing"),
    (lambda f: f[f["modality"] == "treatment1"], "only one modality"),
    (lambda f: f.assign(truth=f["truth"].where(f.index != f.index[f["case"] == "D01"][0], 0)),
     "truth 0 on some rows and 1 on others"),
])
def test_a_bad_ratings_file_is_refused_naming_the_line(vandyke, tmp_path, edit, message):
    frame = pd.read_csv(VANDYKE)
    path = tmp_path / "ratings.csv"
    edit(frame).to_csv(path, index=False)
    with pytest.raises(UserInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_ratings_csv(path)


def test_the_test_holds_its_size_over_2000_null_studies():
    # Roe & Metz model, equal modalities: the random-readers random-cases test rejects 5% +/- 1.5%
    for name, config in CONFIGS.items():
        result = rejection_rate(config, studies=2000, seed=1)
        assert 0.035 <= result.rejection_rate <= 0.065, (name, result.rejection_rate)


def test_power_grows_with_the_effect_and_the_readers():
    base = dict(var_tr=0.0003, var_error=0.0014, cov1=0.0006, cov2=0.0007, cov3=0.0003)
    assert rrrc_power(0.0, 5, **base)["power"] == pytest.approx(0.05, abs=1e-9)
    assert rrrc_power(0.05, 5, **base)["power"] < rrrc_power(0.08, 5, **base)["power"]
    assert rrrc_power(0.05, 5, **base)["power"] < rrrc_power(0.05, 10, **base)["power"]
