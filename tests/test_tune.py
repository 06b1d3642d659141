"""`fusion-model tune`: a search that completes and whose best config trains, resume after kill -9,
two workers on one study, and the held-out lesions kept out of every objective."""

import hashlib
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from fusion_model import pipeline
from fusion_model.config import load_experiment
from fusion_model.imaging.cache import ImageCache
from fusion_model.tune.run import TuneRequest, tune
from fusion_model.tune.storage import open_storage
from tests.conftest import TINY_EXPERIMENT

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _config(tmp_path, params=None, prune=True):
    config = {**TINY_EXPERIMENT, "name": "tiny_tune", "search": {"startup_trials": 3, "prune": prune, "params": params or {
        "xgboost.max_depth": {"type": "int", "low": 1, "high": 4},
        "xgboost.learning_rate": {"type": "float", "low": 0.02, "high": 0.3, "log": True},
        "xgboost.n_estimators": {"type": "int", "low": 20, "high": 120, "step": 20},
        "fusion.method": {"type": "categorical", "choices": ["fusion_head", "late_fusion"]},
        "fusion.fixed_weight": {"type": "float", "low": 0.0, "high": 1.0},
    }}}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _study(out, name="tiny_tune"):
    return optuna.load_study(study_name=name, storage=open_storage(None, out))


def _finished(study):
    return {t.number: (t.value, tuple(sorted(t.params.items()))) for t in study.get_trials(states=FINISHED)}


def test_five_trial_search_completes_and_its_best_config_trains(trained_model, tmp_path):
    config = _config(tmp_path)
    result = tune(TuneRequest(config, trained_model["train_cohort"], tmp_path / "run", 5,
                              cache=trained_model["cache"]), progress=False)
    assert len(result.study.get_trials(states=FINISHED)) == 5
    assert (tmp_path / "run" / "study_report.html").is_file() and (tmp_path / "run" / "trials.csv").is_file()
    encoder_reuse = [t.user_attrs.get("encoder_cached") for t in result.study.get_trials(states=(TrialState.COMPLETE,))]
    assert encoder_reuse.count(False) <= 1 and encoder_reuse.count(True) >= 3  # one encoder, reused
    best = load_experiment(result.best_config)
    assert best.search is None
    assert best.xgboost.max_depth == result.study.best_trial.params["xgboost.max_depth"]
    run = pipeline.train(best, trained_model["train_cohort"], tmp_path / "model", ImageCache(trained_model["cache"]),
                         progress=False)
    assert run.model.oof_auc_["all"] > 0.7


def test_trials_train_their_encoder_folds_on_a_dask_cluster(trained_model, tmp_path):
    import numpy as np
    import torch
    from distributed import LocalCluster

    config = _config(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each one-thread worker trains
    try:
        here = tune(TuneRequest(config, trained_model["train_cohort"], tmp_path / "here", 2,
                                cache=trained_model["cache"], threads=1), progress=False)
    finally:
        torch.set_num_threads(threads)
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        there = tune(TuneRequest(config, trained_model["train_cohort"], tmp_path / "there", 2,
                                 cache=trained_model["cache"], scheduler=cluster.scheduler_address), progress=False)
    assert len(there.study.get_trials(states=FINISHED)) == len(here.study.get_trials(states=FINISHED)) == 2
    (stored_here,) = (tmp_path / "here" / "encoder_outputs").glob("*.npz")
    (stored_there,) = (tmp_path / "there" / "encoder_outputs").glob("*.npz")
    assert stored_here.name == stored_there.name  # the same encoder setting
    with np.load(stored_here) as a, np.load(stored_there) as b:
        assert np.array_equal(a["oof_logits"], b["oof_logits"]) and np.array_equal(a["fold_of"], b["fold_of"])
    assert _finished(_study(tmp_path / "there")) == _finished(_study(tmp_path / "here"))


def _poll(out, predicate, timeout=240):
    start = time.time()
    while time.time() - start < timeout:
        try:
            study = _study(out)
            if predicate(study):
                return study
        except (KeyError, ValueError, FileNotFoundError):
            pass
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the study")


def test_killed_study_resumes_without_losing_or_repeating_trials(trained_model, tmp_path):
    params = {"encoder.epochs": {"type": "int", "low": 2, "high": 4},
              "xgboost.max_depth": {"type": "int", "low": 1, "high": 4},
              "xgboost.learning_rate": {"type": "float", "low": 0.02, "high": 0.3, "log": True}}
    config = _config(tmp_path, params, prune=False)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "fusion_model.cli", "tune", "--config", str(config), "--cohort",
               str(trained_model["train_cohort"]), "--trials", "8", "--out", str(out), "--cache",
               str(trained_model["cache"])]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    before = _poll(out, lambda s: len(s.get_trials(states=FINISHED)) >= 2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    kept = _finished(_study(out))
    assert 2 <= len(kept) < 8 and before is not None

    again = subprocess.run(command, capture_output=True, text=True, encoding="utf-8")
    assert again.returncode == 0, again.stderr
    study = _study(out)
    after = _finished(study)
    assert len(after) == 8
    assert all(after[n] == kept[n] for n in kept)  # no finished trial lost or changed
    assert len({p for _, p in after.values()}) == 8  # none repeated
    assert not study.get_trials(states=(TrialState.RUNNING,))


def test_dead_workers_trials_are_failed_even_when_their_pid_is_reused_or_never_recorded(tmp_path):
    from fusion_model.tune.storage import claim_lock, fail_dead_trials, worker_identity

    storage = open_storage(None, tmp_path)
    study = optuna.create_study(study_name="s", storage=storage)
    alive = study.ask()
    alive.set_user_attr("worker", worker_identity())
    reused = study.ask()  # a dead worker whose pid now belongs to this process: the start time differs
    reused.set_user_attr("worker", {**worker_identity(), "started": (worker_identity()["started"] or 0) + 1})
    unlabelled = study.ask()  # killed between asking for the trial and labelling it
    with claim_lock(tmp_path):
        failed = fail_dead_trials(study, storage)
    states = {t.number: t.state for t in study.get_trials()}
    if worker_identity()["started"] is None:  # no /proc: only the pid can be compared
        assert failed == 1 and states[reused.number] == TrialState.RUNNING
    else:
        assert failed == 2 and states[reused.number] == TrialState.FAIL
    assert states[alive.number] == TrialState.RUNNING and states[unlabelled.number] == TrialState.FAIL


def test_two_processes_share_one_study_without_duplicates(trained_model, tmp_path):
    params = {"xgboost.n_estimators": {"type": "int", "low": 200, "high": 600},
              "xgboost.max_depth": {"type": "int", "low": 1, "high": 6},
              "xgboost.learning_rate": {"type": "float", "low": 0.01, "high": 0.3, "log": True}}
    config = _config(tmp_path, params, prune=False)
    result = tune(TuneRequest(config, trained_model["train_cohort"], tmp_path / "run", 24, jobs=2,
                              cache=trained_model["cache"]), progress=False)
    finished = result.study.get_trials(states=FINISHED)
    assert len(finished) == 24 and len({t.number for t in finished}) == 24
    assert len({tuple(sorted(t.params.items())) for t in finished}) == 24
    assert len({t.user_attrs["worker"]["pid"] for t in finished}) == 2
    assert not result.study.get_trials(states=(TrialState.RUNNING, TrialState.FAIL))


def test_held_out_centre_never_enters_an_objective(trained_model, tmp_path):
    import pandas as pd

    config = _config(tmp_path)
    result = tune(TuneRequest(config, trained_model["train_cohort"], tmp_path / "run", 3, test_centre="centre_c",
                              cache=trained_model["cache"]), progress=False)
    table = pd.read_csv(trained_model["train_cohort"] / "clinical.csv", dtype=str)
    held_out = table["lesion_id"][table["centre"] == "centre_c"].tolist()
    training = table["lesion_id"][table["centre"] != "centre_c"].tolist()
    assert sorted(result.study.user_attrs["test_lesions"]) == sorted(held_out) and held_out
    expected = hashlib.sha256("\n".join(training).encode()).hexdigest()[:16]
    for trial in result.study.get_trials(states=FINISHED):
        if trial.state == TrialState.COMPLETE:
            assert trial.user_attrs["lesions_sha256"] == expected
            assert trial.user_attrs["lesions"] == len(training)


def test_search_space_errors_name_the_key(tmp_path):
    from fusion_model.errors import UserInputError

    bad = _config(tmp_path, {"xgboost.max_depht": {"type": "int", "low": 1, "high": 3}})
    with pytest.raises(UserInputError, match="xgboost.max_depht"):
        load_experiment(bad)
    bad = _config(tmp_path, {"xgboost.max_depth": {"type": "int", "low": 0, "high": 3}})
    with pytest.raises(UserInputError, match="search.params.xgboost.max_depth: 0 is not a valid value"):
        load_experiment(bad)
