"""SHAP contributions (TreeExplainer) of a variant's head, in log-odds, exactly additive:
``base + contributions.sum(axis=1) == the variant's margin`` for every lesion.

- fusion head: TreeSHAP of the XGBoost fusion head over imaging + tabular features;
- late fusion (margin = w * image logit + (1 - w) * tabular margin): the image logit
  contributes ``w * image_logit`` and each tabular feature ``(1 - w)`` times its TreeSHAP value;
- imaging only: the image logit is the whole margin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import shap

from fusion_model.heads.calibration import apply_calibrator
from fusion_model.model import FusionModel

GROUP_LABELS = {"imaging": "imaging (CNN)", "radiological": "radiological", "clinical": "clinical history",
                "laboratory": "laboratory"}


@dataclass
class Contributions:
    variant: str
    values: pd.DataFrame          # feature values the head saw (NaN = missing); lesions x features
    shap: pd.DataFrame            # contributions in log-odds; same shape
    base: float                   # the head's expected margin
    margin: np.ndarray            # the variant's margin per lesion
    probability: np.ndarray       # calibrated probability per lesion
    groups: dict[str, str]        # feature -> group (imaging, radiological, clinical, laboratory)

    def group_contributions(self) -> pd.DataFrame:
        """Summed contributions per feature group; lesions x groups."""
        frame = self.shap.T.groupby(pd.Series(self.groups)).sum().T
        return frame.reindex(columns=[g for g in GROUP_LABELS if g in frame.columns])


def feature_groups(model: FusionModel, names: list[str]) -> dict[str, str]:
    lookup = {n: g for g, members in model.tabular_groups_.items() for n in members}
    return {n: "imaging" if n.startswith("image_") else lookup.get(n, "radiological") for n in names}


class VariantExplainer:
    """Built once per model and variant; explains any lesions whose feature frames are given."""

    def __init__(self, model: FusionModel, variant: str):
        if variant not in model.variants_:
            raise ValueError(f"variant {variant!r} is not in the model; it has {list(model.variants_)}")
        self.model = model
        self.variant = variant
        self.info = model.variants_[variant]
        self.head_name = None if variant == "imaging" else (
            f"{variant}_fusion" if self.info["method"] == "fusion_head" else f"{variant}_tabular")
        self.tree = shap.TreeExplainer(model.heads_[self.head_name].booster_) if self.head_name else None

    def __call__(self, X_img: pd.DataFrame, X_tab: pd.DataFrame) -> Contributions:
        _, X = self.model.head_input(self.variant, X_img, X_tab)
        image_logit = X_img["image_logit"].to_numpy(dtype=float)
        if self.tree is None:
            values, contributions, base = X, X.astype(float).copy(), 0.0
        else:
            tree_values = np.asarray(self.tree.shap_values(X.to_numpy(dtype=float)), dtype=float).reshape(X.shape)
            base = float(np.ravel(self.tree.expected_value)[0])
            contributions = pd.DataFrame(tree_values, index=X.index, columns=X.columns)
            values = X
            if self.info["method"] == "late_fusion":
                w = float(self.info["late_fusion_weight"])
                contributions = (1 - w) * contributions
                contributions.insert(0, "image_logit", w * image_logit)
                values = X.copy()
                values.insert(0, "image_logit", image_logit)
                base = (1 - w) * base
        margin = base + contributions.to_numpy().sum(axis=1)
        probability = apply_calibrator(self.info["calibrator"], margin)
        return Contributions(self.variant, values.astype(float), contributions, base, margin, probability,
                             feature_groups(self.model, list(values.columns)))
