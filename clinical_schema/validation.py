"""Validate a clinical table against the schema, reporting every problem at once."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import pandera.pandas as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from clinical_schema import coercion
from clinical_schema.model import BOOLEAN_COLUMNS, LAB_COLUMNS, ClinicalTable

HEADER_LINES = 1  # CSV row numbers in messages count the header as line 1


class ExtraFeature(BaseModel):
    """A numeric feature a cohort adds to the schema (declared in cohort.json)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    unit: str | None = None
    description: str = ""
    group: str = "extra"
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _range_ordered(self) -> "ExtraFeature":
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


@dataclass(frozen=True)
class TableProblem:
    """One failed check: ``row`` is the CSV line number (header = 1), None for the whole table."""

    column: str
    check: str
    value: object = None
    row: int | None = None
    lesion_id: str | None = None
    hint: str = ""

    def message(self, source: str = "clinical.csv") -> str:
        """The problem as one line naming the file, row, lesion, column, value and fix."""
        where = f"{source}" + (f" row {self.row}" if self.row is not None else "")
        if self.lesion_id:
            where += f" (lesion {self.lesion_id})"
        value = "" if self.value is None else f" value {self.value!r}"
        hint = f": {self.hint}" if self.hint else ""
        return f"{where}, column {self.column!r}:{value} fails {self.check}{hint}"


@dataclass
class TableValidation:
    """The coerced table and every problem found in it."""

    table: pd.DataFrame | None
    problems: list[TableProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when there is no problem."""
        return not self.problems

    def problems_frame(self) -> pd.DataFrame:
        """The problems as a table."""
        rows = [
            {"row": p.row, "lesion_id": p.lesion_id, "column": p.column, "value": p.value, "check": p.check,
             "hint": p.hint}
            for p in self.problems
        ]
        frame = pd.DataFrame(rows, columns=["row", "lesion_id", "column", "value", "check", "hint"])
        return frame.astype({"row": "Int64"})


def build_schema(extra_features: Sequence[ExtraFeature] = (), require_label: bool = False) -> pa.DataFrameSchema:
    """The pandera schema for a cohort: the base model plus its declared extra features."""
    schema = ClinicalTable.to_schema()
    if extra_features:
        clashes = [f.name for f in extra_features if f.name in schema.columns]
        if clashes:
            raise ValueError(f"extra features {clashes} clash with schema columns; choose other names")
        schema = schema.add_columns({f.name: _extra_column(f) for f in extra_features})
    if require_label:
        schema = schema.update_column("label", required=True, nullable=False)
    return schema


def _extra_column(feature: ExtraFeature) -> pa.Column:
    checks = []
    if feature.min is not None:
        checks.append(pa.Check.ge(feature.min))
    if feature.max is not None:
        checks.append(pa.Check.le(feature.max))
    return pa.Column(
        float, checks=checks, nullable=True, required=False, coerce=True, description=feature.description,
        metadata={"group": feature.group, "unit": feature.unit},
    )


_COERCERS = {
    "label": coercion.coerce_label,
    "mask_label": coercion.coerce_integer,
    "mask_label_b": coercion.coerce_integer,
    "sex": coercion.coerce_sex,
    "side": coercion.coerce_side,
    "mask_source": coercion.coerce_mask_source,
    "lesion_type": coercion.coerce_lesion_type,
    **{name: coercion.coerce_boolean for name in BOOLEAN_COLUMNS},
}
_UNREADABLE = {
    "label": "0/1 or benign/malignant",
    "mask_label": "a whole number >= 1",
    "mask_label_b": "a whole number >= 1",
    **{name: "yes/no, true/false or 1/0" for name in BOOLEAN_COLUMNS},
}


def _coercer_for(column: pa.Column):
    if column.name in _COERCERS:
        return _COERCERS[column.name]
    if str(column.dtype) in ("float64", "int64"):
        return coercion.coerce_number
    return coercion.coerce_text


def validate_clinical_table(
    raw: pd.DataFrame,
    extra_features: Sequence[ExtraFeature] = (),
    require_label: bool = False,
) -> TableValidation:
    """Coerce and check ``raw`` (cells as read from the CSV); collect every problem.

    The coerced table is returned in every case (cells that could not be read are missing),
    so that file-level checks can go on; ``ok`` tells whether it may be used.
    """
    schema = build_schema(extra_features, require_label)
    raw = raw.rename(columns=lambda c: str(c).strip()).reset_index(drop=True)
    lesion_ids = raw["lesion_id"].astype("str").str.strip().tolist() if "lesion_id" in raw else [None] * len(raw)
    problems: list[TableProblem] = []

    undeclared = [c for c in raw.columns if c not in schema.columns]
    for name in undeclared:
        problems.append(TableProblem(
            column=name, check="declared column",
            hint="not a schema column; declare it under 'extra_features' in cohort.json or remove it "
            f"(did you mean {_closest(name, schema.columns)!r}?)" if _closest(name, schema.columns)
            else "not a schema column; declare it under 'extra_features' in cohort.json or remove it",
        ))
    duplicated = raw.columns[raw.columns.duplicated()].unique().tolist()
    for name in duplicated:
        problems.append(TableProblem(column=name, check="unique column name", hint="the column appears twice"))
    if duplicated:
        return TableValidation(None, problems)

    table = pd.DataFrame(index=raw.index)
    unreadable: set[tuple[int, str]] = set()
    for name, column in schema.columns.items():
        if name not in raw.columns:
            if column.required:
                problems.append(TableProblem(column=name, check="required column", hint="add this column"))
            continue
        values, bad_positions = _coercer_for(column)(raw[name])
        for pos in bad_positions:
            unreadable.add((pos, name))
            expected = _UNREADABLE.get(name, "a number")
            problems.append(TableProblem(
                column=name, check=f"readable as {expected}", value=raw[name].iloc[pos],
                row=pos + 1 + HEADER_LINES, lesion_id=lesion_ids[pos],
            ))
        table[name] = values

    try:
        schema.validate(table, lazy=True)
    except pa.errors.SchemaErrors as err:
        problems.extend(_pandera_problems(err.failure_cases, lesion_ids, unreadable))

    problems.sort(key=lambda p: (p.row is not None, p.row or 0, p.column))
    return TableValidation(table, problems)


def _pandera_problems(
    failure_cases: pd.DataFrame, lesion_ids: list, unreadable: set[tuple[int, str]]
) -> list[TableProblem]:
    out = []
    for case in failure_cases.itertuples(index=False):
        check = str(case.check)
        if check.startswith(("column_in_schema", "column_in_dataframe", "dtype(", "coerce_dtype(")):
            continue  # reported by the coercion pass with a better message
        index = case.index
        has_row = index is not None and not (isinstance(index, float) and math.isnan(index))
        pos = int(index) if has_row else None
        value = case.failure_case
        column = str(case.column)
        if pos is not None and (pos, column) in unreadable:
            continue  # already reported as unreadable
        out.append(TableProblem(
            column=column, check=_readable_check(check), value=None if _is_na(value) else value,
            row=None if pos is None else pos + 1 + HEADER_LINES,
            lesion_id=None if pos is None else lesion_ids[pos],
            hint=_hint(column, check, value),
        ))
    return out


def _readable_check(check: str) -> str:
    replacements = {
        "greater_than_or_equal_to": ">=", "less_than_or_equal_to": "<=", "greater_than": ">", "less_than": "<",
    }
    for name, symbol in replacements.items():
        if check.startswith(name + "("):
            return f"{symbol} {check[len(name) + 1:-1]}"
    if check == "field_uniqueness":
        return "unique"
    if check.startswith("isin("):
        allowed = check[len("isin(["):-2].replace("'", "")
        return f"one of: {allowed}"
    if check == "not_nullable":
        return "not empty"
    return check


def _hint(column: str, check: str, value: object) -> str:
    if column in LAB_COLUMNS and not _is_na(value) and float(value) == 0:
        return "a laboratory value that was not measured must be left empty, not 0"
    if check == "not_nullable" and column == "label":
        return "every lesion of a training or test cohort needs a label (0 benign, 1 malignant)"
    if check == "not_nullable":
        return "this column may not be empty"
    if check == "field_uniqueness":
        return "each lesion_id must appear once"
    return ""


def _is_na(value: object) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _closest(name: str, candidates) -> str | None:
    import difflib

    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.75)
    return matches[0] if matches else None
