"""`fusion-model tune` end to end: the training lesions, K local worker processes sharing one study,
and the outputs (best_config.yaml, trials.csv, study_report.html) in the run folder."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
import yaml
from optuna.trial import TrialState

from fusion_model import __version__
from fusion_model.config import ExperimentConfig, load_experiment, with_params
from fusion_model.engine import Engine, EngineSettings
from fusion_model.errors import UserInputError
from fusion_model.fileio import atomic_write_text
from fusion_model.tune.objective import Objective, TrainingSet
from fusion_model.tune.storage import open_storage, storage_label
from fusion_model.tune.workers import count_trials, open_study, run_worker


@dataclass(frozen=True)
class TuneRequest:
    """What `fusion-model tune` was asked to do."""

    config_path: Path
    cohort: Path
    out: Path
    trials: int
    timeout_s: float | None = None
    storage: str | None = None
    study: str | None = None
    jobs: int = 1
    worker: int = 0
    test_centre: str | None = None
    cache: Path | None = None
    threads: int | None = None  # per worker; None: this machine's cores divided among its live workers
    scheduler: str | None = None  # a Dask cluster: the lesions are read and each trial's encoder folds train there

    @property
    def study_name(self) -> str:
        """The study's name: --study, or the experiment's name."""
        return self.study or load_experiment(self.config_path).name


@dataclass
class TuneResult:
    """The study, its run folder, the best config written, and the trials this process finished."""

    study: optuna.Study
    out: Path
    best_config: Path | None
    finished_here: int


def training_set(config: ExperimentConfig, cohort_dir: Path, cache, test_centre: str | None,
                 progress: bool, engine: Engine | None = None) -> tuple[TrainingSet, list[str]]:
    """The lesions an objective may see (the split's training part) and the held-out ones."""
    from fusion_model.cohort import load_cohort
    from fusion_model.cohort.spec import TABLE_FILE
    from fusion_model.pipeline import check_trainable, lesion_data, split_lesions

    cohort = load_cohort(cohort_dir, require_label=True)
    is_train = split_lesions(cohort.table, config, test_centre)
    check_trainable(cohort.table[is_train], config, cohort.root / TABLE_FILE)
    train_ids = cohort.table["lesion_id"][is_train].tolist()
    test_ids = cohort.table["lesion_id"][~is_train].tolist()
    data, errors, _ = lesion_data(cohort.subset(train_ids), config, cache, progress=progress, engine=engine)
    if len(data.table) == 0:
        raise UserInputError(f"{cohort_dir}: no training lesion could be read")
    labels = data.table["label"].astype(int).to_numpy()
    return TrainingSet(data, labels, data.table["patient_id"].to_numpy()), test_ids


def _prepare(request: TuneRequest, progress: bool, engine: Engine | None = None):
    from fusion_model.imaging.cache import ImageCache, default_cache_dir

    config = load_experiment(request.config_path)
    if config.search is None:
        raise UserInputError(f"{request.config_path}: no 'search' section; declare the parameters to search "
                             "(see experiments/tune_demo.yaml)")
    cache = ImageCache(request.cache or default_cache_dir())
    training, test_ids = training_set(config, request.cohort, cache, request.test_centre, progress, engine)
    request.out.mkdir(parents=True, exist_ok=True)  # after every check: a refused search leaves no folder
    storage = open_storage(request.storage, request.out)
    study = open_study(config, storage, request.study_name, config.seed + 7919 * request.worker,
                       training.fingerprint, test_ids)
    return config, training, study, storage


def _worker_process(request: TuneRequest) -> None:
    with Engine(EngineSettings(scheduler=request.scheduler)) as engine:
        config, training, study, storage = _prepare(request, progress=False, engine=engine)
        run_worker(Objective(config, training, request.out, engine), study, storage, request.trials, request.out,
                   request.timeout_s, threads=request.threads)


def tune(request: TuneRequest, progress: bool = True, write_outputs: bool = True) -> TuneResult:
    """Run a search to its trial total (one or ``jobs`` processes) and write its outputs; with a ``scheduler``
    each process reads the lesions and trains each trial's encoder folds on that Dask cluster."""
    with Engine(EngineSettings(scheduler=request.scheduler)) as engine:
        return _tune(request, progress, write_outputs, engine if request.jobs == 1 else None)


def _tune(request: TuneRequest, progress: bool, write_outputs: bool, engine: Engine | None) -> TuneResult:
    from fusion_model.progress import Progress

    if request.trials < 1:
        raise UserInputError("--trials must be at least 1")
    if request.jobs < 1:
        raise UserInputError("--jobs must be at least 1")
    if request.threads is not None and request.threads < 1:
        raise UserInputError("--threads must be at least 1 (or left out: a share of the machine's cores)")
    config, training, study, storage = _prepare(request, progress, engine)
    finished_here = 0
    with Progress(enabled=progress) as bar:
        task = bar.add_task(f"study {request.study_name}", total=request.trials,
                            completed=min(request.trials, count_trials(study)[0]))
        if request.jobs == 1:

            def on_trial(number, state, value):
                bar.update(task, completed=min(request.trials, count_trials(study)[0]))

            finished_here = run_worker(Objective(config, training, request.out, engine), study, storage,
                                       request.trials,
                                       request.out, request.timeout_s, on_trial, request.threads)
        else:
            context = multiprocessing.get_context("spawn")
            workers = [context.Process(target=_worker_process, args=(_with_worker(request, request.worker + i),))
                       for i in range(request.jobs)]
            for w in workers:
                w.start()
            while any(w.is_alive() for w in workers):
                bar.update(task, completed=min(request.trials, count_trials(study)[0]))
                time.sleep(0.5)
            failed = [w.exitcode for w in workers if w.exitcode]
            if failed:
                raise UserInputError(f"{len(failed)} tune worker process(es) failed (exit codes {failed}); "
                                     "see the messages above")
            bar.update(task, completed=min(request.trials, count_trials(study)[0]))
    best = write_study_outputs(study, config, request) if write_outputs else None
    return TuneResult(study, request.out, best, finished_here)


def _with_worker(request: TuneRequest, worker: int) -> TuneRequest:
    from dataclasses import replace

    return replace(request, worker=worker)


# -------------------------------------------------------------------------------- outputs
def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """Every trial of the study as a row: state, value, time, parameters."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
                     if t.datetime_complete and t.datetime_start else None,
                     "encoder_cached": t.user_attrs.get("encoder_cached"), "auc": t.user_attrs.get("auc"),
                     **{f"param:{k}": v for k, v in t.params.items()}})
    return pd.DataFrame(rows)


def best_config_yaml(study: optuna.Study, config: ExperimentConfig) -> str:
    """The best trial's configuration as a YAML file that `train` accepts unchanged."""
    best = study.best_trial
    tuned = with_params(config, best.params)
    header = (f"# Best configuration of study {study.study_name!r}: trial {best.number}, "
              f"{config.search.metric} objective {best.value:.4f}\n"
              f"# Train it with: fusion-model train --config THIS_FILE --cohort DIR --out runs/NAME\n")
    return header + yaml.safe_dump(tuned.model_dump(mode="json", exclude={"search"}), sort_keys=False)


def _history_png(frame: pd.DataFrame, metric: str) -> bytes:
    import matplotlib.pyplot as plt

    from fusion_model.report.figures import png_bytes

    fig, ax = plt.subplots(figsize=(6.6, 3.8))
    done = frame[frame["state"] == "COMPLETE"]
    pruned = frame[frame["state"] == "PRUNED"]
    ax.scatter(done["number"], done["value"], s=16, label="complete", color="tab:blue")
    if len(pruned):
        ax.scatter(pruned["number"], pruned["value"], s=16, marker="x", label="pruned (last reported)",
                   color="tab:grey")
    if len(done):
        best = done.sort_values("number")["value"].cummax()
        ax.step(done.sort_values("number")["number"], best, where="post", color="tab:red", label="best so far")
    ax.set(xlabel="trial", ylabel="CV AUC" if metric == "auc" else "- Brier score", title="Optimisation history")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return png_bytes(fig)


def _importance_png(importances: dict[str, float]) -> bytes | None:
    if not importances:
        return None
    import matplotlib.pyplot as plt

    from fusion_model.report.figures import png_bytes

    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6.6, 0.35 * len(names) + 1.2))
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set(xlabel="importance (fANOVA)", title="Parameter importances")
    ax.grid(axis="x", alpha=0.3)
    return png_bytes(fig)


def write_study_outputs(study: optuna.Study, config: ExperimentConfig, request: TuneRequest) -> Path | None:
    """trials.csv, best_config.yaml and study_report.html in the run folder."""
    from fusion_model.report import data_uri, render

    frame = trials_frame(study)
    atomic_write_text(request.out / "trials.csv", frame.to_csv(index=False))
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    best_path = None
    importances: dict[str, float] = {}
    if complete:
        best_path = request.out / "best_config.yaml"
        atomic_write_text(best_path, best_config_yaml(study, config))
        if len(complete) >= 3 and len(config.search.params) > 1:
            try:
                importances = optuna.importance.get_param_importances(study, evaluator=
                                                                      optuna.importance.FanovaImportanceEvaluator(seed=0))
            except (RuntimeError, ValueError):
                importances = {}
    images = {"history": data_uri(_history_png(frame, config.search.metric))}
    importance = _importance_png(importances)
    if importance:
        images["importance"] = data_uri(importance)
    best_trials = sorted(complete, key=lambda t: -t.value)[:10]
    states = {s.name: int((frame["state"] == s.name).sum()) for s in TrialState} if len(frame) else {}
    html = render("tune.html.j2", study=study.study_name, config_name=config.name, metric=config.search.metric,
                  variant=config.search.objective_variant, storage=storage_label(request.storage, request.out),
                  states=states, best_trials=best_trials, params=list(config.search.params),
                  space={k: v.model_dump(exclude_none=True) for k, v in config.search.params.items()}, images=images,
                  importances=importances, best_config=best_path.name if best_path else None,
                  lesions=study.user_attrs.get("training_lesions_sha256"),
                  test_lesions=len(study.user_attrs.get("test_lesions", [])),
                  package_version=__version__, created_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  command=f"fusion-model tune --config {request.config_path} --cohort {request.cohort} "
                          f"--trials {request.trials} --out {request.out}" + (f" --storage {storage_label(request.storage, request.out)}" if request.storage else "")
                          + (f" --study {request.study}" if request.study else ""))
    atomic_write_text(request.out / "study_report.html", html)
    return best_path
