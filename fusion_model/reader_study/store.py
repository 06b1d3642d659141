"""The readings of a study, in SQLite, written the moment they are given.

One row per (reader, session, position): the case, the arm, the answers, when the case was first shown and
when it was answered (reading time = the difference, so a reload or a restarted server does not reset it).
Each answer is one transaction (WAL journal, synchronous=FULL): a closed browser or a killed server loses
nothing already answered. An answer to a reading already recorded is accepted again when identical (a
browser's retry) and otherwise refused while answers are locked; with answers unlocked it replaces the earlier
one and the earlier one is kept in ``revisions``.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fusion_model.errors import UserInputError

LIKELIHOOD_RANGE = (0, 100)
SCALE_RANGE = (1, 5)
CONFIDENCE_RANGE = (1, 5)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    reader TEXT NOT NULL, session INTEGER NOT NULL, position INTEGER NOT NULL,
    case_code TEXT NOT NULL, arm TEXT NOT NULL,
    likelihood INTEGER, scale5 INTEGER, lesion_type TEXT, confidence INTEGER,
    shown_utc TEXT NOT NULL, answered_utc TEXT, seconds REAL, source TEXT NOT NULL DEFAULT 'browser',
    PRIMARY KEY (reader, session, position));
CREATE TABLE IF NOT EXISTS revisions (
    reader TEXT NOT NULL, session INTEGER NOT NULL, position INTEGER NOT NULL,
    likelihood INTEGER, scale5 INTEGER, lesion_type TEXT, confidence INTEGER, answered_utc TEXT,
    replaced_utc TEXT NOT NULL);
"""


class AnswerError(UserInputError):
    """An answer outside the scale, or one that may no longer be changed."""


@dataclass(frozen=True)
class Answer:
    """A reader's answer to one reading."""

    likelihood: int      # malignancy likelihood 0-100
    scale5: int          # 1 definitely benign ... 5 definitely malignant
    lesion_type: str
    confidence: int      # confidence in the lesion type, 1-5

    @classmethod
    def parse(cls, form: dict, lesion_types: list[str]) -> Answer:
        """From a submitted form (strings); every problem says which field and the allowed range."""
        values = {}
        for name, (lo, hi), label in (("likelihood", LIKELIHOOD_RANGE, "malignancy likelihood"),
                                      ("scale5", SCALE_RANGE, "5-point score"),
                                      ("confidence", CONFIDENCE_RANGE, "confidence")):
            raw = str(form.get(name, "")).strip()
            try:
                value = int(raw)
            except ValueError:
                raise AnswerError(f"{label}: {raw!r} is not a whole number; give {lo}-{hi}") from None
            if not lo <= value <= hi:
                raise AnswerError(f"{label}: {value} is outside the scale {lo}-{hi}")
            values[name] = value
        lesion_type = str(form.get("lesion_type", "")).strip()
        if lesion_type not in lesion_types:
            raise AnswerError(f"most likely lesion type: {lesion_type!r} is not one of {', '.join(lesion_types)}")
        return cls(values["likelihood"], values["scale5"], lesion_type, values["confidence"])


def utc_now() -> str:
    """The current time, ISO 8601 UTC with microseconds."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


class AnswerStore:
    """The readings database of one study (thread-safe; one connection per call)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self):
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    def mark_shown(self, reader: str, session: int, position: int, case: str, arm: str) -> str:
        """Record when a reading was first shown (kept on later views); returns that time."""
        with self._lock, self._connect() as db:
            db.execute("INSERT OR IGNORE INTO readings (reader, session, position, case_code, arm, shown_utc) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (reader, session, position, case, arm, utc_now()))
            return db.execute("SELECT shown_utc FROM readings WHERE reader=? AND session=? AND position=?",
                              (reader, session, position)).fetchone()[0]

    def record(self, reader: str, session: int, position: int, case: str, arm: str, answer: Answer,
               locked: bool = True, source: str = "browser", shown_utc: str | None = None,
               answered_utc: str | None = None) -> str:
        """Write an answer at once: "new", "same" (an identical answer again) or "revised"; a different answer to
        a locked reading raises :class:`AnswerError`."""
        answered = answered_utc or utc_now()
        with self._lock, self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT case_code, arm, likelihood, scale5, lesion_type, confidence, shown_utc, "
                                 "answered_utc FROM readings WHERE reader=? AND session=? AND position=?",
                                 (reader, session, position)).fetchone()
                if row is not None and (row[0], row[1]) != (case, arm):
                    raise AnswerError(f"reading {session}.{position} of reader {reader} is case {row[0]} {row[1]}, "
                                      f"not {case} {arm}")
                if row is not None and row[7] is not None:
                    previous = Answer(row[2], row[3], row[4], row[5])
                    if previous == answer:
                        db.execute("COMMIT")
                        return "same"
                    if locked:
                        raise AnswerError("this case was already answered and answers cannot be changed once "
                                          "recorded")
                    db.execute("INSERT INTO revisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               (reader, session, position, *row[2:6], row[7], answered))
                shown = (row[6] if row is not None else None) or shown_utc or answered
                seconds = (dt.datetime.fromisoformat(answered) - dt.datetime.fromisoformat(shown)).total_seconds()
                db.execute("INSERT INTO readings (reader, session, position, case_code, arm, likelihood, scale5, "
                           "lesion_type, confidence, shown_utc, answered_utc, seconds, source) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (reader, session, position) "
                           "DO UPDATE SET likelihood=excluded.likelihood, scale5=excluded.scale5, "
                           "lesion_type=excluded.lesion_type, confidence=excluded.confidence, "
                           "answered_utc=excluded.answered_utc, seconds=excluded.seconds, source=excluded.source",
                           (reader, session, position, case, arm, answer.likelihood, answer.scale5,
                            answer.lesion_type, answer.confidence, shown, answered, max(seconds, 0.0), source))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return "new" if row is None or row[7] is None else "revised"

    def answered(self, reader: str) -> dict[tuple[int, int], str]:
        """(session, position) -> answered_utc of the reader's recorded answers."""
        with self._connect() as db:
            rows = db.execute("SELECT session, position, answered_utc FROM readings WHERE reader=? AND "
                              "answered_utc IS NOT NULL", (reader,)).fetchall()
        return {(s, p): t for s, p, t in rows}

    def readings(self) -> pd.DataFrame:
        """Every answered reading."""
        with self._connect() as db:
            return pd.read_sql_query("SELECT * FROM readings WHERE answered_utc IS NOT NULL "
                                     "ORDER BY reader, session, position", db)

    def answer_of(self, reader: str, session: int, position: int) -> Answer | None:
        """The recorded answer of one reading, or None."""
        with self._connect() as db:
            row = db.execute("SELECT likelihood, scale5, lesion_type, confidence FROM readings WHERE reader=? AND "
                             "session=? AND position=? AND answered_utc IS NOT NULL",
                             (reader, session, position)).fetchone()
        return Answer(*row) if row else None
