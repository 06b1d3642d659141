"""Multi-reader multi-case (MRMC) analysis: the Obuchowski-Rockette model with Hillis' improvements.

The model (Obuchowski & Rockette 1995, Commun Stat Simul Comput 24:285) for the figure of merit
``theta[i, j]`` of reader ``j`` in modality ``i`` (for example the empirical ROC AUC over the cases)::

    theta_ij = mu + tau_i + R_j + (tau R)_ij + e_ij

with random readers ``R``, reader-by-modality interaction ``tau R`` and errors ``e`` whose covariance, caused
by reading the same cases, takes three values: ``Cov1`` (same reader, other modality), ``Cov2`` (other reader,
same modality) and ``Cov3`` (other reader, other modality); ``Var`` is the error variance. The error
covariance matrix is estimated from the cases, by DeLong's structural components (DeLong et al. 1988,
Biometrics 44:837; the default) or by the case jackknife, and averaged into the four values.

Three analyses, as the OR-DBM MRMC software and MRMCaov report them:

- **random readers, random cases** (RRRC; results apply to both populations): ``F = MS(T) / [MS(T*R) + r
  max(Cov2 - Cov3, 0)]`` with Hillis' denominator degrees of freedom (Hillis 2007, Stat Med 26:596)
  ``ddf_H = [MS(T*R) + r max(Cov2 - Cov3, 0)]^2 / {MS(T*R)^2 / [(t-1)(r-1)]}``;
- **fixed readers, random cases** (FRRC): a chi-square test with ``Var - Cov1 + (r-1) max(Cov2 - Cov3, 0)``,
  and each reader's own modality difference;
- **random readers, fixed cases** (RRFC): the conventional modality-by-reader ANOVA of the figures of merit.

Each gives the global test, every pairwise modality difference with its CI and p, and each modality's mean
with its CI (from that modality's data only). Figures of merit: the empirical AUC (Mann-Whitney, ties count
one half), sensitivity and specificity at a rating threshold. Validated against the OR-DBM MRMC 2.51 output
for the Van Dyke et al. (1993) data set (tests/data/vandyke_ratings.csv) and by simulation (``simulate.py``).

Pure functions on arrays; the only file reading is :func:`read_ratings_csv` (the long format other MRMC
software reads: reader, modality, case, truth, rating).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from fusion_model.errors import UserInputError

RATING_COLUMNS = ("reader", "modality", "case", "truth", "rating")
COVARIANCE_METHODS = ("delong", "jackknife")


# ---------------------------------------------------------------------------------------------- the data
@dataclass(frozen=True)
class Ratings:
    """A fully crossed MRMC data set: ``values[t, r, c]`` is reader r's rating of case c in modality t."""

    modalities: tuple[str, ...]
    readers: tuple[str, ...]
    cases: tuple[str, ...]
    truth: np.ndarray       # (cases,) 0 = negative, 1 = positive
    values: np.ndarray      # (modalities, readers, cases)

    def __post_init__(self):
        t, r, c = self.values.shape
        if (t, r, c) != (len(self.modalities), len(self.readers), len(self.cases)) or self.truth.shape != (c,):
            raise ValueError("ratings, names and truth disagree in shape")

    @property
    def positives(self) -> int:
        """Number of positive (diseased) cases."""
        return int(self.truth.sum())

    @property
    def negatives(self) -> int:
        """Number of negative cases."""
        return int(len(self.truth) - self.truth.sum())

    def subset(self, modalities: list[str] | None = None, readers: list[str] | None = None) -> Ratings:
        """The same cases for some modalities and/or readers (in the order given)."""
        mods = list(modalities or self.modalities)
        rdrs = list(readers or self.readers)
        ti = [self.modalities.index(m) for m in mods]
        ri = [self.readers.index(r) for r in rdrs]
        return Ratings(tuple(mods), tuple(rdrs), self.cases, self.truth, self.values[np.ix_(ti, ri)])

    def to_frame(self) -> pd.DataFrame:
        """The long format: reader, modality, case, truth, rating."""
        t, r, c = np.meshgrid(range(len(self.modalities)), range(len(self.readers)), range(len(self.cases)),
                              indexing="ij")
        return pd.DataFrame({"reader": np.array(self.readers, dtype=object)[r.ravel()],
                             "modality": np.array(self.modalities, dtype=object)[t.ravel()],
                             "case": np.array(self.cases, dtype=object)[c.ravel()],
                             "truth": self.truth[c.ravel()].astype(int), "rating": self.values.ravel()})


def ratings_from_frame(frame: pd.DataFrame, source: str = "the ratings",
                       modality_order: list[str] | None = None) -> Ratings:
    """Check a long table (reader, modality, case, truth, rating; one row per reading) and make it a
    :class:`Ratings`. Every problem names the row (line of the file, header = 1) and what to do."""
    columns = {str(c).strip().lower(): c for c in frame.columns}
    missing = [c for c in RATING_COLUMNS if c not in columns]
    if missing:
        raise UserInputError(f"{source}: column(s) {', '.join(missing)} missing; the long format has one row per "
                             f"reading with columns {', '.join(RATING_COLUMNS)} (found: "
                             f"{', '.join(map(str, frame.columns))})")
    table = frame.rename(columns={v: k for k, v in columns.items()})[list(RATING_COLUMNS)].copy()
    if table.empty:
        raise UserInputError(f"{source}: no readings")
    for column in ("reader", "modality", "case"):
        empty = table[column].isna() | (table[column].astype(str).str.strip() == "")
        if empty.any():
            raise UserInputError(f"{source} line {int(np.flatnonzero(empty)[0]) + 2}: {column} is empty")
        table[column] = table[column].astype(str).str.strip()
    for column in ("truth", "rating"):
        numeric = pd.to_numeric(table[column], errors="coerce")
        bad = numeric.isna() | ~np.isfinite(numeric.astype(float))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise UserInputError(f"{source} line {row + 2}: {column} {table[column].iloc[row]!r} is not a number")
        table[column] = numeric.astype(float)
    not_binary = ~table["truth"].isin((0.0, 1.0))
    if not_binary.any():
        row = int(np.flatnonzero(not_binary)[0])
        raise UserInputError(f"{source} line {row + 2}: truth {table['truth'].iloc[row]:g} must be 0 (negative) "
                             "or 1 (positive)")
    duplicated = table.duplicated(["reader", "modality", "case"], keep="first")
    if duplicated.any():
        row = int(np.flatnonzero(duplicated)[0])
        r = table.iloc[row]
        raise UserInputError(f"{source} line {row + 2}: reader {r['reader']} read case {r['case']} in modality "
                             f"{r['modality']} twice; keep one rating per reader, modality and case")
    truth_per_case = table.groupby("case", sort=False)["truth"].nunique()
    if (truth_per_case > 1).any():
        case = truth_per_case.index[truth_per_case > 1][0]
        raise UserInputError(f"{source}: case {case} has truth 0 on some rows and 1 on others; a case has one truth")
    modalities = list(dict.fromkeys(table["modality"]))
    if modality_order:
        unknown = [m for m in modality_order if m not in modalities]
        if unknown:
            raise UserInputError(f"{source}: modality {unknown[0]!r} has no readings; modalities: {modalities}")
        modalities = list(modality_order) + [m for m in modalities if m not in modality_order]
    readers = list(dict.fromkeys(table["reader"]))
    cases = list(dict.fromkeys(table["case"]))
    if len(modalities) < 2:
        raise UserInputError(f"{source}: only one modality ({modalities[0]}); an MRMC comparison needs two or more")
    expected = len(modalities) * len(readers) * len(cases)
    if len(table) != expected:
        full = pd.MultiIndex.from_product([readers, modalities, cases], names=["reader", "modality", "case"])
        have = pd.MultiIndex.from_frame(table[["reader", "modality", "case"]])
        absent = full.difference(have)
        reader, modality, case = absent[0]
        raise UserInputError(f"{source}: {len(absent)} reading(s) missing for a fully crossed design, e.g. reader "
                             f"{reader} has no rating of case {case} in modality {modality}; every reader reads "
                             "every case in every modality")
    truth = table.groupby("case", sort=False)["truth"].first().reindex(cases).to_numpy().astype(int)
    if truth.sum() < 2 or len(truth) - truth.sum() < 2:
        raise UserInputError(f"{source}: {int(truth.sum())} positive and {int(len(truth) - truth.sum())} negative "
                             "case(s); the analysis needs at least two of each")
    values = (table.set_index(["modality", "reader", "case"])["rating"]
              .reindex(pd.MultiIndex.from_product([modalities, readers, cases])).to_numpy()
              .reshape(len(modalities), len(readers), len(cases)))
    return Ratings(tuple(modalities), tuple(readers), tuple(cases), truth, values)


def read_ratings_csv(path: Path, modality_order: list[str] | None = None) -> Ratings:
    """A ratings file in the long format (CSV, or tab-separated when the name ends in .tsv/.txt)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: no such file; give a CSV with columns {', '.join(RATING_COLUMNS)}")
    try:
        frame = pd.read_csv(path, sep=None, engine="python", dtype=str, keep_default_na=False,
                            na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise UserInputError(f"{path}: not a readable CSV ({str(err).splitlines()[0]})") from None
    return ratings_from_frame(frame, str(path), modality_order)


# ------------------------------------------------------------------------------------- figures of merit
@dataclass(frozen=True)
class FigureOfMerit:
    """A reader performance measure with case-level components (for DeLong-type covariances and the jackknife).

    ``kind`` is "auc", "sensitivity" or "specificity"; ``threshold`` is the rating at or above which a reading
    counts as positive (sensitivity / specificity only)."""

    kind: str
    threshold: float | None = None

    @property
    def label(self) -> str:
        """How reports name it."""
        if self.kind == "auc":
            return "ROC AUC (empirical)"
        return f"{self.kind} (rating >= {self.threshold:g})"

    def components(self, values: np.ndarray, truth: np.ndarray):
        """(theta (t, r), positive-case components (t, r, n1) or None, negative-case components (t, r, n0) or
        None): theta is the mean of either set of components."""
        positive, negative = values[..., truth == 1], values[..., truth == 0]
        if self.kind == "auc":
            diff = positive[..., :, None] - negative[..., None, :]
            psi = (diff > 0) + 0.5 * (diff == 0)
            v10, v01 = psi.mean(axis=-1), psi.mean(axis=-2)
            return v10.mean(axis=-1), v10, v01
        if self.kind == "sensitivity":
            hits = (positive >= self.threshold).astype(float)
            return hits.mean(axis=-1), hits, None
        if self.kind == "specificity":
            correct = (negative < self.threshold).astype(float)
            return correct.mean(axis=-1), None, correct
        raise ValueError(f"unknown figure of merit {self.kind!r}")


AUC = FigureOfMerit("auc")


def figure_of_merit(ratings: Ratings, fom: FigureOfMerit = AUC) -> np.ndarray:
    """theta[t, r]."""
    return fom.components(ratings.values, ratings.truth)[0]


def error_covariance(ratings: Ratings, fom: FigureOfMerit = AUC, method: str = "delong"):
    """(theta (t, r), covariance of the t*r figures of merit over cases, (t*r, t*r), modality-major)."""
    if method not in COVARIANCE_METHODS:
        raise UserInputError(f"covariance method {method!r} unknown; use one of {', '.join(COVARIANCE_METHODS)}")
    theta, comp1, comp0 = fom.components(ratings.values, ratings.truth)
    t, r = theta.shape
    n1, n0 = ratings.positives, ratings.negatives
    flat = theta.reshape(t * r)
    if method == "delong":
        cov = np.zeros((t * r, t * r))
        for comp, n in ((comp1, n1), (comp0, n0)):
            if comp is not None:
                cov += np.cov(comp.reshape(t * r, n), ddof=1) / n
        return theta, np.atleast_2d(cov)
    # jackknife: theta without each case, from the components (exact for these figures of merit)
    loo = []
    for comp, n in ((comp1, n1), (comp0, n0)):
        if comp is None:
            loo.append(np.repeat(flat[:, None], n, axis=1))
        else:
            c = comp.reshape(t * r, n)
            loo.append((n * flat[:, None] - c) / (n - 1))
    pseudo = np.concatenate(loo, axis=1)
    n = pseudo.shape[1]
    centred = pseudo - pseudo.mean(axis=1, keepdims=True)
    return theta, (n - 1) / n * centred @ centred.T


# ------------------------------------------------------------------------------------------ OR analysis
@dataclass
class Covariances:
    """The averaged error variance and covariances of the Obuchowski-Rockette model."""

    var: float
    cov1: float
    cov2: float
    cov3: float


def average_covariances(cov: np.ndarray, t: int, r: int) -> Covariances:
    """Average a (t*r, t*r) covariance matrix (modality-major) into Var, Cov1, Cov2, Cov3."""
    mod = np.repeat(np.arange(t), r)
    rdr = np.tile(np.arange(r), t)
    same_m, same_r = mod[:, None] == mod[None, :], rdr[:, None] == rdr[None, :]
    diag = same_m & same_r

    def mean(mask):
        return float(cov[mask].mean()) if mask.any() else float("nan")

    return Covariances(mean(diag), mean(~same_m & same_r), mean(same_m & ~same_r), mean(~same_m & ~same_r))


@dataclass
class Difference:
    """A modality difference (first minus second) with its standard error, test and 95% CI."""

    first: str
    second: str
    estimate: float
    se: float
    df: float | None            # None: normal reference (z)
    statistic: float            # t or z
    p: float
    ci: tuple[float, float]
    reader: str | None = None   # a single reader's difference (fixed readers, random cases)


@dataclass
class ModalityEstimate:
    """One modality's mean figure of merit over readers with its 95% CI (that modality's data only)."""

    modality: str
    estimate: float
    se: float
    df: float | None
    ci: tuple[float, float]


@dataclass
class Analysis:
    """One of the three analyses (random/fixed readers x random/fixed cases)."""

    name: str                    # "RRRC", "FRRC", "RRFC"
    title: str
    statistic_name: str          # "F" or "X2"
    statistic: float
    df1: float
    df2: float | None
    p: float
    denominator: float | None
    differences: list[Difference]
    modalities: list[ModalityEstimate]
    reader_differences: list[Difference] = field(default_factory=list)


@dataclass
class ORResult:
    """Everything the OR analysis of one figure of merit reports."""

    fom: str
    covariance: str
    modalities: list[str]
    readers: list[str]
    positives: int
    negatives: int
    theta: np.ndarray                 # (t, r)
    ms_t: float
    ms_r: float | None
    ms_tr: float | None
    ms_r_per_modality: list[float | None]
    covariances: Covariances
    var_r: float | None
    var_tr: float | None
    var_per_modality: list[float]
    cov2_per_modality: list[float]
    var_per_reader: list[float]
    cov1_per_reader: list[float]
    analyses: dict[str, Analysis]

    @property
    def modality_means(self) -> np.ndarray:
        """Each modality's figure of merit averaged over readers."""
        return self.theta.mean(axis=1)

    def to_dict(self) -> dict:
        """JSON-ready."""
        c = self.covariances
        corr = {k: (getattr(c, k) / c.var if c.var > 0 else None) for k in ("cov1", "cov2", "cov3")}
        return {
            "figure_of_merit": self.fom, "covariance_method": self.covariance, "modalities": self.modalities,
            "readers": self.readers, "positive_cases": self.positives, "negative_cases": self.negatives,
            "per_reader": {m: {r: float(self.theta[i, j]) for j, r in enumerate(self.readers)}
                           for i, m in enumerate(self.modalities)},
            "modality_means": {m: float(v) for m, v in zip(self.modalities, self.modality_means)},
            "mean_squares": {"T": self.ms_t, "R": self.ms_r, "T*R": self.ms_tr,
                             "R_per_modality": dict(zip(self.modalities, self.ms_r_per_modality))},
            "variance_components": {"var_R": self.var_r, "var_TR": self.var_tr, "var_error": c.var,
                                    "cov1": c.cov1, "cov2": c.cov2, "cov3": c.cov3,
                                    "corr1": corr["cov1"], "corr2": corr["cov2"], "corr3": corr["cov3"]},
            "per_modality": {m: {"var_error": v, "cov2": c2} for m, v, c2 in
                             zip(self.modalities, self.var_per_modality, self.cov2_per_modality)},
            "per_reader_error": {r: {"var_error": v, "cov1": c1} for r, v, c1 in
                                 zip(self.readers, self.var_per_reader, self.cov1_per_reader)},
            "analyses": {k: _analysis_dict(a) for k, a in self.analyses.items()},
        }


def _analysis_dict(a: Analysis) -> dict:
    def diff(d: Difference) -> dict:
        return {"first": d.first, "second": d.second, "reader": d.reader, "estimate": d.estimate, "se": d.se,
                "df": d.df, "statistic": d.statistic, "p": d.p, "ci": list(d.ci)}

    return {"title": a.title, "statistic_name": a.statistic_name, "statistic": a.statistic, "df1": a.df1,
            "df2": a.df2, "p": a.p, "denominator": a.denominator, "differences": [diff(d) for d in a.differences],
            "modalities": [{"modality": m.modality, "estimate": m.estimate, "se": m.se, "df": m.df,
                            "ci": list(m.ci)} for m in a.modalities],
            "reader_differences": [diff(d) for d in a.reader_differences]}


def _finite(x: float) -> float:
    return float(x) if np.isfinite(x) else float("nan")


def _t_or_z(estimate: float, se: float, df: float | None, alpha: float) -> tuple[float, float, tuple]:
    if se <= 0 or not np.isfinite(se):
        return float("nan"), float("nan"), (float("nan"), float("nan"))
    stat = estimate / se
    if df is None:
        q = sps.norm.ppf(1 - alpha / 2)
        p = 2 * sps.norm.sf(abs(stat))
    else:
        q = sps.t.ppf(1 - alpha / 2, df)
        p = 2 * sps.t.sf(abs(stat), df)
    return float(stat), float(p), (float(estimate - q * se), float(estimate + q * se))


def _differences(pairs, means, modalities, se: float, df: float | None, alpha: float) -> list[Difference]:
    """Every pair's difference of modality means; one standard error and df for all (the OR analyses' case)."""
    out = []
    for a, b in pairs:
        estimate = float(means[a] - means[b])
        stat, p, ci = _t_or_z(estimate, se, df, alpha)
        out.append(Difference(modalities[a], modalities[b], estimate, se, df, stat, p, ci))
    return out


def or_analysis(theta: np.ndarray, cov: np.ndarray, modalities: list[str], readers: list[str],
                fom: str = "ROC AUC (empirical)", covariance: str = "delong", positives: int = 0,
                negatives: int = 0, alpha: float = 0.05) -> ORResult:
    """The three OR analyses from the figures of merit ``theta`` (t, r) and their error covariance."""
    t, r = theta.shape
    if t < 2:
        raise UserInputError("an MRMC comparison needs two or more modalities")
    c = average_covariances(cov, t, r)
    grand = theta.mean()
    mod_means, rdr_means = theta.mean(axis=1), theta.mean(axis=0)
    ms_t = float(r * ((mod_means - grand) ** 2).sum() / (t - 1))
    var_per_modality, cov2_per_modality, ms_r_i = [], [], []
    for i in range(t):
        block = cov[i * r:(i + 1) * r, i * r:(i + 1) * r]
        var_per_modality.append(float(np.diag(block).mean()))
        cov2_per_modality.append(float(block[~np.eye(r, dtype=bool)].mean()) if r > 1 else float("nan"))
        ms_r_i.append(float(((theta[i] - mod_means[i]) ** 2).sum() / (r - 1)) if r > 1 else None)
    var_per_reader, cov1_per_reader = [], []
    for j in range(r):
        idx = [i * r + j for i in range(t)]
        block = cov[np.ix_(idx, idx)]
        var_per_reader.append(float(np.diag(block).mean()))
        cov1_per_reader.append(float(block[~np.eye(t, dtype=bool)].mean()))
    pairs = [(a, b) for a in range(t) for b in range(a + 1, t)]
    analyses: dict[str, Analysis] = {}

    ms_r = ms_tr = var_r = var_tr = None
    if r > 1:
        ms_r = float(t * ((rdr_means - grand) ** 2).sum() / (r - 1))
        resid = theta - mod_means[:, None] - rdr_means[None, :] + grand
        ms_tr = float((resid ** 2).sum() / ((t - 1) * (r - 1)))
        # E[MS(T*R)] = var_TR + Var - Cov1 - Cov2 + Cov3
        # E[MS(R)] = t var_R + var_TR + Var + (t-1) Cov1 - Cov2 - (t-1) Cov3
        var_tr = float(ms_tr - c.var + c.cov1 + c.cov2 - c.cov3)
        var_r = float((ms_r - var_tr - c.var - (t - 1) * c.cov1 + c.cov2 + (t - 1) * c.cov3) / t)

        # random readers, random cases (Hillis 2007 ddf)
        denom = ms_tr + r * max(c.cov2 - c.cov3, 0.0)
        ddf = denom ** 2 / (ms_tr ** 2 / ((t - 1) * (r - 1))) if ms_tr > 0 else float("inf")
        f = ms_t / denom if denom > 0 else float("nan")
        p = float(sps.f.sf(f, t - 1, ddf)) if np.isfinite(f) else float("nan")
        diffs = _differences(pairs, mod_means, modalities, math.sqrt(2 / r * denom), _finite(ddf), alpha)
        singles = []
        for i in range(t):
            s_denom = ms_r_i[i] + r * max(cov2_per_modality[i], 0.0)
            se = math.sqrt(s_denom / r)
            df = s_denom ** 2 / (ms_r_i[i] ** 2 / (r - 1)) if ms_r_i[i] > 0 else float("inf")
            _, _, ci = _t_or_z(float(mod_means[i]), se, df, alpha)
            singles.append(ModalityEstimate(modalities[i], float(mod_means[i]), se, _finite(df), ci))
        analyses["RRRC"] = Analysis("RRRC", "Random readers and random cases", "F", float(f), t - 1, _finite(ddf),
                                    p, float(denom), diffs, singles)

    # fixed readers, random cases
    denom = c.var - c.cov1 + (r - 1) * max(c.cov2 - c.cov3, 0.0)
    x2 = (t - 1) * ms_t / denom if denom > 0 else float("nan")
    p = float(sps.chi2.sf(x2, t - 1)) if np.isfinite(x2) else float("nan")
    diffs = _differences(pairs, mod_means, modalities, math.sqrt(max(2 / r * denom, 0.0)), None, alpha)
    singles = []
    for i in range(t):
        se = math.sqrt(max((var_per_modality[i] + (r - 1) * max(np.nan_to_num(cov2_per_modality[i]), 0.0)) / r,
                           0.0))
        _, _, ci = _t_or_z(float(mod_means[i]), se, None, alpha)
        singles.append(ModalityEstimate(modalities[i], float(mod_means[i]), se, None, ci))
    per_reader = []
    for j in range(r):
        for a, b in pairs:
            est = float(theta[a, j] - theta[b, j])
            idx_a, idx_b = a * r + j, b * r + j
            # the reader's own error variance and Cov1 (from this pair of modalities)
            var_j = (cov[idx_a, idx_a] + cov[idx_b, idx_b]) / 2
            se = math.sqrt(max(2 * (var_j - cov[idx_a, idx_b]), 0.0))
            stat, pv, ci = _t_or_z(est, se, None, alpha)
            per_reader.append(Difference(modalities[a], modalities[b], est, se, None, stat, pv, ci, readers[j]))
    analyses["FRRC"] = Analysis("FRRC", "Fixed readers and random cases", "X2", float(x2), t - 1, None, p,
                                float(denom), diffs, singles, per_reader)

    if r > 1:
        # random readers, fixed cases: the conventional modality x reader ANOVA
        df2 = (t - 1) * (r - 1)
        f = ms_t / ms_tr if ms_tr > 0 else float("nan")
        p = float(sps.f.sf(f, t - 1, df2)) if np.isfinite(f) else float("nan")
        diffs = _differences(pairs, mod_means, modalities, math.sqrt(2 / r * ms_tr), float(df2), alpha)
        singles = []
        for i in range(t):
            se = math.sqrt(ms_r_i[i] / r)
            _, _, ci = _t_or_z(float(mod_means[i]), se, r - 1, alpha)
            singles.append(ModalityEstimate(modalities[i], float(mod_means[i]), se, float(r - 1), ci))
        analyses["RRFC"] = Analysis("RRFC", "Random readers and fixed cases", "F", float(f), t - 1, float(df2), p,
                                    float(ms_tr), diffs, singles)

    return ORResult(fom, covariance, list(modalities), list(readers), positives, negatives, theta, ms_t, ms_r,
                    ms_tr, ms_r_i, c, var_r, var_tr, var_per_modality, cov2_per_modality, var_per_reader,
                    cov1_per_reader, analyses)


def analyze_ratings(ratings: Ratings, fom: FigureOfMerit = AUC, covariance: str = "delong",
                    alpha: float = 0.05) -> ORResult:
    """The OR analysis of a ratings set (figures of merit, their error covariance, the three analyses)."""
    theta, cov = error_covariance(ratings, fom, covariance)
    return or_analysis(theta, cov, list(ratings.modalities), list(ratings.readers), fom.label, covariance,
                       ratings.positives, ratings.negatives, alpha)


# --------------------------------------------------------------------------------------------- power
def rrrc_power(effect: float, readers: int, var_tr: float, var_error: float, cov1: float, cov2: float,
               cov3: float, alpha: float = 0.05) -> dict:
    """Closed-form power of the RRRC test of two modalities for a true difference ``effect`` (Hillis,
    Obuchowski & Berbaum 2011, Acad Radiol 18:129): a non-central F with Hillis' ddf, from OR parameters
    (for the same number of cases as the study they were estimated from)."""
    r = readers
    denom = var_tr + var_error - cov1 + (r - 1) * max(cov2 - cov3, 0.0)
    ms_tr_expected = var_tr + var_error - cov1 - (cov2 - cov3)
    ddf = denom ** 2 / (ms_tr_expected ** 2 / (r - 1)) if ms_tr_expected > 0 else float("inf")
    noncentrality = r * effect ** 2 / (2 * denom)
    critical = sps.f.ppf(1 - alpha, 1, ddf)
    power = sps.ncf.sf(critical, 1, ddf, noncentrality) if noncentrality > 0 else alpha
    return {"power": float(power), "ddf": float(ddf),
            "noncentrality": float(noncentrality)}
