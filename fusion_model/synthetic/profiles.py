"""Per-lesion-type distributions of the synthetic generator, and the exact oracle.

Figures follow ../shared/docs/CLINICAL.md and its sources:

- Unenhanced attenuation: lipid-rich adenoma 2.5 +/- 14 HU vs non-adenomas 32 +/- 6.4
  (Korobkin, AJR 1996); lipid-poor adenomas > 10 HU, typically 10-30 (Schloetelburg, EJE
  2022); pheochromocytoma 35 +/- 9 HU, range 15-62, 1 of 222 <= 10 HU (Buitenwerf 2018;
  Canu, JCEM 2018); ACC 36.9 +/- 4.1, all > 20 HU (Hamrahian, JCEM 2005; Kostiainen 2019);
  metastasis 39.2 +/- 15.2 (Hamrahian); myelolipoma macroscopic fat -30 to -90 HU, cyst
  -10 to 20 HU (secondary sources).
- Size: adenoma median 3.5 cm vs ACC 7.5 cm (Mantero, JCEM 2000); ACC median 92 mm
  (Kostiainen); 96 of 98 ACC >= 4 cm (Bancos, EURINE-ACT 2020); pheochromocytoma 51 mm
  (39-74) (Buitenwerf).
- Frequencies: surgical series, about 26% malignant (Huang 2026); operated series adenoma
  52%, ACC 12%, pheochromocytoma 11% (Mantero).
- Clinical and laboratory: a mass in a cancer patient is metastatic in 30-40%; ACC patients
  younger (median 46) than adenoma (57), about 58% women (Mantero); cortisol after 1 mg
  dexamethasone <= 1.8 ug/dL normal, 1.8-5 mild autonomous secretion (up to half of
  adenomas), > 5 autonomous (ESE/ENSAT 2016, 2023); ACC hormonally active in about 60%;
  DHEA-S low in cortisol-secreting adenomas (Ueland 2020) and high in androgen-secreting ACC;
  plasma metanephrines sensitivity 93.6%, specificity 96.0% for pheochromocytoma at 1 x ULN
  (Eisenhofer 2013); raised aldosterone/renin ratio and low potassium in aldosteronomas.

Enhancement, washout, texture, necrosis and calcification figures are qualitative in the
sources (ACC and pheochromocytoma heterogeneous, necrotic; adenomas wash out quickly) and are
set to plausible values here.

Every latent variable of a lesion is drawn independently given its generator type, except
the hormone-related variables, which share a per-type mixture of secretion states. So the
likelihood of a lesion's latents under each type is exact, and the oracle
``P(malignant | latents)`` follows by Bayes' rule (:func:`oracle_risk`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.special import logsumexp


class Dist:
    """A one-dimensional distribution the generator draws from and the oracle evaluates."""

    def sample(self, rng: np.random.Generator) -> float:
        """One draw."""
        raise NotImplementedError

    def logpdf(self, x: float) -> float:
        """Log density (log probability for a Bernoulli) at ``x``."""
        raise NotImplementedError


_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _norm_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


@dataclass(frozen=True)
class TruncNormal(Dist):
    """A normal distribution truncated to [lo, hi]."""

    mu: float
    sd: float
    lo: float = -math.inf
    hi: float = math.inf

    def _log_mass(self) -> float:
        return math.log(_norm_cdf((self.hi - self.mu) / self.sd) - _norm_cdf((self.lo - self.mu) / self.sd))

    def sample(self, rng):
        """One draw by rejection."""
        for _ in range(10_000):  # rejection; truncation here keeps most of the mass
            x = rng.normal(self.mu, self.sd)
            if self.lo <= x <= self.hi:
                return float(x)
        return float(min(max(self.mu, self.lo), self.hi))

    def logpdf(self, x):
        """Log density of the truncated normal."""
        if not self.lo <= x <= self.hi:
            return -math.inf
        z = (x - self.mu) / self.sd
        return -0.5 * z * z - _LOG_SQRT_2PI - math.log(self.sd) - self._log_mass()


@dataclass(frozen=True)
class LogNormal(Dist):
    """Log-normal by its median; optionally truncated to [lo, hi]."""

    median: float
    sigma: float
    lo: float = 0.0
    hi: float = math.inf

    def _log_dist(self) -> TruncNormal:
        lo = math.log(self.lo) if self.lo > 0 else -math.inf
        return TruncNormal(math.log(self.median), self.sigma, lo, math.log(self.hi) if self.hi < math.inf else math.inf)

    def sample(self, rng):
        """One draw."""
        return float(math.exp(self._log_dist().sample(rng)))

    def logpdf(self, x):
        """Log density of the log-normal."""
        if x <= 0:
            return -math.inf
        return self._log_dist().logpdf(math.log(x)) - math.log(x)


@dataclass(frozen=True)
class Bernoulli(Dist):
    """A yes/no variable with probability ``p`` of yes."""

    p: float

    def sample(self, rng):
        """1.0 with probability p, else 0.0."""
        return float(rng.random() < self.p)

    def logpdf(self, x):
        """Log probability of the outcome ``x``."""
        p = self.p if x >= 0.5 else 1.0 - self.p
        return math.log(p) if p > 0 else -math.inf


@dataclass(frozen=True)
class TypeProfile:
    """One lesion type: prevalence, malignancy, and the distributions of its latent values."""

    name: str
    lesion_type: str  # value written to the clinical table
    malignant: bool
    prevalence: float
    variables: dict[str, Dist]
    states: tuple[tuple[float, dict[str, Dist]], ...] = field(default=())  # secretion states


# --- hormone states -------------------------------------------------------------------------
def _labs(cortisol=(1.1, 0.35), dhea=(3.5, 0.5), metanephrines=(0.45, 0.45), arr=(12.0, 0.6),
          potassium=(4.2, 0.35), hypertension=0.40) -> dict[str, Dist]:
    return {
        "cortisol_post_dst_ug_dl": LogNormal(*cortisol, lo=0.2, hi=60),
        "dhea_s_umol_l": LogNormal(*dhea, lo=0.1, hi=80),
        "plasma_metanephrines_xuln": LogNormal(*metanephrines, lo=0.05, hi=200),
        "aldosterone_renin_ratio": LogNormal(*arr, lo=0.5, hi=2000),
        "potassium_mmol_l": TruncNormal(potassium[0], potassium[1], 2.0, 6.5),
        "hypertension": Bernoulli(hypertension),
    }


NONFUNCTIONAL = _labs()
ADENOMA_STATES = (
    (0.50, NONFUNCTIONAL),
    (0.42, _labs(cortisol=(2.6, 0.4), dhea=(1.5, 0.6), hypertension=0.60)),  # mild autonomous cortisol
    (0.05, _labs(cortisol=(8.0, 0.4), dhea=(0.8, 0.5), hypertension=0.75)),  # overt Cushing
    (0.03, _labs(arr=(80.0, 0.5), potassium=(3.3, 0.35), hypertension=0.95)),  # aldosteronoma
)
ACC_STATES = (
    (0.45, _labs(cortisol=(1.4, 0.5), dhea=(3.5, 0.6), hypertension=0.50)),
    (0.33, _labs(cortisol=(6.0, 0.7), dhea=(2.0, 0.8), potassium=(3.9, 0.45), hypertension=0.65)),
    (0.22, _labs(cortisol=(2.5, 0.6), dhea=(12.0, 0.7), hypertension=0.50)),
)
PHEO_STATES = ((1.0, _labs(metanephrines=(4.0, 0.9), hypertension=0.80)),)
METASTASIS_STATES = ((1.0, _labs(cortisol=(1.2, 0.4), dhea=(2.8, 0.5), hypertension=0.45)),)
PLAIN_STATES = ((1.0, NONFUNCTIONAL),)


def _imaging(size, hu, venous, arterial, washout, texture, necrosis, calcification, irregularity, fat,
             age, female, history) -> dict[str, Dist]:
    return {
        "size_mm": LogNormal(*size),
        "unenhanced_hu": TruncNormal(*hu),
        "venous_enhancement_hu": TruncNormal(*venous),
        "arterial_enhancement_hu": TruncNormal(*arterial),
        "washout_fraction": TruncNormal(*washout),
        "texture_sd_hu": TruncNormal(*texture),
        "necrosis": Bernoulli(necrosis),
        "calcification": Bernoulli(calcification),
        "irregularity": TruncNormal(*irregularity),
        "macroscopic_fat": Bernoulli(fat),
        "age_years": TruncNormal(*age),
        "female": Bernoulli(female),
        "history_extra_adrenal_malignancy": Bernoulli(history),
    }


PROFILES: tuple[TypeProfile, ...] = (
    TypeProfile("adenoma_lipid_rich", "adenoma", False, 0.28, _imaging(
        size=(25, 0.35, 8, 90), hu=(0, 7, -25, 10), venous=(55, 18, 10, 120), arterial=(40, 16, 5, 100),
        washout=(0.65, 0.15, 0.1, 1.0), texture=(8, 3, 2, 30), necrosis=0.05, calcification=0.03,
        irregularity=(0.08, 0.04, 0.0, 0.35), fat=0.01, age=(57, 12, 18, 90), female=0.60, history=0.25),
        ADENOMA_STATES),
    TypeProfile("adenoma_lipid_poor", "adenoma", False, 0.22, _imaging(
        size=(30, 0.38, 8, 100), hu=(21, 7, 10, 45), venous=(55, 18, 10, 120), arterial=(40, 16, 5, 100),
        washout=(0.60, 0.15, 0.1, 1.0), texture=(9, 3, 2, 30), necrosis=0.05, calcification=0.03,
        irregularity=(0.08, 0.04, 0.0, 0.35), fat=0.002, age=(57, 12, 18, 90), female=0.60, history=0.25),
        ADENOMA_STATES),
    TypeProfile("pheochromocytoma", "pheochromocytoma", False, 0.11, _imaging(
        size=(48, 0.42, 15, 150), hu=(36, 9, 8, 62), venous=(65, 22, 10, 150), arterial=(70, 25, 10, 180),
        washout=(0.45, 0.20, 0.0, 1.0), texture=(12, 4, 2, 30), necrosis=0.30, calcification=0.08,
        irregularity=(0.10, 0.05, 0.0, 0.35), fat=0.001, age=(50, 14, 18, 90), female=0.52, history=0.25),
        PHEO_STATES),
    TypeProfile("myelolipoma", "myelolipoma", False, 0.05, _imaging(
        size=(45, 0.50, 10, 150), hu=(30, 8, 10, 50), venous=(30, 12, 0, 80), arterial=(25, 12, 0, 80),
        washout=(0.40, 0.15, 0.0, 1.0), texture=(10, 3, 2, 30), necrosis=0.05, calcification=0.15,
        irregularity=(0.10, 0.05, 0.0, 0.35), fat=0.90, age=(56, 12, 18, 90), female=0.55, history=0.25),
        PLAIN_STATES),
    TypeProfile("cyst", "cyst", False, 0.04, _imaging(
        size=(35, 0.45, 10, 120), hu=(10, 7, -10, 25), venous=(5, 5, -5, 20), arterial=(3, 5, -5, 20),
        washout=(0.50, 0.20, 0.0, 1.0), texture=(5, 2, 2, 30), necrosis=0.02, calcification=0.10,
        irregularity=(0.05, 0.03, 0.0, 0.35), fat=0.001, age=(52, 13, 18, 90), female=0.55, history=0.25),
        PLAIN_STATES),
    TypeProfile("other_benign", "other", False, 0.04, _imaging(
        size=(40, 0.40, 10, 120), hu=(30, 8, 12, 50), venous=(35, 15, 5, 100), arterial=(30, 15, 5, 100),
        washout=(0.40, 0.15, 0.0, 1.0), texture=(10, 3, 2, 30), necrosis=0.10, calcification=0.12,
        irregularity=(0.09, 0.04, 0.0, 0.35), fat=0.001, age=(48, 15, 18, 90), female=0.55, history=0.25),
        PLAIN_STATES),
    TypeProfile("metastasis", "metastasis", True, 0.13, _imaging(
        size=(35, 0.45, 10, 120), hu=(37, 13, 5, 75), venous=(45, 18, 10, 120), arterial=(38, 16, 5, 100),
        washout=(0.35, 0.15, 0.0, 1.0), texture=(11, 4, 2, 30), necrosis=0.25, calcification=0.03,
        irregularity=(0.11, 0.05, 0.0, 0.35), fat=0.001, age=(63, 11, 18, 90), female=0.45, history=0.60),
        METASTASIS_STATES),
    TypeProfile("adrenocortical_carcinoma", "adrenocortical_carcinoma", True, 0.13, _imaging(
        size=(80, 0.42, 26, 180), hu=(36, 5, 21, 50), venous=(45, 18, 10, 120), arterial=(38, 16, 5, 100),
        washout=(0.30, 0.12, 0.0, 1.0), texture=(13, 4, 2, 30), necrosis=0.50, calcification=0.20,
        irregularity=(0.13, 0.05, 0.0, 0.35), fat=0.001, age=(47, 15, 18, 90), female=0.60, history=0.25),
        ACC_STATES),
)
PROFILE_BY_NAME = {p.name: p for p in PROFILES}
assert abs(sum(p.prevalence for p in PROFILES) - 1.0) < 1e-9

STATE_VARIABLES = tuple(NONFUNCTIONAL)
IMAGING_VARIABLES = tuple(PROFILES[0].variables)


def draw_type(rng: np.random.Generator) -> TypeProfile:
    """A lesion type, drawn by prevalence."""
    weights = np.array([p.prevalence for p in PROFILES])
    return PROFILES[int(rng.choice(len(PROFILES), p=weights))]


def draw_latents(profile: TypeProfile, rng: np.random.Generator) -> dict[str, float]:
    """The latent values (size, attenuation, enhancement, texture, clinical, labs) of a lesion of this type."""
    latents = {name: dist.sample(rng) for name, dist in profile.variables.items()}
    weights = np.array([w for w, _ in profile.states])
    state = profile.states[int(rng.choice(len(weights), p=weights / weights.sum()))][1]
    latents.update({name: dist.sample(rng) for name, dist in state.items()})
    return latents


def log_likelihood(profile: TypeProfile, latents: dict[str, float], observed: frozenset[str]) -> float:
    """log p(latents restricted to ``observed`` | type)."""
    total = sum(d.logpdf(latents[n]) for n, d in profile.variables.items() if n in observed)
    per_state = [
        math.log(w) + sum(d.logpdf(latents[n]) for n, d in state.items() if n in observed)
        for w, state in profile.states
    ]
    return total + float(logsumexp(per_state))


SUBTYPES = ("adenoma", "pheochromocytoma", "myelolipoma", "cyst", "metastasis", "adrenocortical_carcinoma")


def oracle_type_posterior(latents: dict[str, float], observed: frozenset[str]) -> dict[str, float]:
    """Exact P(lesion type | the lesion's latent values in ``observed``, the type is one of the six named kinds)
    under the generator: the best any subtype head can do (lesions of type ``other`` are left out of subtype
    heads, so the posterior is over the six kinds)."""
    kept = [p for p in PROFILES if p.lesion_type in SUBTYPES]
    log_joint = np.array([math.log(p.prevalence) + log_likelihood(p, latents, observed) for p in kept])
    weights = np.exp(log_joint - logsumexp(log_joint))
    posterior = dict.fromkeys(SUBTYPES, 0.0)
    for profile, weight in zip(kept, weights):
        posterior[profile.lesion_type] += float(weight)
    return posterior


def oracle_risk(latents: dict[str, float], observed: frozenset[str]) -> float:
    """Exact P(malignant | the lesion's latent values in ``observed``) under the generator."""
    log_joint = np.array([math.log(p.prevalence) + log_likelihood(p, latents, observed) for p in PROFILES])
    malignant = np.array([p.malignant for p in PROFILES])
    return float(np.exp(logsumexp(log_joint[malignant]) - logsumexp(log_joint)))
