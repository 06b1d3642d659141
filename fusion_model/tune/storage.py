"""Where a study lives and how workers share it: the storage, the claim lock of one machine, dead-worker
clean-up and heartbeats.

- Storage: Optuna's journal file in the run folder by default (several local processes can share
  it), or any SQLAlchemy URL (e.g. PostgreSQL) for workers on many machines, with heartbeats so a
  dead worker's trial is failed and redone.
- The claim lock serialises "count the trials, then ask for a new one" between the processes of
  one machine, so exactly the requested number of trials finishes.
- A killed worker's trial (kill -9) is found (dead process on this host, or a stale heartbeat),
  marked failed, and run again by whoever claims next.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
import time
from pathlib import Path

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from fusion_model.errors import UserInputError

JOURNAL_FILE = "study.journal"
HEARTBEAT_INTERVAL_S = 10
HEARTBEAT_GRACE_S = 60


def open_storage(storage: str | None, out: Path) -> BaseStorage:
    """Optuna storage: the run folder's journal file by default, else a SQLAlchemy URL or a journal path."""
    if storage in (None, "", "journal"):
        path = Path(out) / JOURNAL_FILE
    elif "://" in storage:
        return _open_database(storage)
    else:
        path = Path(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(str(path)))


def _open_database(url: str, attempts: int = 5) -> BaseStorage:
    """An RDB storage with heartbeats. Workers started together race to create the schema; the loser's
    error is transient, so opening is retried before the user hears of it."""
    for attempt in range(1, attempts + 1):
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_INTERVAL_S,
                                              grace_period=HEARTBEAT_GRACE_S)
        except Exception as err:  # SQLAlchemy raises many kinds; the user needs the URL and the reason
            if attempt < attempts and not isinstance(err, (ImportError, ValueError)):
                time.sleep(0.5 * attempt)
                continue
            detail = str(err).strip().splitlines()[0] if str(err).strip() else "no detail"
            raise UserInputError(
                f"--storage {storage_label(url, Path('.'))}: cannot open ({type(err).__name__}: {detail}); give a "
                "SQLAlchemy URL such as postgresql://user:pass@host/db or sqlite:///study.db (PostgreSQL needs "
                "pip install 'fusion-model[postgres]')") from None


def storage_label(storage: str | None, out: Path) -> str:
    """How reports name the storage (never with its password)."""
    if storage in (None, "", "journal"):
        return f"journal file {Path(out) / JOURNAL_FILE}"
    if "://" in (storage or ""):
        scheme, _, rest = storage.partition("://")
        return f"{scheme}://{rest.split('@')[-1]}"
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


def process_start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot, Linux ``/proc``); None where it cannot be read.

    A pid alone names a process only while it lives: after it dies the kernel may hand the same pid to a
    new process, which would make a dead worker's trial look alive for ever. pid and start time together
    name one process.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
    try:
        return int(fields[19])  # field 22 of proc(5); fields[0] is field 3
    except (IndexError, ValueError):
        return None


def worker_identity() -> dict:
    """This process as a trial's ``worker`` user attribute (host, pid and start time)."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": process_start_ticks(pid)}


def process_alive(pid: int, started: int | None = None) -> bool:
    """Whether the process of this host with this pid (and, when given, this start time) exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if started is None:
        return True
    now = process_start_ticks(pid)
    return now is None or now == int(started)


def fail_dead_trials(study: optuna.Study, storage: BaseStorage) -> int:
    """Mark RUNNING trials of dead local workers (and, in a database, stale heartbeats) as FAIL; returns
    how many local ones were failed. Call it holding :func:`claim_lock`."""
    if isinstance(storage, optuna.storages.RDBStorage):
        optuna.storages.fail_stale_trials(study)
    failed = 0
    host = socket.gethostname()
    database = isinstance(storage, optuna.storages.RDBStorage)
    now = datetime.datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if worker is None:
            # Asked but never labelled: its worker died between the two (both happen under the claim lock,
            # which the caller holds). Workers of other machines share a database without that lock, so
            # there the trial is given the heartbeat's grace period first.
            started = trial.datetime_start or now
            orphan = not database or (now - started).total_seconds() > HEARTBEAT_GRACE_S
        else:
            orphan = (worker.get("host") == host and bool(worker.get("pid"))
                      and not process_alive(int(worker["pid"]), worker.get("started")))
        if orphan:
            study.tell(trial.number, state=TrialState.FAIL)
            failed += 1
    return failed


def heartbeat(study: optuna.Study, storage: BaseStorage, trial: optuna.Trial):
    """A context that records the trial's heartbeat while it runs (database storages; a no-op elsewhere).

    Optuna starts heartbeats only inside ``Study.optimize``; the ask-and-tell loop that keeps the trial
    total exact has no public way to, so this one function uses Optuna's own heartbeat thread
    (``optuna.storages._heartbeat``). The trial's id comes from the public storage API.
    """
    from optuna.storages._heartbeat import get_heartbeat_thread

    study_id = storage.get_study_id_from_name(study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    return get_heartbeat_thread(trial_id, storage)
