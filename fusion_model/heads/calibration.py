"""Probability calibration fitted on out-of-fold scores, stored as plain parameters."""

from __future__ import annotations

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression


def fit_calibrator(method: str, margins: np.ndarray, labels: np.ndarray) -> dict:
    """Parameters mapping a head's margin to a calibrated probability."""
    margins = np.asarray(margins, dtype=float)
    if method == "sigmoid":
        model = LogisticRegression(C=1e6, max_iter=1000).fit(margins[:, None], labels)
        return {"method": "sigmoid", "slope": float(model.coef_[0, 0]), "intercept": float(model.intercept_[0])}
    if method == "isotonic":
        model = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(margins, labels)
        return {"method": "isotonic", "x": model.X_thresholds_.tolist(), "y": model.y_thresholds_.tolist()}
    raise ValueError(f"unknown calibration method {method!r}")


def apply_calibrator(params: dict, margins: np.ndarray) -> np.ndarray:
    margins = np.asarray(margins, dtype=float)
    if params["method"] == "sigmoid":
        return 1.0 / (1.0 + np.exp(-(params["slope"] * margins + params["intercept"])))
    return np.interp(margins, params["x"], params["y"])
