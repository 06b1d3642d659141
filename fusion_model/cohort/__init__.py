"""The cohort directory contract: cohort.json + clinical.csv + images and masks."""

from fusion_model.cohort.load import Cohort, LesionRecord, load_cohort, mask_sources, read_clinical_csv
from fusion_model.cohort.spec import COHORT_FILE, TABLE_FILE, CohortSpec
from fusion_model.cohort.validate import Problem, ValidationReport, validate_cohort

__all__ = [
    "COHORT_FILE", "TABLE_FILE", "Cohort", "CohortSpec", "LesionRecord", "Problem", "ValidationReport",
    "load_cohort", "mask_sources", "read_clinical_csv", "validate_cohort",
]
