"""Lesion records: what the stages need to know of one lesion's files, independent of where they came from.

A leaf module (it imports only the error classes): the cohort loader makes these records and
the imaging stage reads them, without either package importing the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fusion_model.errors import UserInputError


@dataclass(frozen=True)
class LesionRecord:
    """One lesion's identity, its line in clinical.csv, its mask and its CT phase files."""

    lesion_id: str
    patient_id: str
    centre: str
    row: int  # line in clinical.csv (header = 1)
    mask_path: Path | None  # None: not outlined yet (fusion-model segment predict outlines it)
    mask_label: int | None
    phase_paths: dict[str, Path] = field(default_factory=dict)
    label: int | None = None

    def require_mask(self) -> Path:
        """The mask path; a lesion without one is refused with what to do."""
        if self.mask_path is None:
            raise UserInputError(f"{self.where}: mask_path is empty; outline the lesion, or run 'fusion-model "
                                   "segment predict' to outline it and use the cohort it writes")
        return self.mask_path

    @property
    def where(self) -> str:
        """How messages name this lesion."""
        return f"lesion {self.lesion_id} (clinical.csv row {self.row})"
