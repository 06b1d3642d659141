"""Guideline rules scored like models (ESE/ENSAT 2023; EURINE-ACT, Bancos 2020).

- ``hu_10``: unenhanced attenuation > 10 HU is suspicious (<= 10 HU means benign);
- ``size_40``: maximal diameter > 40 mm is suspicious;
- ``hu_10_and_size_40``: suspicious only when both hold.

Each rule gives 1 (suspicious), 0 (benign) or NaN when its input is missing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

RULES = {
    "hu_10": "unenhanced HU > 10",
    "size_40": "size > 40 mm",
    "hu_10_and_size_40": "unenhanced HU > 10 and size > 40 mm",
}


def _flag(values: pd.Series, threshold: float) -> pd.Series:
    out = (values > threshold).astype(float)
    return out.where(values.notna())


def rule_scores(table: pd.DataFrame, rules) -> pd.DataFrame:
    """One column per rule: 1 suspicious, 0 benign, NaN where the input is missing."""
    hu = pd.to_numeric(table.get("unenhanced_hu", pd.Series(np.nan, index=table.index)), errors="coerce")
    size = pd.to_numeric(table.get("size_mm", pd.Series(np.nan, index=table.index)), errors="coerce")
    out = pd.DataFrame(index=table.index)
    for rule in rules:
        if rule == "hu_10":
            out[rule] = _flag(hu, 10.0)
        elif rule == "size_40":
            out[rule] = _flag(size, 40.0)
        elif rule == "hu_10_and_size_40":
            both = _flag(hu, 10.0) * _flag(size, 40.0)
            out[rule] = both
        else:
            raise ValueError(f"unknown rule {rule!r}; choose from {list(RULES)}")
    return out
