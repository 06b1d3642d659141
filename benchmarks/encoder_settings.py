"""One change at a time: the image encoder's out-of-fold and held-out AUC under different settings.

For each setting, the encoder alone (fold networks, no heads) is trained on the training centres of a
cohort with the experiment's folds and seed; printed per setting: the out-of-fold AUC of its logit on the
training lesions, the held-out centre's AUC of the fold ensemble (DeLong 95% CI) and the minutes it took,
beside the AUC of a logistic regression on the lesions' input statistics (mean and SD of each phase inside
the mask, cube root of the lesion's share of the crop) with the same folds, the floor the network should
reach, and the tabular head on the measured radiological features, the level the issue asks it to approach.

    python benchmarks/encoder_settings.py --cohort COHORT [--config experiments/synthetic_demo.yaml] \\
        [--test-centre centre_c] [--out FILE.json] [--device cpu|cuda|auto] \\
        "lr 0.001, no skip: encoder.learning_rate=0.001,encoder.input_skip=false" "default:"

Each setting is ``NAME: KEY=VALUE,KEY=VALUE`` (YAML values; an empty list is the experiment as it is).
e.g. on ``fusion-model synth --out cohorts/s400 --patients 400 --seed 21`` (440 lesions; 294 training).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def parse_setting(text: str) -> tuple[str, dict]:
    """``NAME: KEY=VALUE,KEY=VALUE`` as (name, {key: value})."""
    import yaml

    name, sep, rest = text.partition(":")
    if not sep:
        raise SystemExit(f"setting {text!r}: write NAME: KEY=VALUE,KEY=VALUE (or NAME: for the experiment as is)")
    params = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"setting {text!r}: {item!r} is not KEY=VALUE")
        params[key.strip()] = yaml.safe_load(value)
    return name.strip(), params


def main(argv: list[str] | None = None) -> dict:
    """Train the encoder under each setting; print and return the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("settings", nargs="+", metavar="NAME: KEY=VALUE,...")
    parser.add_argument("--cohort", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=None, help="default: the packaged synthetic_demo.yaml")
    parser.add_argument("--test-centre", default="centre_c")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--device", default="cpu", help="where the networks train: cpu, cuda or auto")
    args = parser.parse_args(argv)
    settings = [parse_setting(s) for s in args.settings]
    import torch
    import xgboost
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fusion_model import pipeline
    from fusion_model.cohort import load_cohort
    from fusion_model.config import load_experiment, packaged_experiment, with_params
    from fusion_model.encoder.estimator import ImageEncoder
    from fusion_model.encoder.network import LesionEncoder
    from fusion_model import stats
    from fusion_model.features.table import tabular_features
    from fusion_model.imaging.cache import ImageCache, default_cache_dir
    from fusion_model.splits import patient_grouped_folds

    base = load_experiment(args.config or packaged_experiment("synthetic_demo.yaml"))
    cohort = load_cohort(args.cohort, require_label=True)
    train_mask = pipeline.split_lesions(cohort.table, base, args.test_centre)
    data, _, _ = pipeline.lesion_data(cohort, base, ImageCache(default_cache_dir()), progress=False)
    is_train = data.table.index.isin(set(cohort.table["lesion_id"][train_mask]))
    train, test = data.subset(np.flatnonzero(is_train)), data.subset(np.flatnonzero(~is_train))
    y, groups = train.table["label"].astype(int).to_numpy(), train.table["patient_id"].to_numpy()
    y_test = test.table["label"].astype(int).to_numpy()
    folds = patient_grouped_folds(y, groups, base.split.folds, base.seed)

    def reference(make, X_train, X_test) -> dict:
        oof = np.zeros(len(y))
        for fit_idx, held_idx in folds:
            oof[held_idx] = make().fit(X_train[fit_idx], y[fit_idx]).predict_proba(X_train[held_idx])[:, 1]
        held = make().fit(X_train, y).predict_proba(X_test)[:, 1]
        d = stats.delong(y_test, held)
        return {"oof_auc": float(roc_auc_score(y, oof)), "held_out_auc": float(d.aucs[0]), "ci95": list(d.ci(0))}

    def statistics(crops):
        x = torch.as_tensor(np.asarray(crops, dtype=np.float32))
        return LesionEncoder.input_statistics(x, x[:, -1:]).numpy()

    X_tab, tab_groups = tabular_features(data.table, data.image_features, base.features, data.extra_features)
    X_rad = X_tab[tab_groups["radiological"]].to_numpy(float)
    xgb = base.xgboost
    references = {
        "logistic regression on the input statistics": reference(
            lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
            statistics(train.crops), statistics(test.crops)),
        "XGBoost on the measured radiological features": reference(
            lambda: xgboost.XGBClassifier(n_estimators=xgb.n_estimators, max_depth=xgb.max_depth,
                                          learning_rate=xgb.learning_rate, subsample=xgb.subsample,
                                          colsample_bytree=xgb.colsample_bytree,
                                          min_child_weight=xgb.min_child_weight, random_state=base.seed, n_jobs=1),
            X_rad[is_train], X_rad[~is_train]),
    }
    figures = {"cohort": str(args.cohort), "device": args.device, "training_lesions": len(y),
               "test_lesions": len(y_test), "references": references, "settings": []}
    print(f"{len(y)} training lesions, {len(y_test)} held-out ({args.test_centre}); {base.split.folds} folds")
    print(f"{'setting':46s} {'OOF AUC':>8s} {'held-out AUC (95% CI)':>24s} {'minutes':>8s} {'emb. spread':>10s}")
    for name, ref in references.items():
        print(f"{name:46s} {ref['oof_auc']:8.3f} {ref['held_out_auc']:8.3f} ({ref['ci95'][0]:.3f}-"
              f"{ref['ci95'][1]:.3f})")
    for name, params in settings:
        config = with_params(base, {**params, "encoder.inference": "fold_ensemble"})
        started = time.perf_counter()
        encoder = ImageEncoder.for_experiment(config, progress=False, device=args.device)
        encoder.fit(train.crops, y, groups, fit_final=False)
        minutes = (time.perf_counter() - started) / 60
        d = stats.delong(y_test, encoder.decision_function(test.crops))
        # the spread of the out-of-fold embeddings (root of the summed variances): near 0 when the embedding
        # layer is dead and the logit comes from the input skip alone
        spread = float(np.sqrt(np.nanvar(encoder.oof_embeddings_, axis=0).sum()))
        row = {"name": name, "set": params, "oof_auc": encoder.oof_auc_, "held_out_auc": float(d.aucs[0]),
               "ci95": list(d.ci(0)), "minutes": minutes, "embedding_spread": spread}
        figures["settings"].append(row)
        print(f"{name:46s} {row['oof_auc']:8.3f} {row['held_out_auc']:8.3f} ({row['ci95'][0]:.3f}-"
              f"{row['ci95'][1]:.3f}) {minutes:8.1f} {spread:10.4f}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2, default=float) + "\n")
    return figures


if __name__ == "__main__":
    main()
