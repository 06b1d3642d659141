"""A reader study's design and folder: who reads which case, in which arm, in which order.

Study folder (written by ``reader-study prepare``)::

    study.json                 the design: readers, cases, sessions, scale, washout (no labels, no patient ids)
    cases/CODE/PHASE.nii.gz    each case's CT phases, cropped around the lesion (no DICOM/NIfTI text fields)
    cases/CODE/outline.nii.gz  the lesion's outline (0/1)
    cases/CODE/panel.json      the model's output for the aided arm (probability, lesion types, main factors)
    private/key.csv            case code -> lesion id, patient id, label, lesion type (never served)
    private/reader_tokens.csv  each reader's secret token, to hand out (never served)
    answers.sqlite             the readings, written as they are given (serve / simulate)

Designs: **crossover** (the cases split in two halves balanced by label; in session 1 a reader reads one half
unaided and the other aided, in session 2 after the washout the reverse; readers alternate between the two
orders) and **sequential** (one session; each case read unaided, the answer locked, then at once aided).
Every reader gets their own random order. Loading checks a hand-edited study against itself and names what is
wrong.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fusion_model.errors import UserInputError

STUDY_FILE = "study.json"
KEY_FILE = "private/key.csv"
TOKENS_FILE = "private/reader_tokens.csv"
ANSWERS_FILE = "answers.sqlite"
ARMS = ("unaided", "aided")
READER_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Item(_Strict):
    """One reading: a case in an arm."""

    case: str
    arm: Literal["unaided", "aided"]


class Reader(_Strict):
    """A reader: their code, crossover group and the SHA-256 of their secret token."""

    code: str
    group: int = Field(ge=0, le=1)
    token_sha256: str = Field(min_length=64, max_length=64)


class Case(_Strict):
    """A case as readers see it: a blinded code, the phases shown, whether an outline is shown."""

    code: str
    phases: list[str] = Field(min_length=1)


class Study(_Strict):
    """The design of a reader study (study.json)."""

    format_version: int = 1
    name: str
    created_utc: str
    design: Literal["crossover", "sequential"]
    washout_days: int = Field(ge=0)
    answers_locked: bool = True
    lesion_types: list[str] = Field(min_length=1)
    model_variant: str
    readers: list[Reader] = Field(min_length=1)
    cases: list[Case] = Field(min_length=2)
    sessions: dict[str, list[list[Item]]]
    seed: int

    def reader(self, code: str) -> Reader | None:
        """The reader with this code, or None."""
        return next((r for r in self.readers if r.code == code), None)

    def case(self, code: str) -> Case | None:
        """The case with this code, or None."""
        return next((c for c in self.cases if c.code == code), None)

    def items(self, reader: str) -> list[tuple[int, int, Item]]:
        """(session, position, item) of every reading of a reader, in order (sessions and positions from 1)."""
        return [(s + 1, k + 1, item) for s, session in enumerate(self.sessions[reader])
                for k, item in enumerate(session)]

    @property
    def readings_per_reader(self) -> int:
        """Readings each reader makes (cases x arms)."""
        return 2 * len(self.cases)


def token_digest(token: str) -> str:
    """The SHA-256 of a reader token (study.json keeps only this)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_reader_codes(codes: list[str]) -> list[str]:
    """Reader codes: letters, digits, '_', '.', '-' (up to 32), distinct, at least one."""
    codes = [c.strip() for c in codes if c.strip()]
    if not codes:
        raise UserInputError("--readers: give the reader codes, e.g. --readers R1,R2,R3")
    bad = [c for c in codes if not READER_CODE.match(c)]
    if bad:
        raise UserInputError(f"--readers: {bad[0]!r} is not a usable reader code; use letters, digits, '_', '.' "
                             "or '-' (up to 32 characters), no names")
    duplicated = sorted({c for c in codes if codes.count(c) > 1})
    if duplicated:
        raise UserInputError(f"--readers: {duplicated[0]} is given twice")
    return codes


def balanced_halves(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """0/1 per case: two halves with the positives and negatives split as evenly as possible."""
    half = np.zeros(len(labels), int)
    start = 0
    for value in (1, 0):
        idx = np.flatnonzero(labels == value)
        rng.shuffle(idx)
        half[idx] = (np.arange(len(idx)) + start) % 2
        start += len(idx)
    return half


def make_sessions(case_codes: list[str], labels: np.ndarray, readers: list[str], design: str,
                  rng: np.random.Generator) -> tuple[dict[str, list[list[Item]]], dict[str, int]]:
    """Each reader's sessions (lists of items in reading order) and crossover group."""
    half = balanced_halves(np.asarray(labels), rng)
    sessions, groups = {}, {}
    for j, reader in enumerate(readers):
        group = j % 2
        groups[reader] = group
        if design == "sequential":
            order = rng.permutation(len(case_codes))
            sessions[reader] = [[Item(case=case_codes[k], arm=arm) for k in order for arm in ARMS]]
            continue
        reader_sessions = []
        for session in range(2):
            # group 0: half 0 unaided first; group 1: half 0 aided first; session 2 swaps
            items = [Item(case=case_codes[k], arm=ARMS[(half[k] + group + session) % 2])
                     for k in range(len(case_codes))]
            reader_sessions.append([items[k] for k in rng.permutation(len(items))])
        sessions[reader] = reader_sessions
    return sessions, groups


# ----------------------------------------------------------------------------------------------- loading
def load_study(folder: Path) -> Study:
    """study.json of a study folder, checked against itself and the folder; every problem names what to do."""
    folder = Path(folder)
    path = folder / STUDY_FILE
    if not path.is_file():
        raise UserInputError(f"{folder}: not a reader study folder ({STUDY_FILE} missing); make one with "
                             "'fusion-model reader-study prepare'")
    try:
        study = Study.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as err:
        raise UserInputError(f"{path}: not valid JSON (line {err.lineno}: {err.msg}); restore it from "
                             "'reader-study prepare'") from None
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UserInputError(f"{path}: {where}: {first['msg']}; the design was edited by hand, restore it from "
                             "'reader-study prepare'") from None
    check_study(study, folder)
    return study


def check_study(study: Study, folder: Path) -> None:
    """A design in which every reader reads every case once per arm, every case has its files, and (crossover)
    the unaided and aided readings of a case fall in different sessions."""
    path = Path(folder) / STUDY_FILE
    codes = [c.code for c in study.cases]
    if len(set(codes)) != len(codes):
        raise UserInputError(f"{path}: case codes repeat; restore the design from 'reader-study prepare'")
    readers = [r.code for r in study.readers]
    for reader in study.sessions:
        if reader not in readers:
            raise UserInputError(f"{path}: sessions name reader {reader!r}, who is not among the readers "
                                 f"({', '.join(readers)}); restore the design from 'reader-study prepare'")
    known = set(codes)
    expected_sessions = 2 if study.design == "crossover" else 1
    for reader in readers:
        if reader not in study.sessions:
            raise UserInputError(f"{path}: reader {reader} has no sessions; restore the design")
        sessions = study.sessions[reader]
        if len(sessions) != expected_sessions:
            raise UserInputError(f"{path}: reader {reader} has {len(sessions)} session(s); a {study.design} design "
                                 f"has {expected_sessions}")
        seen: dict[tuple[str, str], int] = {}
        for s, session in enumerate(sessions):
            for item in session:
                if item.case not in known:
                    raise UserInputError(f"{path}: reader {reader}'s session {s + 1} names case {item.case}, which "
                                         "is not among the cases; restore the design from 'reader-study prepare'")
                key = (item.case, item.arm)
                if key in seen:
                    raise UserInputError(f"{path}: reader {reader} reads case {item.case} {item.arm} twice")
                seen[key] = s
        missing = [(c, a) for c in codes for a in ARMS if (c, a) not in seen]
        if missing:
            case, arm = missing[0]
            raise UserInputError(f"{path}: reader {reader} never reads case {case} {arm} ({len(missing)} reading(s) "
                                 "missing); restore the design from 'reader-study prepare'")
        if study.design == "crossover" and any(seen[(c, "unaided")] == seen[(c, "aided")] for c in codes):
            raise UserInputError(f"{path}: reader {reader} reads a case unaided and aided in one session; the "
                                 "crossover design separates them")
    for case in study.cases:
        for name in [*(f"{p}.nii.gz" for p in case.phases), "outline.nii.gz", "panel.json"]:
            if not (Path(folder) / "cases" / case.code / name).is_file():
                raise UserInputError(f"{Path(folder) / 'cases' / case.code / name}: missing; the study folder was "
                                     "edited by hand, restore it from 'reader-study prepare'")


def load_key(folder: Path, study: Study) -> pd.DataFrame:
    """private/key.csv (case -> lesion_id, patient_id, label, lesion_type, ...), checked against the design."""
    path = Path(folder) / KEY_FILE
    if not path.is_file():
        raise UserInputError(f"{path}: missing; the analysis needs the key written by 'reader-study prepare'")
    key = pd.read_csv(path, dtype={"case": str, "lesion_id": str, "patient_id": str})
    for column in ("case", "label"):
        if column not in key:
            raise UserInputError(f"{path}: column {column} missing; restore the key from 'reader-study prepare'")
    key = key.set_index("case")
    missing = [c.code for c in study.cases if c.code not in key.index]
    if missing:
        raise UserInputError(f"{path}: case {missing[0]} of the design is not in the key; restore the key")
    labels = pd.to_numeric(key["label"], errors="coerce")
    if labels.loc[[c.code for c in study.cases]].isna().any() or not labels.dropna().isin((0, 1)).all():
        raise UserInputError(f"{path}: every case needs label 0 (benign) or 1 (malignant)")
    return key
