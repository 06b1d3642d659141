"""Workers sharing one study: opening it (checked against the config and the training lesions) and the
loop that claims, runs and reports trials until the study holds exactly the requested number."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from fusion_model.config import ExperimentConfig
from fusion_model.errors import UserInputError
from fusion_model.tune.objective import Objective
from fusion_model.tune.storage import claim_lock, fail_dead_trials, heartbeat, process_alive, worker_identity

optuna.logging.set_verbosity(optuna.logging.WARNING)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def config_fingerprint(config: ExperimentConfig) -> str:
    """A short hash of the whole experiment (a study refuses another config)."""
    return hashlib.sha256(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def open_study(config: ExperimentConfig, storage: BaseStorage, study_name: str, seed: int,
               training_fingerprint: str, test_lesions: list[str]) -> optuna.Study:
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
    """(finished, running or waiting) trials of the study, all workers together."""
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING, TrialState.WAITING))
    finished = sum(t.state in FINISHED for t in trials)
    return finished, len(trials) - finished


WORKERS_DIR = ".workers"


def _worker_file(out: Path, host: str, pid: int) -> Path:
    return Path(out) / WORKERS_DIR / f"{host}-{pid}"


def live_local_workers(out: Path) -> int:
    """Workers of this machine registered in the run folder whose process is alive (stale entries removed)."""
    identity = worker_identity()
    folder = Path(out) / WORKERS_DIR
    live = 0
    for entry in folder.glob(f"{identity['host']}-*") if folder.is_dir() else ():
        pid = entry.name.rsplit("-", 1)[-1]
        if pid.isdigit() and process_alive(int(pid)):
            live += 1
        else:
            entry.unlink(missing_ok=True)
    return live


def thread_share(out: Path, threads: int | None) -> int:
    """Threads for this worker: ``threads`` when given, else this machine's cores divided among its live
    workers of the run folder (however they were started: --jobs or several commands)."""
    if threads:
        return threads
    return max(1, (os.cpu_count() or 1) // max(1, live_local_workers(out)))


def _use_threads(objective: Objective, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    objective.threads = threads


def run_worker(objective: Objective, study: optuna.Study, storage: BaseStorage, trials: int, out: Path,
               timeout_s: float | None, on_trial=None, threads: int | None = None) -> int:
    """Run trials until ``trials`` are finished in the study (by any worker) or the timeout; returns how
    many this worker finished. Before each trial the worker sizes its torch and XGBoost threads to its
    share of the machine (:func:`thread_share`), so workers never oversubscribe the cores."""
    identity = worker_identity()
    registration = _worker_file(out, identity["host"], identity["pid"])
    registration.parent.mkdir(parents=True, exist_ok=True)
    registration.touch()
    try:
        return _run_trials(objective, study, storage, trials, out, timeout_s, on_trial, threads)
    finally:
        registration.unlink(missing_ok=True)


def _run_trials(objective: Objective, study: optuna.Study, storage: BaseStorage, trials: int, out: Path,
                timeout_s: float | None, on_trial, threads: int | None) -> int:
    start = time.monotonic()
    mine = 0
    while True:
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            return mine
        with claim_lock(out):
            fail_dead_trials(study, storage)
            finished, running = count_trials(study)
            if finished >= trials:
                return mine
            trial = study.ask() if finished + running < trials else None
            if trial is not None:
                trial.set_user_attr("worker", worker_identity())
        if trial is None:  # the last trials are running elsewhere: wait for them (or for their worker to die)
            time.sleep(1.0)
            continue
        _use_threads(objective, thread_share(out, threads))
        state, value = TrialState.COMPLETE, None
        try:
            with heartbeat(study, storage, trial):
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
