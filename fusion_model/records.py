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


@dataclass
class TrainingCohort:
    """What a model was trained on, as its manifest records it: the cohort, its image channels, how many lesions
    trained and tested, what could not be read, the masks used, and the held-out figures."""

    name: str
    fingerprint: str
    phases: list[str]
    ct_intensities: bool
    channels: list[str]                  # crop channels: phases (when they hold HU), depth if asked, mask
    training_lesions: int
    test_lesions: int
    test_centre: str | None
    unreadable_lesions: list[dict]
    mask_sources: dict[str, int]
    oracle_auc_training: float | None
    test_auc: dict[str, float]
    masks: list[str]
    second_reader_lesions: int
    phase_of: list[str] | None = None    # a per-phase model: the phases of the cohort it came from

    def to_manifest(self) -> dict:
        """Plain data for the manifest's 'cohort' entry."""
        entry = {key: getattr(self, key) for key in self.__dataclass_fields__ if key != "phase_of"}
        return entry if self.phase_of is None else {**entry, "phase_of": self.phase_of}

    @classmethod
    def from_manifest(cls, entry: dict) -> TrainingCohort:
        """The record of a manifest's ``cohort`` entry (a figure an older artifact lacks is None)."""
        return cls(**{key: entry.get(key) for key in cls.__dataclass_fields__})
