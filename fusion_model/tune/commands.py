"""`fusion-model tune`: the Optuna search and its console summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fusion_model.console import CacheOption, console


app = typer.Typer()


@app.command()
def tune(
    config: Annotated[Path, typer.Option("--config", help="experiment YAML with a 'search' section")],
    cohort: Annotated[Path, typer.Option("--cohort", help="labelled cohort; only its training part is used")],
    trials: Annotated[int, typer.Option("--trials", help="finished trials the study should reach in total")],
    out: Annotated[Path | None, typer.Option("--out", help="run folder (journal storage, encoder outputs, "
                                                              "report); default runs/STUDY-tune")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", help="stop starting trials after S seconds")] = None,
    storage: Annotated[str | None, typer.Option("--storage", help="SQLAlchemy URL (postgresql://...) shared by "
                                                                     "workers on many machines, or a journal file "
                                                                     "path; default: the run folder's journal")] = None,
    study: Annotated[str | None, typer.Option("--study", help="study name (default: the experiment's name)")] = None,
    jobs: Annotated[int, typer.Option("--jobs", help="worker processes on this machine")] = 1,
    worker: Annotated[int, typer.Option("--worker", help="distinct number per extra worker started by hand "
                                                         "(seeds its sampler)")] = 0,
    test_centre: Annotated[str | None, typer.Option("--test-centre", help="held-out centre, never used in "
                                                                             "an objective")] = None,
    cache: CacheOption = None,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads per worker (default: this "
                                                                     "machine's cores shared among the live workers "
                                                                     "of the run folder)")] = None,
    scheduler: Annotated[str | None, typer.Option(
        "--scheduler", help="a Dask cluster's address: the lesions are read and each trial's encoder folds train "
        "there, one fold per worker (pruning then by trial, not by epoch)")] = None,
) -> None:
    """Optuna search over the config's search space: resumable, shareable by many workers."""
    from fusion_model.config import load_experiment
    from fusion_model.tune.run import TuneRequest
    from fusion_model.tune.run import tune as run_tune

    name = study or load_experiment(config).name
    request = TuneRequest(config, cohort, out or Path("runs") / f"{name}-tune", trials, timeout, storage, study,
                          jobs, worker, test_centre, cache, threads, scheduler)
    result = run_tune(request)
    from optuna.trial import TrialState

    states = {s.name.lower(): len(result.study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    console.print("trials: " + ", ".join(f"{k} {v}" for k, v in states.items() if v))
    complete = result.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        best = result.study.best_trial
        console.print(f"best: trial {best.number}, value {best.value:.4f}, params {best.params}")
        console.print(f"best config: {result.best_config} (fusion-model train --config {result.best_config} ...)")
    console.print(f"study report: {result.out / 'study_report.html'}")
