"""The search objective: the patient-grouped cross-validated score of one variant on the training lesions.

The split's test part never enters it: out-of-fold encoder outputs, then the variant's heads
cross-validated over the same folds, exactly as `train` does.

- Encoder outputs are cached per encoder setting (``encoder_outputs/KEY.npz`` in the run folder),
  so trials that change only head parameters skip the encoder: many per minute.
- Pruning: encoder trials report each fold's validation AUC per epoch, head trials the AUC of the
  folds done so far; Optuna's median pruner stops the unpromising ones.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

from fusion_model.config import ExperimentConfig, SearchParam, with_params
from fusion_model.engine import Engine
from fusion_model.errors import UserInputError
from fusion_model.fileio import atomic_write
from fusion_model.heads.calibration import Calibrator
from fusion_model.model import LesionData
from fusion_model.stats import auc_mann_whitney, nan_safe_auc

HEAD_STEP = 1_000_000  # intermediate steps of head folds come after every encoder epoch step


def suggest(trial: optuna.Trial, name: str, param: SearchParam):
    """The trial's value for one dimension of the search space."""
    if param.type == "categorical":
        return trial.suggest_categorical(name, param.choices)
    if param.type == "int":
        return trial.suggest_int(name, int(param.low), int(param.high), step=int(param.step or 1), log=param.log)
    return trial.suggest_float(name, param.low, param.high, step=param.step, log=param.log)


def cross_fitted_brier(margins: np.ndarray, y: np.ndarray, folds, method: str) -> float:
    """Brier score of probabilities calibrated, for each fold, on the other folds' OOF margins."""
    p = np.full(len(y), np.nan)
    for train_idx, test_idx in folds:
        p[test_idx] = Calibrator.fit(method, margins[train_idx], y[train_idx])(margins[test_idx])
    return float(np.mean((p - y) ** 2))


@dataclass
class TrainingSet:
    """The lesions an objective may see: the training part of the split."""

    data: LesionData
    labels: np.ndarray
    patient_ids: np.ndarray

    @property
    def fingerprint(self) -> str:
        """A short hash of the lesion ids (a study refuses to mix training sets)."""
        return hashlib.sha256("\n".join(self.data.lesion_ids).encode()).hexdigest()[:16]


class Objective:
    """Optuna's objective: a trial's configuration scored by cross-validation on the training lesions."""

    def __init__(self, base: ExperimentConfig, training: TrainingSet, out: Path, engine: Engine | None = None):
        if base.search is None:
            raise UserInputError(f"experiment {base.name!r} has no 'search' section; declare the parameters to "
                                 "search (see experiments/tune_demo.yaml)")
        self.base = base
        self.search = base.search
        self.training = training
        self.cache_dir = Path(out) / "encoder_outputs"
        self.threads = 2  # XGBoost threads; a worker sets its share of the machine before each trial
        # where a trial's encoder folds train (fusion_model.engine.Engine; None: here). On a Dask cluster the
        # folds run at once and report no epochs, so a trial is pruned on its heads' folds only
        self.engine = engine

    def _encoder_key(self, config: ExperimentConfig) -> str:
        payload = {"encoder": config.encoder.model_dump(mode="json"), "folds": config.split.folds,
                   "seed": config.seed, "preprocess": config.preprocess.model_dump(mode="json"),
                   "lesions": self.training.fingerprint}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]

    def _encoder_outputs(self, config: ExperimentConfig, trial: optuna.Trial | None):
        """Out-of-fold encoder outputs for this encoder setting: from the cache, or trained (with pruning)."""
        from fusion_model.encoder.estimator import ImageEncoder

        key = self._encoder_key(config)
        path = self.cache_dir / f"{key}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as stored:
                encoder = ImageEncoder.from_oof_outputs(config, stored["oof_logits"], stored["oof_embeddings"],
                                                        stored["fold_of"])
            return encoder, key, True

        def on_epoch(epoch: int, record: dict) -> None:
            if trial is None or not self.search.prune or "val_auc" not in record:
                return
            value = record["val_auc"]
            if value == value:  # not NaN
                trial.report(float(value), step=record["fold"] * 1000 + epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"encoder fold {record['fold']} epoch {epoch}")

        encoder = ImageEncoder.for_experiment(config, progress=False, on_epoch=on_epoch, engine=self.engine)
        t = self.training
        encoder.fit(t.data.crops, t.labels, t.patient_ids, fit_final=False, channels=t.data.channels)
        self.cache_dir.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, oof_logits=encoder.oof_logits_, oof_embeddings=encoder.oof_embeddings_,
                         fold_of=encoder.fold_of_)

        atomic_write(path, write)
        return encoder, key, False

    def score(self, config: ExperimentConfig, trial: optuna.Trial | None = None) -> tuple[float, dict]:
        """The objective's value for one configuration, and facts about it."""
        from fusion_model.features.table import fit_pca, imaging_features, tabular_features
        from fusion_model.heads.subtype import training_types
        from fusion_model.heads.variant import VariantFitter
        from fusion_model.model import variant_tabular_features

        t = self.training
        encoder, key, cached = self._encoder_outputs(config, trial)
        pca = fit_pca(encoder.oof_embeddings_, config.features.embedding_components)
        X_img = imaging_features(encoder.oof_logits_, encoder.oof_embeddings_, pca, t.data.table.index)
        X_tab, tabular_groups = tabular_features(t.data.table, t.data.image_features, config.features,
                                                 t.data.extra_features)
        variant = self.search.objective_variant
        tab_names = variant_tabular_features(variant, tabular_groups)
        method = "image_logit" if not tab_names else config.fusion.method
        y = t.labels

        def on_fold(k: int, margins: dict) -> None:
            if trial is None or not self.search.prune or self.search.metric != "auc" or k < 1:
                return  # one fold's AUC is too noisy to judge a trial by
            done = ~np.isnan(margins[method])
            value = nan_safe_auc(y[done], margins[method][done])
            if value == value:
                trial.report(value, step=HEAD_STEP + k)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"head fold {k}")

        fitter = VariantFitter(config, self.threads)
        types = training_types(t.data.table, config)  # for the type mixture
        if method == "image_logit" or len(fitter.candidates(types)) == 1:
            margins = fitter.oof_margins(X_img, X_tab[tab_names], y, t.patient_ids, encoder.folds_,
                                         methods=(method,), on_fold=on_fold, learner=config.fusion.head,
                                         types=types)[method]
        else:  # an automatic choice: its nested out-of-fold margin (no pruning within it)
            margins = fitter.selected_margins(X_img, X_tab[tab_names], y, t.patient_ids, encoder.folds_, types)
        auc = auc_mann_whitney(y, margins)
        facts = {"encoder_outputs": key, "encoder_cached": cached, "auc": auc, "lesions": len(y),
                 "lesions_sha256": t.fingerprint}
        if self.search.metric == "brier":
            brier = cross_fitted_brier(margins, y, encoder.folds_, config.calibration.method)
            facts["brier"] = brier
            return -brier, facts
        return auc, facts

    def __call__(self, trial: optuna.Trial) -> float:
        params = {name: suggest(trial, name, p) for name, p in self.search.params.items()}
        config = with_params(self.base, params)
        value, facts = self.score(config, trial)
        for k, v in facts.items():
            trial.set_user_attr(k, v)
        return value
