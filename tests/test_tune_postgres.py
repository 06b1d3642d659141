"""A real PostgreSQL study: two `fusion-model tune` workers share it, one is killed with SIGKILL mid-trial,
and the study still finishes exactly the requested number of trials, the dead one failed and redone.

The server is Debian's `postgresql` package (CI installs it), started by `initdb` + `pg_ctl` in a temporary
directory as an unprivileged user, listening on a free loopback port. Skipped where PostgreSQL or
psycopg is not installed.
"""

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.test_tune import FINISHED, _config


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    pg = _postgres_bin()
    if pg is None or not (pg / "pg_ctl").exists():
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install fusion-model[postgres])")
    root = Path(tempfile.mkdtemp(prefix="fusion-model-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(root, "nobody")
        as_user = ["runuser", "-u", "nobody", "--"]
    data, port = root / "data", _free_port()
    subprocess.run([*as_user, str(pg / "initdb"), "-D", str(data), "-A", "trust", "-U", "fm", "--no-sync"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(pg / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://fm@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(pg / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _running_trial_of(study, pid: int):
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if (trial.user_attrs.get("worker") or {}).get("pid") == pid:
            return trial
    return None


@pytest.mark.slow
def test_two_workers_on_postgresql_survive_a_sigkill_with_an_exact_trial_total(trained_model, postgres_url, tmp_path):
    import optuna
    from optuna.trial import TrialState

    params = {"encoder.epochs": {"type": "int", "low": 2, "high": 5},
              "xgboost.max_depth": {"type": "int", "low": 1, "high": 4}}
    config = _config(tmp_path, params, prune=False)
    out, trials = tmp_path / "run", 6

    def worker(number: int) -> subprocess.Popen:
        command = [sys.executable, "-m", "fusion_model.cli", "tune", "--config", str(config), "--cohort",
                   str(trained_model["train_cohort"]), "--trials", str(trials), "--out", str(out), "--cache",
                   str(trained_model["cache"]), "--storage", postgres_url, "--study", "pg-study",
                   "--worker", str(number)]
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, encoding="utf-8")

    first, second = worker(0), worker(1)
    storage = optuna.storages.RDBStorage(postgres_url)
    deadline = time.time() + 300
    victim = None
    while time.time() < deadline and victim is None:
        try:
            study = optuna.load_study(study_name="pg-study", storage=storage)
            victim = _running_trial_of(study, first.pid)
        except KeyError:  # the study is not created yet
            pass
        time.sleep(0.2)
    assert victim is not None, "the first worker never ran a trial"
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    _, stderr = second.communicate(timeout=600)
    assert second.returncode == 0, stderr

    study = optuna.load_study(study_name="pg-study", storage=storage)
    finished = study.get_trials(states=FINISHED)
    assert len(finished) == trials  # exactly the total, the dead trial redone by the survivor
    killed = study.trials[victim.number]
    assert killed.state == TrialState.FAIL and killed.user_attrs["worker"]["pid"] == first.pid
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert {t.user_attrs["worker"]["pid"] for t in finished} <= {first.pid, second.pid}
