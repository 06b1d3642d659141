"""cohort.json: what a cohort directory declares about itself."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field, field_validator

from clinical_schema import PHASES, SCHEMA_VERSION, ExtraFeature
from fusion_model.configbase import StrictModel, known_names, parse_model
from fusion_model.errors import UserInputError

COHORT_FILE = "cohort.json"
TABLE_FILE = "clinical.csv"


class CohortSpec(StrictModel):
    """Contents of cohort.json (unknown keys are refused)."""

    name: str = Field(min_length=1)
    schema_version: str = SCHEMA_VERSION
    description: str = ""
    label_meaning: str = "1 = malignant, 0 = benign (histology or follow-up)"
    phases: list[str] = Field(min_length=1, description="CT phases present: unenhanced, arterial, venous, delayed")
    centres: list[str] = Field(default_factory=list, description="Centres expected in the table (optional)")
    ct_intensities: bool = Field(
        True, description="False when the 'images' are masks only (no HU values), as in MedMNIST"
    )
    extra_features: list[ExtraFeature] = Field(default_factory=list)
    source: str = ""
    licence: str = ""

    @field_validator("phases")
    @classmethod
    def _known_phases(cls, phases: list[str]) -> list[str]:
        return known_names(phases, PHASES, "phase", ordered=True)  # canonical order = channel order

    @field_validator("schema_version")
    @classmethod
    def _compatible(cls, version: str) -> str:
        if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise ValueError(f"schema version {version} is not compatible with this fusion-model ({SCHEMA_VERSION})")
        return version

    @property
    def reference_phase(self) -> str:
        """The phase whose grid masks and other phases must share: unenhanced when present."""
        return self.phases[0]


def read_cohort_spec(root: Path) -> CohortSpec:
    """The validated cohort.json of a cohort directory."""
    path = Path(root) / COHORT_FILE
    if not path.is_file():
        raise UserInputError(
            f"{path}: not found; a cohort directory needs {COHORT_FILE} (name, phases) and {TABLE_FILE}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserInputError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    return parse_model(CohortSpec, data, str(path))


def write_cohort_spec(root: Path, spec: CohortSpec) -> Path:
    """Write cohort.json atomically; returns its path."""
    from fusion_model.fileio import atomic_write_json

    return atomic_write_json(Path(root) / COHORT_FILE, spec.model_dump(mode="json"))
