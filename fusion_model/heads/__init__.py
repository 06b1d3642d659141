"""Heads on top of the encoder: XGBoost tabular and fusion heads, late fusion, calibration,
operating thresholds and the guideline rules."""
