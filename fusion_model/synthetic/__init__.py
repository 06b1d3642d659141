"""Synthetic adrenal cohorts with published per-type distributions and an exact oracle."""
