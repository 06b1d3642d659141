"""The cohort directory contract: cohort.json + clinical.csv + images and masks.

The names below load on first use (PEP 562), so that importing a submodule (the CLI's commands) does not read
pandas and SimpleITK.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "Cohort": "load", "LesionRecord": "load", "load_cohort": "load", "mask_sources": "load",
    "read_clinical_csv": "load", "COHORT_FILE": "spec", "TABLE_FILE": "spec", "CohortSpec": "spec",
    "Problem": "validate", "ValidationReport": "validate", "validate_cohort": "validate",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
