"""Simulated MRMC studies from the Roe and Metz model, to check the analysis' size and power.

Roe & Metz (1997, Acad Radiol 4:298) generate the latent rating of case k by reader j in modality i as::

    X_ijk = mu_i * D_k + R_j + (tau R)_ij + C_k + (tau C)_ik + (R C)_jk + e_ijk

with D = 1 for a positive case, every random effect drawn independently (and separately for negative and
positive cases, so readers differ in accuracy) with the variances of a :class:`RoeMetzConfig`. The expected
AUC of modality i is ``Phi(mu_i / sqrt(2 (var_C + var_TC + var_RC + var_e + var_R + var_TR)))``. Under the
null both modalities have the same ``mu``; the rate at which the random-readers random-cases test rejects at
5% is the test's size. Pure numpy; seeded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats as sps

from fusion_model.reader_study.mrmc import AUC, Ratings, analyze_ratings, rrrc_power


@dataclass(frozen=True)
class RoeMetzConfig:
    """Variance components of the Roe-Metz model (per truth state) and the modalities' separations."""

    mu: tuple[float, float] = (1.5, 1.5)
    var_r: float = 0.0055
    var_tr: float = 0.0055
    var_c: float = 0.3
    var_tc: float = 0.3
    var_rc: float = 0.2
    var_e: float = 0.2
    readers: int = 5
    negatives: int = 50
    positives: int = 50

    @property
    def total_variance(self) -> float:
        """Variance of one latent rating within a truth state (every component)."""
        return self.var_r + self.var_tr + self.var_c + self.var_tc + self.var_rc + self.var_e

    def expected_auc(self, modality: int) -> float:
        """The AUC a reader of average ability reaches in a modality, over cases (Roe & Metz, eq. 2)."""
        return float(sps.norm.cdf(self.mu[modality] / math.sqrt(2 * self.total_variance)))

    def with_auc_difference(self, delta_auc: float) -> RoeMetzConfig:
        """The same configuration with the second modality's separation raised so that its expected AUC is
        ``delta_auc`` above the first's."""
        scale = math.sqrt(2 * self.total_variance)
        target = self.expected_auc(0) + delta_auc
        return replace(self, mu=(self.mu[0], float(sps.norm.ppf(target) * scale)))


# variance structures in the range Roe and Metz (1997) studied: low reader variability with strongly
# correlated cases, and high reader variability with weakly correlated cases
CONFIGS = {
    "low-reader-variance": RoeMetzConfig(),
    "high-reader-variance": RoeMetzConfig(var_r=0.03, var_tr=0.03, var_c=0.1, var_tc=0.1, var_rc=0.2, var_e=0.6),
}


def simulate_study(config: RoeMetzConfig, rng: np.random.Generator) -> Ratings:
    """One simulated two-modality study (every reader reads every case in both modalities)."""
    r, n0, n1 = config.readers, config.negatives, config.positives
    blocks = []
    for truth, n in ((0, n0), (1, n1)):
        s = math.sqrt
        reader = rng.normal(0, s(config.var_r), (1, r, 1))
        reader_modality = rng.normal(0, s(config.var_tr), (2, r, 1))
        case = rng.normal(0, s(config.var_c), (1, 1, n))
        case_modality = rng.normal(0, s(config.var_tc), (2, 1, n))
        reader_case = rng.normal(0, s(config.var_rc), (1, r, n))
        error = rng.normal(0, s(config.var_e), (2, r, n))
        mu = np.array(config.mu).reshape(2, 1, 1) * truth
        blocks.append(mu + reader + reader_modality + case + case_modality + reader_case + error)
    values = np.concatenate(blocks, axis=2)
    truth = np.r_[np.zeros(n0, int), np.ones(n1, int)]
    return Ratings(("A", "B"), tuple(f"R{j + 1}" for j in range(r)),
                   tuple(f"C{k + 1}" for k in range(n0 + n1)), truth, values)


@dataclass
class SimulationResult:
    """Rejection rates of the RRRC test over simulated studies, and the OR parameters averaged over them."""

    config: RoeMetzConfig
    studies: int
    covariance: str
    rejections: int
    mean_or_parameters: dict

    @property
    def rejection_rate(self) -> float:
        """Fraction of studies in which the RRRC test rejected equal AUCs at the 5% level."""
        return self.rejections / self.studies

    @property
    def rejection_rate_se(self) -> float:
        """Binomial standard error of the rejection rate."""
        p = self.rejection_rate
        return math.sqrt(p * (1 - p) / self.studies)

    def closed_form_power(self, delta_auc: float) -> dict:
        """Hillis-Obuchowski-Berbaum power for ``delta_auc`` from the averaged OR parameters."""
        p = self.mean_or_parameters
        return rrrc_power(delta_auc, self.config.readers, p["var_TR"], p["var_error"], p["cov1"], p["cov2"],
                          p["cov3"])


def rejection_rate(config: RoeMetzConfig, studies: int = 2000, seed: int = 0, covariance: str = "delong",
                   alpha: float = 0.05) -> SimulationResult:
    """Simulate ``studies`` studies and count how often the random-readers random-cases test rejects."""
    rng = np.random.default_rng(seed)
    rejections = 0
    sums: dict[str, float] = {}
    for _ in range(studies):
        result = analyze_ratings(simulate_study(config, rng), AUC, covariance)
        rejections += int(result.analyses["RRRC"].p < alpha)
        c = result.covariances
        for key, value in (("var_TR", result.var_tr), ("var_error", c.var), ("cov1", c.cov1), ("cov2", c.cov2),
                           ("cov3", c.cov3)):
            sums[key] = sums.get(key, 0.0) + value
    return SimulationResult(config, studies, covariance, rejections, {k: v / studies for k, v in sums.items()})
