"""Importers that turn public data sets into cohort directories."""
