"""Where a reader is in a study: the next reading, the washout before a second session, or done.

Shared by the reading application and the simulated readers, so both follow the same design.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from fusion_model.reader_study.design import Item, Study
from fusion_model.reader_study.store import AnswerStore


@dataclass(frozen=True)
class Position:
    """A reader's place: ``kind`` is "case" (``session``, ``position`` and ``item`` to read next), "washout"
    (the next session opens at ``opens``) or "done"."""

    kind: str
    done: int
    total: int
    session: int = 0
    position: int = 0
    item: Item | None = None
    sessions: int = 1
    opens: dt.datetime | None = None


def reader_position(study: Study, store: AnswerStore, reader: str, now: dt.datetime | None = None) -> Position:
    """The reader's next reading in the design's order (sessions one after another, the washout between them)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    answered = store.answered(reader)
    sessions = study.sessions[reader]
    total = sum(len(s) for s in sessions)
    done = len(answered)
    for s, items in enumerate(sessions, start=1):
        for p, item in enumerate(items, start=1):
            if (s, p) in answered:
                continue
            if s > 1 and study.washout_days and not any(k[0] == s for k in answered):
                previous = [dt.datetime.fromisoformat(t) for k, t in answered.items() if k[0] == s - 1]
                opens = max(previous) + dt.timedelta(days=study.washout_days)
                if now < opens:
                    return Position("washout", done, total, s, p, item, len(sessions), opens)
            return Position("case", done, total, s, p, item, len(sessions))
    return Position("done", done, total, sessions=len(sessions))
