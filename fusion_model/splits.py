"""Patient-grouped, label-stratified splits: a patient is always in exactly one part."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from fusion_model.errors import UserInputError


def check_fold_counts(labels, groups, n_folds: int) -> None:
    """Refuse labels and patients that cannot make ``n_folds`` patient-grouped, label-stratified folds."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    n_patients = len(np.unique(groups))
    per_class = [len(np.unique(groups[labels == c])) for c in np.unique(labels)]
    if len(per_class) < 2:
        raise UserInputError("cross-validation needs both benign and malignant lesions; the labels hold one class")
    if n_folds < 2 or n_folds > min(per_class):
        raise UserInputError(
            f"{n_folds} folds requested but the smallest class has {min(per_class)} patients "
            f"({n_patients} patients in all); use between 2 and {min(per_class)} folds"
        )


def patient_grouped_folds(labels, groups, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """K folds (train_index, test_index), stratified by label, grouped by patient."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    check_fold_counts(labels, groups, n_folds)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [(np.sort(tr), np.sort(te)) for tr, te in splitter.split(np.zeros(len(labels)), labels, groups)]


def inner_validation_split(labels, groups, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) positions within the given arrays, by patient, about ``fraction`` held out."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    n_splits = max(2, int(round(1 / fraction)))
    per_class = min(len(np.unique(groups[labels == c])) for c in np.unique(labels))
    n_splits = min(n_splits, per_class)
    if n_splits < 2:
        raise UserInputError("too few patients of one class to hold out a validation set for early stopping")
    train, val = patient_grouped_folds(labels, groups, n_splits, seed)[0]
    return train, val
