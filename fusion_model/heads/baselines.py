"""Guideline rules scored like models (ESE/ENSAT 2023; EURINE-ACT, Bancos 2020).

The rules themselves are data (:data:`fusion_model.catalogue.GUIDELINE_RULES`): a rule is
suspicious (1) when every one of its ``column > threshold`` conditions holds, benign (0) when
one fails, and missing (NaN) when any of its inputs is missing. So ``hu_10`` calls a lesion of
exactly 10 HU benign, ``size_40`` one of exactly 40 mm benign.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fusion_model.catalogue import GUIDELINE_RULES, GuidelineRule


def _column(table: pd.DataFrame, name: str) -> pd.Series:
    return pd.to_numeric(table.get(name, pd.Series(np.nan, index=table.index)), errors="coerce")


def rule_score(table: pd.DataFrame, rule: GuidelineRule) -> pd.Series:
    """1 suspicious, 0 benign, NaN where an input of the rule is missing; index follows ``table``."""
    score = pd.Series(1.0, index=table.index)
    for column, threshold in rule.conditions:
        values = _column(table, column)
        score = score * (values > threshold).astype(float).where(values.notna())
    return score


def rule_scores(table: pd.DataFrame, rules) -> pd.DataFrame:
    """One column per named rule (see :func:`rule_score`)."""
    unknown = [r for r in rules if r not in GUIDELINE_RULES]
    if unknown:
        raise ValueError(f"unknown rule(s) {unknown}; choose from {list(GUIDELINE_RULES)}")
    return pd.DataFrame({name: rule_score(table, GUIDELINE_RULES[name]) for name in rules}, index=table.index)
