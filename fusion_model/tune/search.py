"""`fusion-model tune`: Optuna search over the experiment's declared search space.

The objective is the patient-grouped cross-validated score of one variant on the *training*
lesions only (the split's test part never enters it): out-of-fold encoder outputs, then the
variant's heads cross-validated over the same folds, exactly as `train` does.

- Encoder outputs are cached per encoder setting (``encoder_outputs/KEY.npz`` in the run
  folder), so trials that change only head parameters skip the encoder: many per minute.
- Pruning: encoder trials report each fold's validation AUC per epoch, head trials the AUC
  of the folds done so far; Optuna's median pruner stops the unpromising ones.
- Storage: Optuna's journal file in the run folder by default (several local processes can
  share it), or any SQLAlchemy URL (e.g. PostgreSQL) for workers on many machines, with
  heartbeats so a dead worker's trial is failed and redone.
- Exactly ``--trials`` trials finish: each worker claims a trial under a file lock only while
  fewer than that many are finished or running. A killed worker's trial (kill -9) is found
  (dead process on this host, or a stale heartbeat), marked failed and run again; finished
  trials are never lost or repeated.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from fusion_model.errors import UserInputError
from fusion_model.evaluate.stats import auc_mann_whitney
from fusion_model.experiment import ExperimentConfig, SearchParam, with_params
from fusion_model.fileio import atomic_write
from fusion_model.heads.calibration import apply_calibrator, fit_calibrator
from fusion_model.model import FusionModel, LesionData, nan_safe_auc

optuna.logging.set_verbosity(optuna.logging.WARNING)

JOURNAL_FILE = "study.journal"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
HEAD_STEP = 1_000_000  # intermediate steps of head folds come after every encoder epoch step


# ------------------------------------------------------------------------------- storage
def open_storage(storage: str | None, out: Path):
    """Optuna storage: the run folder's journal file by default, else a SQLAlchemy URL or a journal path."""
    if storage in (None, "", "journal"):
        path = Path(out) / JOURNAL_FILE
    elif "://" in storage:
        try:
            return optuna.storages.RDBStorage(storage, heartbeat_interval=10, grace_period=60)
        except Exception as err:  # SQLAlchemy raises many kinds; the user needs the URL and the reason
            raise UserInputError(f"--storage {storage}: cannot open ({type(err).__name__}: {err}); give a "
                                 "SQLAlchemy URL such as postgresql://user:pass@host/db or sqlite:///study.db") from None
    else:
        path = Path(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(str(path)))


def storage_label(storage: str | None, out: Path) -> str:
    if storage in (None, "", "journal"):
        return f"journal file {Path(out) / JOURNAL_FILE}"
    if "://" in (storage or ""):
        scheme, _, rest = storage.partition("://")
        return f"{scheme}://{rest.split('@')[-1]}"  # no password in reports
    return f"journal file {storage}"


@contextlib.contextmanager
def claim_lock(out: Path):
    """Serialises 'count trials, then ask for a new one' between the processes of this machine."""
    Path(out).mkdir(parents=True, exist_ok=True)
    with open(Path(out) / ".claim.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_trials(study: optuna.Study) -> int:
    """Mark RUNNING trials of dead local workers (and stale heartbeats) as FAIL; returns how many."""
    failed = 0
    host = socket.gethostname()
    if isinstance(study._storage, optuna.storages.RDBStorage):
        failed += len(optuna.storages.fail_stale_trials(study) or [])
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("host") == host and worker.get("pid") and not _alive(int(worker["pid"])):
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            failed += 1
    return failed


# ------------------------------------------------------------------------------ objective
def suggest(trial: optuna.Trial, name: str, param: SearchParam):
    if param.type == "categorical":
        return trial.suggest_categorical(name, param.choices)
    if param.type == "int":
        return trial.suggest_int(name, int(param.low), int(param.high), step=int(param.step or 1), log=param.log)
    return trial.suggest_float(name, param.low, param.high, step=param.step, log=param.log)


def cross_fitted_brier(margins: np.ndarray, y: np.ndarray, folds, method: str) -> float:
    """Brier score of probabilities calibrated, for each fold, on the other folds' OOF margins."""
    p = np.full(len(y), np.nan)
    for train_idx, test_idx in folds:
        calibrator = fit_calibrator(method, margins[train_idx], y[train_idx])
        p[test_idx] = apply_calibrator(calibrator, margins[test_idx])
    return float(np.mean((p - y) ** 2))


@dataclass
class TrainingSet:
    data: LesionData
    labels: np.ndarray
    patient_ids: np.ndarray

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.data.lesion_ids).encode()).hexdigest()[:16]


class Objective:
    def __init__(self, base: ExperimentConfig, training: TrainingSet, out: Path):
        if base.search is None:
            raise UserInputError(f"experiment {base.name!r} has no 'search' section; declare the parameters to "
                                 "search (see experiments/tune_demo.yaml)")
        self.base = base
        self.search = base.search
        self.training = training
        self.cache_dir = Path(out) / "encoder_outputs"

    def _encoder_key(self, config: ExperimentConfig) -> str:
        model = FusionModel(config, progress=False)
        payload = {"encoder": model._encoder_config().model_dump(mode="json"),
                   "preprocess": config.preprocess.model_dump(mode="json"), "lesions": self.training.fingerprint}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]

    def _encoder_outputs(self, config: ExperimentConfig, trial: optuna.Trial | None):
        """Out-of-fold encoder outputs for this encoder setting: from the cache, or trained (with pruning)."""
        from fusion_model.encoder.estimator import ImageEncoder

        key = self._encoder_key(config)
        path = self.cache_dir / f"{key}.npz"
        model = FusionModel(config, progress=False)
        encoder = ImageEncoder(model._encoder_config(), config.preprocess.hu_window, progress=False)
        if path.is_file():
            with np.load(path, allow_pickle=False) as stored:
                encoder.oof_logits_ = stored["oof_logits"]
                encoder.oof_embeddings_ = stored["oof_embeddings"]
                fold_of = stored["fold_of"]
            encoder.folds_ = [(np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k))
                              for k in range(int(fold_of.max()) + 1)]
            return encoder, key, True

        def on_epoch(epoch: int, record: dict) -> None:
            if trial is None or not self.search.prune or "val_auc" not in record:
                return
            value = record["val_auc"]
            if value == value:  # not NaN
                trial.report(float(value), step=record["fold"] * 1000 + epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"encoder fold {record['fold']} epoch {epoch}")

        encoder.on_epoch = on_epoch
        t = self.training
        encoder.fit(t.data.crops, t.labels, t.patient_ids, fit_final=False)
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

        t = self.training
        encoder, key, cached = self._encoder_outputs(config, trial)
        model = FusionModel(config, progress=False)
        pca = fit_pca(encoder.oof_embeddings_, config.features.embedding_components)
        X_img = imaging_features(encoder.oof_logits_, encoder.oof_embeddings_, pca, t.data.table.index)
        X_tab, model.tabular_groups_ = tabular_features(t.data.table, t.data.image_features, config.features,
                                                        t.data.extra_features)
        variant = self.search.objective_variant
        method = "image_logit" if variant == "imaging" else config.fusion.method
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

        margins = model.variant_oof_margins(variant, X_img, X_tab, y, t.patient_ids, encoder.folds_,
                                            methods=(method,), on_fold=on_fold)[method]
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


# -------------------------------------------------------------------------------- workers
def config_fingerprint(config: ExperimentConfig) -> str:
    return hashlib.sha256(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def open_study(config: ExperimentConfig, storage, study_name: str, seed: int, training_fingerprint: str,
               test_lesions: list[str]) -> optuna.Study:
    """Create or load the study; its TPE sampler is seeded by ``seed`` plus the study's size, so a resumed
    or added worker never replays earlier random trials."""
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5) if config.search.prune else optuna.pruners.NopPruner()
    for attempt in range(5):
        try:
            study = optuna.create_study(study_name=study_name, storage=storage, pruner=pruner,
                                        direction="maximize", load_if_exists=True)
            break
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it at this moment
            time.sleep(0.2 * (attempt + 1))
    else:
        raise UserInputError(f"could not open study {study_name!r}")
    expected = {"config_fingerprint": config_fingerprint(config), "training_lesions_sha256": training_fingerprint}
    for key, value in expected.items():
        stored = study.user_attrs.get(key)
        if stored is None:
            study.set_user_attr(key, value)
        elif stored != value:
            what = "experiment config" if key == "config_fingerprint" else "training lesions"
            raise UserInputError(f"study {study_name!r} was started with another {what}; resume it with the same "
                                 "--config and --cohort, or give a new --study name")
    if "test_lesions" not in study.user_attrs:
        study.set_user_attr("test_lesions", test_lesions)
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials),
                                               n_startup_trials=config.search.startup_trials)
    return study


def count_trials(study: optuna.Study) -> tuple[int, int]:
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING, TrialState.WAITING))
    finished = sum(t.state in FINISHED for t in trials)
    return finished, len(trials) - finished


def run_worker(objective: Objective, study: optuna.Study, trials: int, out: Path, timeout_s: float | None,
               on_trial=None) -> int:
    """Run trials until ``trials`` are finished in the study (by any worker) or the timeout; returns how
    many this worker finished."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    start = time.monotonic()
    mine = 0
    while True:
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            return mine
        with claim_lock(out):
            fail_dead_trials(study)
            finished, running = count_trials(study)
            if finished >= trials:
                return mine
            trial = study.ask() if finished + running < trials else None
            if trial is not None:
                trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        if trial is None:  # the last trials are running elsewhere: wait for them (or for their worker to die)
            time.sleep(1.0)
            continue
        state, value = TrialState.COMPLETE, None
        try:
            with get_heartbeat_thread(trial._trial_id, study._storage):
                value = objective(trial)
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
        mine += 1
        if on_trial is not None:
            on_trial(trial.number, state, value)
