"""Probability calibration fitted on out-of-fold scores, stored as plain parameters."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

CALIBRATION_METHODS = ("sigmoid", "isotonic")


@dataclass(frozen=True)
class Calibrator:
    """Maps a head's margin (log-odds) to a calibrated probability.

    ``sigmoid`` (Platt): ``1 / (1 + exp(-(slope * margin + intercept)))``, fitted by unpenalised
    logistic regression; ``isotonic``: a non-decreasing step function, linear between its knots
    ``x`` -> ``y`` and constant beyond them.
    """

    method: str
    params: dict

    @classmethod
    def fit(cls, method: str, margins, labels) -> "Calibrator":
        """Fit on out-of-fold margins and their labels."""
        margins = np.asarray(margins, dtype=float)
        if method == "sigmoid":
            model = LogisticRegression(C=1e6, max_iter=1000).fit(margins[:, None], labels)
            return cls("sigmoid", {"slope": float(model.coef_[0, 0]), "intercept": float(model.intercept_[0])})
        if method == "isotonic":
            model = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(margins, labels)
            return cls("isotonic", {"x": model.X_thresholds_.tolist(), "y": model.y_thresholds_.tolist()})
        raise ValueError(f"unknown calibration method {method!r}; choose from {list(CALIBRATION_METHODS)}")

    def __call__(self, margins) -> np.ndarray:
        """Calibrated probabilities of the given margins."""
        margins = np.asarray(margins, dtype=float)
        if self.method == "sigmoid":
            return 1.0 / (1.0 + np.exp(-(self.params["slope"] * margins + self.params["intercept"])))
        return np.interp(margins, self.params["x"], self.params["y"])

    def to_dict(self) -> dict:
        """Plain parameters for the model manifest."""
        return {"method": self.method, **self.params}

    @classmethod
    def from_dict(cls, data: dict) -> "Calibrator":
        """The calibrator a manifest describes."""
        data = dict(data)
        method = data.pop("method", None)
        expected = {"sigmoid": {"slope", "intercept"}, "isotonic": {"x", "y"}}.get(method)
        if expected is None or set(data) != expected:
            raise ValueError(f"not a calibrator: method {method!r} with parameters {sorted(data)}")
        return cls(method, data)
