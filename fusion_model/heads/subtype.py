"""Which kind of lesion: a multi-class head per variant beside the malignancy risk.

For ``targets: [malignancy, lesion_type]`` every variant also fits an XGBoost ``multi:softprob`` head over the
same inputs as its fusion head (the imaging features from the out-of-fold encoder outputs and the variant's
tabular features; the image features alone for the imaging-only variant), cross-validated over the encoder's
folds. Its out-of-fold margins fit one temperature (the softmax of margin / T minimising the out-of-fold
log-loss: per-class probabilities that mean what they say, ranking unchanged); the head is then refitted on all
subtype lesions for new data.

Lesions whose type is missing or ``other`` are left out of the subtype heads (and counted). A type with fewer
than ``subtype.min_lesions`` lesions is refused with a message naming it, or, with ``subtype.merge_rare``,
merged with the other rare types into one class ``rare`` (the manifest lists what it holds).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.stats as sps
import xgboost as xgb
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from clinical_schema.model import LESION_TYPES
from fusion_model.config import ExperimentConfig, XGBoostConfig
from fusion_model.errors import UserInputError
from fusion_model.heads.xgb import load_booster, tree_params
from fusion_model.stats import nan_safe_auc

SUBTYPES = tuple(t for t in LESION_TYPES if t != "other")
RARE = "rare"
SMALL_CLASS_LESIONS = 10  # a type with fewer evaluated lesions is flagged wherever its AUC is shown
MACRO_BOOTSTRAP_RESAMPLES = 2000


@dataclass
class SubtypeClasses:
    """The classes the subtype heads learn, which lesions they learn from, and what was left out."""

    classes: list[str]
    merged: list[str] = field(default_factory=list)  # types merged into RARE
    left_out: dict[str, int] = field(default_factory=dict)  # reason -> lesions
    counts: dict[str, int] = field(default_factory=dict)

    def encode(self, types: pd.Series) -> np.ndarray:
        """Class index per lesion (-1: not a subtype lesion)."""
        mapped = types.map(lambda t: RARE if t in self.merged else t)
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index.get(t, -1) if isinstance(t, str) else -1 for t in mapped], dtype=int)


@dataclass
class SubtypeInfo:
    """What a model's lesion-type heads learnt from (classes, merged rare types, lesions per class, lesions left
    out) and each variant's out-of-fold one-vs-rest AUCs."""

    lesion_types: SubtypeClasses
    oof_auc: dict[str, dict]
    fit_seconds: float

    @property
    def classes(self) -> list[str]:
        """The classes the heads learnt, in their output order."""
        return self.lesion_types.classes

    def to_manifest(self) -> dict:
        """Plain data for the model manifest (its 'subtype' entry)."""
        t = self.lesion_types
        return {"classes": t.classes, "merged_into_rare": t.merged, "training_lesions": t.counts,
                "left_out": t.left_out, "oof_auc": self.oof_auc, "fit_seconds": self.fit_seconds}

    @classmethod
    def from_manifest(cls, entry: dict | None) -> SubtypeInfo | None:
        """The info a manifest's 'subtype' entry holds (None for a model without lesion-type heads)."""
        if not entry:
            return None
        types = SubtypeClasses(list(entry["classes"]), list(entry.get("merged_into_rare") or []),
                               dict(entry.get("left_out") or {}), dict(entry.get("training_lesions") or {}))
        return cls(types, dict(entry.get("oof_auc") or {}), float(entry.get("fit_seconds") or 0.0))


def subtype_classes(types: pd.Series, min_lesions: int, merge_rare: bool) -> SubtypeClasses:
    """The classes of a training set's ``lesion_type`` column; rare types merged or refused."""
    known = types[types.isin(SUBTYPES)]
    left_out = {"type missing": int(types.isna().sum()), "type other": int((types == "other").sum())}
    counts = {t: int((known == t).sum()) for t in SUBTYPES if (known == t).any()}
    rare = sorted(t for t, n in counts.items() if n < min_lesions)
    if rare and not merge_rare:
        named = ", ".join(f"{t} ({counts[t]} lesion{'s' if counts[t] != 1 else ''})" for t in rare)
        raise UserInputError(
            f"lesion_type: {named} below subtype.min_lesions = {min_lesions}; a subtype head cannot learn a type "
            "from so few lesions. Set 'subtype: {merge_rare: true}' in the experiment to merge the rare types into "
            "one class 'rare', lower subtype.min_lesions, or drop 'lesion_type' from targets")
    classes = [t for t in counts if t not in rare]
    if rare:
        merged_count = sum(counts[t] for t in rare)
        if merged_count < 2:
            raise UserInputError(f"lesion_type: the rare types {rare} have {merged_count} lesion(s) together, too "
                                 "few even merged; add lesions or drop 'lesion_type' from targets")
        classes.append(RARE)
        counts = {**{t: counts[t] for t in classes if t != RARE}, RARE: merged_count}
    if len(classes) < 2:
        raise UserInputError(f"lesion_type: the training lesions hold {len(classes)} type(s) {classes}; a subtype "
                             "head needs at least two; drop 'lesion_type' from targets")
    return SubtypeClasses(classes, rare, left_out, counts)


@dataclass
class LesionTypes:
    """The training lesions' types as class indices (-1: not in a subtype class) and the classes' names."""

    codes: np.ndarray
    classes: list[str]


def training_types(table: pd.DataFrame, config: ExperimentConfig) -> LesionTypes | None:
    """The lesion types the heads learn from (``targets`` with lesion_type), else None."""
    if "lesion_type" not in config.targets:
        return None
    types = table["lesion_type"] if "lesion_type" in table else pd.Series(np.nan, index=table.index)
    classes = subtype_classes(types, config.subtype.min_lesions, config.subtype.merge_rare)
    return LesionTypes(classes.encode(types), classes.classes)


class MultiClassHead:
    """An XGBoost ``multi:softprob`` head: fit on class indices, margins (n, classes), XGBoost JSON."""

    learner = "xgboost_multiclass"
    outputs = "classes"

    def __init__(self, config: XGBoostConfig, feature_names, classes: int, seed: int = 0, threads: int = 2):
        self.config = config
        self.feature_names = list(feature_names)
        self.classes = classes
        self.seed = seed
        self.threads = threads

    @classmethod
    def build(cls, feature_names, config: ExperimentConfig, threads: int = 2, classes: int = 2) -> MultiClassHead:
        """An unfitted head over ``classes`` classes with the experiment's XGBoost settings and seed."""
        return cls(config.xgboost, feature_names, classes, seed=config.seed, threads=threads)

    def fit(self, X: np.ndarray, y: np.ndarray) -> MultiClassHead:
        """Fit on a feature matrix (NaN = missing) and class indices, classes weighted to balance."""
        c = self.config
        params = {"objective": "multi:softprob", "num_class": self.classes, "eval_metric": "mlogloss",
                  **tree_params(c, self.seed, self.threads)}
        counts = np.bincount(y, minlength=self.classes).astype(float)
        weights = (len(y) / (self.classes * np.maximum(counts, 1.0)))[y]  # balanced: rare types count
        data = xgb.DMatrix(np.asarray(X, dtype=float), label=y, weight=weights, feature_names=self.feature_names,
                           missing=np.nan)
        self.booster_ = xgb.train(params, data, num_boost_round=c.n_estimators)
        return self

    def margins(self, X: np.ndarray) -> np.ndarray:
        """Margins per class (lesions x classes)."""
        data = xgb.DMatrix(np.asarray(X, dtype=float), feature_names=self.feature_names, missing=np.nan)
        return np.asarray(self.booster_.predict(data, output_margin=True), dtype=float).reshape(len(X), self.classes)

    def shap_values(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Exact TreeSHAP values of every class margin, (lesions, features, classes), and the expected margins
        (shap.TreeExplainer, built once per head)."""
        import shap

        if getattr(self, "_explainer", None) is None:
            self._explainer = shap.TreeExplainer(self.booster_)
        raw = self._explainer.shap_values(X.to_numpy(dtype=float))
        values = np.stack(raw, axis=-1) if isinstance(raw, list) else np.asarray(raw, dtype=float)
        return (values.reshape(len(X), X.shape[1], self.classes),
                np.ravel(self._explainer.expected_value).astype(float))

    def save(self, path) -> None:
        """Write the booster in XGBoost's own JSON format."""
        self.booster_.save_model(str(path))

    @classmethod
    def load(cls, path, feature_names, config: ExperimentConfig) -> MultiClassHead:
        """Read a saved head (its number of classes is the file's); its feature names must be the manifest's."""
        booster = load_booster(path, feature_names)
        head = cls(config.xgboost, feature_names, booster_classes(booster))
        head.booster_ = booster
        return head


def booster_classes(booster: xgb.Booster) -> int:
    """The number of classes a saved multi-class booster scores."""
    return int(json.loads(booster.save_config())["learner"]["learner_model_param"]["num_class"])


def fit_temperature(margins: np.ndarray, y: np.ndarray) -> float:
    """The temperature T minimising the log-loss of softmax(margins / T) (bounded to [0.05, 20])."""
    def loss(log_t: float) -> float:
        return float(-log_softmax(margins / np.exp(log_t), axis=1)[np.arange(len(y)), y].mean())

    result = minimize_scalar(loss, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


@dataclass
class SubtypeFit:
    """A variant's fitted subtype head."""

    variant: str
    classes: list[str]
    features: list[str]
    head: MultiClassHead
    temperature: float

    def frame(self, X_img: pd.DataFrame, X_tab: pd.DataFrame) -> pd.DataFrame:
        """What the head sees, in its column order."""
        return pd.concat([X_img, X_tab], axis=1).reindex(columns=self.features)

    def probabilities(self, X_img: pd.DataFrame, X_tab: pd.DataFrame) -> pd.DataFrame:
        """Calibrated type probabilities (columns p_type_CLASS), rows summing to 1."""
        margins = self.head.margins(self.frame(X_img, X_tab).to_numpy(dtype=float))
        return pd.DataFrame(softmax(margins / self.temperature, axis=1), index=X_img.index,
                            columns=[f"p_type_{c}" for c in self.classes])

    def to_manifest(self, save_head: Callable[[str, MultiClassHead], str]) -> dict:
        """Plain data for the manifest; ``save_head(key, head)`` writes the head and returns its file."""
        return {"classes": self.classes, "features": self.features, "temperature": self.temperature,
                "file": save_head(f"{self.variant}_subtype", self.head)}

    @classmethod
    def from_manifest(cls, variant: str, entry: dict, config: ExperimentConfig, root) -> SubtypeFit:
        """The fit a manifest entry describes, its head read from ``root``."""
        head = MultiClassHead.load(root / entry["file"], entry["features"], config)
        if head.classes != len(entry["classes"]):
            raise ValueError(f"{entry['file']} scores {head.classes} classes, the manifest names "
                             f"{len(entry['classes'])}")
        return cls(variant, list(entry["classes"]), list(entry["features"]), head, float(entry["temperature"]))


def cv_type_margins(make_head: Callable[[], MultiClassHead], values: np.ndarray, codes: np.ndarray,
                    folds) -> tuple[np.ndarray, float]:
    """Out-of-fold class margins of every lesion over ``folds`` (each fold's head learns from its typed training
    lesions, ``codes`` >= 0; untyped lesions are scored, never learnt from) and the temperature fitted on the
    typed lesions' out-of-fold margins."""
    typed = codes >= 0
    margins = None
    for train_idx, test_idx in folds:
        fit_idx = train_idx[typed[train_idx]]
        fold_margins = make_head().fit(values[fit_idx], codes[fit_idx]).margins(values[test_idx])
        if margins is None:
            margins = np.full((len(codes), fold_margins.shape[1]), np.nan)
        margins[test_idx] = fold_margins
    scored = typed & np.isfinite(margins).all(axis=1)
    return margins, fit_temperature(margins[scored], codes[scored])


def fit_subtype(config: ExperimentConfig, variant: str, X: pd.DataFrame, y: np.ndarray, folds,
                classes: list[str], threads: int = 2) -> tuple[SubtypeFit, np.ndarray]:
    """Cross-validate a variant's subtype head over ``folds`` (positions in ``X``, lesions with y >= 0 used),
    fit its temperature on the out-of-fold margins, refit on every subtype lesion. Returns the fit and the
    calibrated out-of-fold probabilities (NaN rows for lesions not in a subtype class)."""
    k = len(classes)
    known = y >= 0

    def head() -> MultiClassHead:
        return MultiClassHead.build(list(X.columns), config, threads, classes=k)

    values = X.to_numpy(dtype=float)
    oof, temperature = cv_type_margins(head, values, y, folds)
    scored = known & np.isfinite(oof).all(axis=1)
    probabilities = np.full_like(oof, np.nan)
    probabilities[scored] = softmax(oof[scored] / temperature, axis=1)
    final = head().fit(values[known], y[known])
    return SubtypeFit(variant, list(classes), list(X.columns), final, temperature), probabilities


def small_classes(y: np.ndarray, classes: list[str], limit: int = SMALL_CLASS_LESIONS) -> dict[str, int]:
    """Classes with fewer than ``limit`` lesions among ``y`` (class indices; -1 not counted), with their counts:
    their one-vs-rest AUC moves by a large step with a single lesion, and the macro AUC with it."""
    counts = {c: int((y == k).sum()) for k, c in enumerate(classes)}
    return {c: n for c, n in counts.items() if n < limit}


def bootstrap_macro_auc(y: np.ndarray, probabilities: list[np.ndarray], resamples: int = MACRO_BOOTSTRAP_RESAMPLES,
                        seed: int = 0) -> np.ndarray:
    """Macro one-vs-rest AUC of each probability matrix over the same resampled lesions: (resamples, sets).
    A class absent from a resample (or present alone) is left out of that resample's mean, for every set."""
    rng = np.random.default_rng(seed)
    n = len(y)
    index = rng.integers(0, n, size=(resamples, n))
    ys = y[index]
    classes = probabilities[0].shape[1]
    sums = np.zeros((resamples, len(probabilities)))
    counts = np.zeros(resamples)
    for k in range(classes):
        positive = ys == k
        m = positive.sum(axis=1)
        valid = (m > 0) & (m < n)
        counts += valid
        for j, p in enumerate(probabilities):
            ranks = sps.rankdata(p[index, k], axis=1)
            auc = ((ranks * positive).sum(axis=1) - m * (m + 1) / 2) / np.maximum(m * (n - m), 1)
            sums[:, j] += np.where(valid, auc, 0.0)
    return sums / np.maximum(counts, 1)[:, None]


def macro_auc_ci(y: np.ndarray, probabilities: np.ndarray, resamples: int = MACRO_BOOTSTRAP_RESAMPLES,
                 seed: int = 0, level: float = 0.95) -> list[float] | None:
    """Percentile interval of the macro one-vs-rest AUC from a lesion bootstrap (None with fewer than two scored
    lesions or one class)."""
    scored = (y >= 0) & np.isfinite(probabilities).all(axis=1)
    if scored.sum() < 2 or len(np.unique(y[scored])) < 2:
        return None
    macro = bootstrap_macro_auc(y[scored], [probabilities[scored]], resamples, seed)[:, 0]
    alpha = (1 - level) / 2
    return [float(v) for v in np.quantile(macro, [alpha, 1 - alpha])]


def one_vs_rest_auc(y: np.ndarray, probabilities: np.ndarray, classes: list[str], interval: bool = True) -> dict:
    """Each class's one-vs-rest AUC over the scored lesions, their mean (macro) with its bootstrap interval,
    the prevalence-weighted mean, and the classes too small for a stable AUC."""
    scored = (y >= 0) & np.isfinite(probabilities).all(axis=1)
    per_class = {c: nan_safe_auc((y[scored] == k).astype(int), probabilities[scored, k])
                 for k, c in enumerate(classes)}
    valid = {c: v for c, v in per_class.items() if v == v}
    weights = {c: float(np.mean(y[scored] == k)) for k, c in enumerate(classes)}
    total = sum(weights[c] for c in valid)
    return {"per_class": per_class, "macro": float(np.mean(list(valid.values()))) if valid else None,
            "macro_ci95": macro_auc_ci(y, probabilities) if valid and interval else None,
            "weighted": float(sum(weights[c] * v for c, v in valid.items()) / total) if total else None,
            "small_classes": small_classes(y[scored], classes)}
