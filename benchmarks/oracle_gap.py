"""How close can a learned head get to the generator's oracle AUC, given perfect features?

The synthetic generator's oracle is P(malignant | every observable latent value), exact by
Bayes' rule. A model trained on N lesions estimates that function from data, so even with
the latent values themselves as inputs (what a pipeline would have if the CNN and the
feature extraction were perfect) its out-of-fold AUC falls short of the oracle's, by an
amount that shrinks with N. This benchmark draws cohorts from the generator's distributions
(no images: the latents are the features), trains the project's XGBoost head (as configured
in experiments/synthetic_demo.yaml) and two reference learners with patient-grouped 5-fold
CV, and prints the oracle AUC and each learner's out-of-fold AUC per cohort size, averaged
over repeats.

It is the reference for the figure "OOF AUC of `all` within x of the oracle": the gap a
real pipeline (features measured on CT phantoms, an encoder trained from scratch) shows on
N lesions cannot be smaller than the gap printed here, up to cohort-to-cohort noise.

    python benchmarks/oracle_gap.py --sizes 300 1000 3000 --repeats 5
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import SplineTransformer, StandardScaler

from clinical_schema import LAB_COLUMNS
from fusion_model.config import SynthConfig, load_experiment
from fusion_model.heads.xgb import XGBHead
from fusion_model.splits import patient_grouped_folds
from fusion_model.synthetic.generate import LAB_MISSING, observed_variables
from fusion_model.synthetic.profiles import draw_latents, draw_type, oracle_risk

PHASES = SynthConfig().phases  # what `fusion-model synth` writes by default
DEMO_CONFIG = Path(__file__).parents[1] / "experiments" / "synthetic_demo.yaml"


def draw_cohort(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Observed latents (missing labs as NaN), labels and oracle risks of ``n`` lesions."""
    rng = np.random.default_rng(seed)
    observed_always = observed_variables(PHASES, [])
    rows, labels, oracle = [], [], []
    for _ in range(n):
        profile = draw_type(rng)
        latents = draw_latents(profile, rng)
        present = [c for c in LAB_COLUMNS if rng.random() >= LAB_MISSING[c]]
        row = {name: latents[name] for name in sorted(observed_always)}
        row.update({c: (latents[c] if c in present else np.nan) for c in LAB_COLUMNS})
        rows.append(row)
        labels.append(int(profile.malignant))
        oracle.append(oracle_risk(latents, observed_variables(PHASES, present)))
    return pd.DataFrame(rows), np.asarray(labels), np.asarray(oracle)


def _linear_inputs(frame: pd.DataFrame, train: np.ndarray) -> np.ndarray:
    """Log of positive skewed values, missing labs as an indicator plus the training median."""
    out = frame.copy()
    for column in frame.columns:
        values = out[column]
        if (values.dropna() > 0).all() and values.max() > 20 * max(values.min(), 1e-9):
            values = np.log(values)
        if values.isna().any():
            out[f"{column}_missing"] = values.isna().astype(float)
            values = values.fillna(values.iloc[train].median())
        out[column] = values
    return out.to_numpy(dtype=float)


def learners() -> dict:
    """The learners compared: the demo's XGBoost head, logistic and spline-logistic regression."""
    demo_head = load_experiment(DEMO_CONFIG).xgboost  # the head that `fusion-model train` fits on the demo
    return {
        "xgboost head (demo config)": lambda X, y, names: XGBHead(demo_head, names).fit(X, y).decision_function,
        "logistic regression": lambda X, y, names: make_pipeline(
            StandardScaler(), LogisticRegression(C=1.0, max_iter=5000)).fit(X, y).decision_function,
        "logistic regression, splines": lambda X, y, names: make_pipeline(
            StandardScaler(), SplineTransformer(n_knots=4, degree=2),
            LogisticRegression(C=0.3, max_iter=5000)).fit(X, y).decision_function,
    }


def out_of_fold_aucs(frame: pd.DataFrame, labels: np.ndarray, seed: int) -> dict[str, float]:
    """Patient-grouped 5-fold out-of-fold AUC of each learner on one cohort."""
    folds = patient_grouped_folds(labels, np.arange(len(labels)), 5, seed)
    fits = learners()
    scores = {name: np.zeros(len(labels)) for name in fits}
    for train_idx, test_idx in folds:
        for name, fit in fits.items():
            tree = name.startswith("xgboost")
            X = frame.to_numpy(dtype=float) if tree else _linear_inputs(frame, train_idx)
            names = list(frame.columns) if tree else [f"x{i}" for i in range(X.shape[1])]
            predict = fit(X[train_idx], labels[train_idx], names)
            scores[name][test_idx] = predict(X[test_idx])
    return {name: float(roc_auc_score(labels, s)) for name, s in scores.items()}


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 1000, 3000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    print(f"oracle vs out-of-fold AUC on the generator's latents ({args.repeats} cohorts per size; mean, "
          "[min-max])")
    for n in args.sizes:
        oracle_aucs, learner_aucs = [], {name: [] for name in learners()}
        for r in range(args.repeats):
            frame, labels, oracle = draw_cohort(n, seed=args.seed * 1000 + n + r)
            oracle_aucs.append(roc_auc_score(labels, oracle))
            for name, auc in out_of_fold_aucs(frame, labels, seed=r).items():
                learner_aucs[name].append(auc)
        oracle_mean = float(np.mean(oracle_aucs))
        print(f"\n{n} lesions: oracle AUC {oracle_mean:.3f} [{min(oracle_aucs):.3f}-{max(oracle_aucs):.3f}]")
        for name, aucs in learner_aucs.items():
            gaps = np.asarray(oracle_aucs) - np.asarray(aucs)
            print(f"  {name:30s} {np.mean(aucs):.3f} [{min(aucs):.3f}-{max(aucs):.3f}]  gap to oracle "
                  f"{np.mean(gaps):.3f} [{gaps.min():.3f}-{gaps.max():.3f}]")
    print(f"\nwall time {time.perf_counter() - start:.0f} s; command: python benchmarks/oracle_gap.py --sizes "
          f"{' '.join(map(str, args.sizes))} --repeats {args.repeats}")


if __name__ == "__main__":
    main()
