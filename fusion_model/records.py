"""Lesion records: what the stages need to know of one lesion's files, independent of where they came from.

A leaf module (no imports from the rest of the package): the cohort loader makes these records and
the imaging stage reads them, without either package importing the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class LesionRecord:
    """One lesion's identity, its line in clinical.csv, its mask and its CT phase files."""

    lesion_id: str
    patient_id: str
    centre: str
    row: int  # line in clinical.csv (header = 1)
    mask_path: Path
    mask_label: int | None
    phase_paths: dict[str, Path] = field(default_factory=dict)
    label: int | None = None

    @property
    def where(self) -> str:
        """How messages name this lesion."""
        return f"lesion {self.lesion_id} (clinical.csv row {self.row})"
