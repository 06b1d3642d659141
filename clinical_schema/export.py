"""Documents generated from the schema: a markdown data dictionary and a JSON Schema.

Both are derived from the pandera schema (plus a cohort's extra features), so they cannot
drift from what validation enforces.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandera.pandas as pa

from clinical_schema.model import SCHEMA_VERSION
from clinical_schema.validation import ExtraFeature, build_schema

_JSON_TYPES = {"float64": "number", "Int64": "integer", "boolean": "boolean", "str": "string"}
_BOUNDS = {
    "greater_than": "exclusiveMinimum",
    "greater_than_or_equal_to": "minimum",
    "less_than": "exclusiveMaximum",
    "less_than_or_equal_to": "maximum",
}


def _json_type(column: pa.Column) -> str:
    return _JSON_TYPES.get(str(column.dtype), "string")


def _constraints(column: pa.Column) -> dict:
    out: dict = {}
    for check in column.checks:
        stats = check.statistics or {}
        if check.name in _BOUNDS:
            out[_BOUNDS[check.name]] = next(iter(stats.values()))
        elif check.name == "in_range":
            out["minimum"], out["maximum"] = stats["min_value"], stats["max_value"]
        elif check.name == "isin":
            out["enum"] = list(stats["allowed_values"])
        elif check.name == "str_length" and stats.get("min_value"):
            out["minLength"] = stats["min_value"]
    return out


def to_json_schema(extra_features: Sequence[ExtraFeature] = (), require_label: bool = False) -> dict:
    """JSON Schema (draft 2020-12) of one clinical.csv row as an object."""
    schema = build_schema(extra_features, require_label)
    properties, required = {}, []
    for name, column in schema.columns.items():
        meta = column.metadata or {}
        prop: dict = {"description": column.description or ""}
        json_type = _json_type(column)
        prop["type"] = [json_type, "null"] if column.nullable else json_type
        prop.update(_constraints(column))
        if "enum" in prop and column.nullable:
            prop["enum"] = [*prop["enum"], None]
        if meta.get("unit"):
            prop["x-unit"] = meta["unit"]
        prop["x-group"] = meta.get("group", "")
        if column.unique:
            prop["x-unique"] = True
        properties[name] = prop
        if column.required:
            required.append(name)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"fusion-model clinical table row (schema {SCHEMA_VERSION})",
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def _allowed(column: pa.Column) -> str:
    c = _constraints(column)
    if "enum" in c:
        return ", ".join(str(v) for v in c["enum"])
    parts = []
    for key, symbol in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in c:
            parts.append(f"{symbol} {c[key]:g}")
    return " and ".join(parts)


def data_dictionary_markdown(extra_features: Sequence[ExtraFeature] = ()) -> str:
    """The clinical table contract as a Markdown data dictionary."""
    schema = build_schema(extra_features)
    lines = [
        f"# Clinical table data dictionary (schema {SCHEMA_VERSION})",
        "",
        "One row per lesion in `clinical.csv`. Leave a cell empty when a value is missing: missing",
        "laboratory values are NaN, never 0. Columns marked optional may be left out of the file.",
        "Yes/no columns accept yes/no, true/false, y/n and 1/0; `sex` accepts F/M, female/male.",
        "",
        "| column | group | type | unit | allowed | required | may be empty | description |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, column in schema.columns.items():
        meta = column.metadata or {}
        lines.append(
            f"| `{name}` | {meta.get('group', '')} | {_json_type(column)} | {meta.get('unit') or ''} "
            f"| {_allowed(column)} | {'yes' if column.required else 'optional'} "
            f"| {'yes' if column.nullable else 'no'} | {column.description or ''} |"
        )
    return "\n".join(lines) + "\n"
