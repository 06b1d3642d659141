"""The clinical table contract of fusion-model: pandera model, coercion, validation, export."""

from clinical_schema.model import (
    BOOLEAN_COLUMNS,
    CLINICAL_COLUMNS,
    LAB_COLUMNS,
    LESION_TYPES,
    MALIGNANT_LESION_TYPES,
    MASK_SOURCES,
    PATH_COLUMNS,
    PHASES,
    RADIOLOGICAL_COLUMNS,
    SCHEMA_VERSION,
    ClinicalTable,
)
from clinical_schema.validation import (
    ExtraFeature,
    TableProblem,
    TableValidation,
    build_schema,
    validate_clinical_table,
)

__all__ = [
    "BOOLEAN_COLUMNS", "CLINICAL_COLUMNS", "LAB_COLUMNS", "LESION_TYPES", "MALIGNANT_LESION_TYPES", "MASK_SOURCES",
    "PATH_COLUMNS", "PHASES", "RADIOLOGICAL_COLUMNS", "SCHEMA_VERSION", "ClinicalTable", "ExtraFeature",
    "TableProblem", "TableValidation", "build_schema", "validate_clinical_table",
]
