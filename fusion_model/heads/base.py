"""What a head learner is: the protocol every registered learner follows (fusion_model.registry.LEARNERS).

A binary head scores malignancy: it is built from the experiment's configuration, fitted on a feature matrix
(columns as ``feature_names``, NaN = missing) and 0/1 labels, gives margins in log-odds, explains them with
exact SHAP values, and writes and reads itself as a plain data file (never a pickle). The type mixture's
multi-class head (``outputs = "classes"``) follows the same file contract and gives a margin per class.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from fusion_model.config import ExperimentConfig


@runtime_checkable
class Head(Protocol):
    """A binary head learner; register its class with ``LEARNERS.register(MyHead)``."""

    learner: str                             # its name in fusion.head and in the manifest
    outputs: Literal["binary", "classes"]    # binary heads are the ones fusion.head may name
    feature_names: list[str]

    @classmethod
    def build(cls, feature_names: Sequence[str], config: ExperimentConfig, threads: int = 2) -> Head:
        """An unfitted head over these features, as the experiment configures it."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> Head:
        """Fit on a feature matrix (NaN = missing) and 0/1 labels; returns the head."""

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Margins (log-odds), one per row."""

    def shap_values(self, X: pd.DataFrame) -> tuple[pd.DataFrame, float]:
        """Exact SHAP values (log-odds) per lesion and feature, and the base margin they add to."""

    def save(self, path: Path) -> None:
        """Write the fitted head as a data file."""

    @classmethod
    def load(cls, path: Path, feature_names: Sequence[str], config: ExperimentConfig) -> Head:
        """Read a saved head; refuses (UserInputError) a damaged file or one over other features."""

