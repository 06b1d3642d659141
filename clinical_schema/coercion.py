"""Coercion of common spellings into the schema's canonical values (pure functions).

Each coercer returns the coerced column and the positions it could not read, so that the
validator can report every unreadable cell with its row and original value.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

NA_STRINGS = frozenset({"", "na", "n/a", "nan", "none", "null", "missing", "unknown", "?", "-"})

_TRUE = {"yes", "y", "true", "t", "1", "1.0", "ja", "oui", "si"}
_FALSE = {"no", "n", "false", "f", "0", "0.0", "nein", "non"}
_SEX = {"f": "F", "female": "F", "w": "F", "woman": "F", "m": "M", "male": "M", "man": "M"}
_SIDE = {"l": "left", "left": "left", "r": "right", "right": "right"}
_MASK_SOURCE = {"manual": "manual", "human": "manual", "reader": "manual", "radiologist": "manual",
                "auto": "auto", "automatic": "auto", "model": "auto", "segmenter": "auto"}
_LABEL = {"0": 0, "0.0": 0, "benign": 0, "1": 1, "1.0": 1, "malignant": 1}
_LESION_TYPE_ALIASES = {
    "acc": "adrenocortical_carcinoma",
    "adrenal_cortical_carcinoma": "adrenocortical_carcinoma",
    "adrenocortical_cancer": "adrenocortical_carcinoma",
    "pheo": "pheochromocytoma",
    "phaeochromocytoma": "pheochromocytoma",
    "mets": "metastasis",
    "metastases": "metastasis",
    "adrenal_adenoma": "adenoma",
    "lipid_rich_adenoma": "adenoma",
    "lipid_poor_adenoma": "adenoma",
    "adrenal_cyst": "cyst",
}


def _key(value: object) -> str | None:
    """Lower-cased, stripped text of a cell; None for a missing cell."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    text = str(value).strip().lower()
    return None if text in NA_STRINGS else text


def coerce_text(col: pd.Series) -> tuple[pd.Series, list[int]]:
    """Text cells, empty-like ones as missing; never a failure."""
    out = [None if _key(v) is None else str(v).strip() for v in col]
    return pd.Series(out, index=col.index, dtype="str"), []


def coerce_number(col: pd.Series) -> tuple[pd.Series, list[int]]:
    """Numbers; returns the rows that are not numbers."""
    keys = [_key(v) for v in col]
    values = pd.to_numeric(pd.Series(keys, index=col.index, dtype="object"), errors="coerce")
    bad = [i for i, (k, v) in enumerate(zip(keys, values)) if k is not None and np.isnan(v)]
    return values.astype("float64"), bad


def _coerce_mapped(col: pd.Series, mapping: dict, dtype: str) -> tuple[pd.Series, list[int]]:
    out, bad = [], []
    for i, value in enumerate(col):
        key = _key(value)
        if key is None:
            out.append(pd.NA)
        elif key in mapping:
            out.append(mapping[key])
        else:
            out.append(pd.NA)
            bad.append(i)
    return pd.Series(out, index=col.index, dtype=dtype), bad


def coerce_boolean(col: pd.Series) -> tuple[pd.Series, list[int]]:
    """yes/no, true/false, 1/0 as booleans; returns the rows that are neither."""
    mapping = {**{k: True for k in _TRUE}, **{k: False for k in _FALSE}}
    return _coerce_mapped(col, mapping, "boolean")


def coerce_label(col: pd.Series) -> tuple[pd.Series, list[int]]:
    """benign/malignant or 0/1 as 0/1; returns the rows that are neither."""
    return _coerce_mapped(col, _LABEL, "Int64")


def coerce_integer(col: pd.Series) -> tuple[pd.Series, list[int]]:
    """Whole numbers; returns the rows that are not numbers or not whole."""
    numbers, bad = coerce_number(col)
    fractional = [i for i, v in enumerate(numbers) if not np.isnan(v) and v != round(v)]
    numbers = numbers.where(~numbers.index.isin(numbers.index[fractional]))
    return numbers.round().astype("Int64"), sorted(set(bad) | set(fractional))


def _coerce_category(col: pd.Series, normalise) -> tuple[pd.Series, list[int]]:
    """Canonicalise spellings; unknown values are kept as written so the schema's
    ``isin`` check reports them with the allowed values."""
    out = []
    for value in col:
        key = _key(value)
        out.append(None if key is None else normalise(key, str(value).strip()))
    return pd.Series(out, index=col.index, dtype="str"), []


def coerce_sex(col: pd.Series) -> tuple[pd.Series, list[int]]:
    """M/F and common spellings (male, female) as M or F."""
    return _coerce_category(col, lambda key, raw: _SEX.get(key, raw))


def coerce_side(col: pd.Series) -> tuple[pd.Series, list[int]]:
    """L/R and common spellings (left, right) as left or right."""
    return _coerce_category(col, lambda key, raw: _SIDE.get(key, raw))


def coerce_mask_source(col: pd.Series) -> tuple[pd.Series, list[int]]:
    """manual / auto and common spellings (human, reader; automatic, model) as manual or auto."""
    return _coerce_category(col, lambda key, raw: _MASK_SOURCE.get(key, raw))


def normalise_lesion_type(key: str) -> str:
    """A lesion type spelling (ACC, pheo, mets ...) as the schema's name."""
    snake = re.sub(r"[\s\-]+", "_", key)
    return _LESION_TYPE_ALIASES.get(snake, snake)


def coerce_lesion_type(col: pd.Series) -> tuple[pd.Series, list[int]]:
    """Lesion types in the schema's spelling."""
    return _coerce_category(col, lambda key, raw: normalise_lesion_type(key))
