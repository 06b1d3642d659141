"""Evaluation: statistics (stats), every figure of a report (metrics), plots, and the
`fusion-model evaluate` runner (run)."""
