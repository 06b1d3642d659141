"""Feature matrices for the heads, by group: imaging, radiological, clinical, laboratory.

Pure functions of the validated table, the image features and the encoder outputs. Missing
values stay NaN (XGBoost handles them natively); yes/no becomes 1/0, sex becomes
``sex_female`` (1 F, 0 M).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fusion_model.config import FeatureConfig
from fusion_model.features.radiological import fill_from_features


def encode_column(table: pd.DataFrame, column: str) -> tuple[str, pd.Series]:
    """A table column as numbers for the heads (sex -> sex_female, yes/no -> 1/0), with its new name."""
    if column not in table:
        return column, pd.Series(np.nan, index=table.index, dtype=float)
    values = table[column]
    if column == "sex":
        return "sex_female", values.map({"F": 1.0, "M": 0.0}).astype(float)
    if str(values.dtype) == "boolean":
        return column, values.astype("Float64").astype(float)
    return column, pd.to_numeric(values, errors="coerce").astype(float)


def fill_radiological(table: pd.DataFrame, image_features: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """size_mm / unenhanced_hu from the image where the table lacks them; notes where they disagree."""
    rows, notes = [], []
    for lesion_id, row in table.iterrows():
        feats = image_features.loc[lesion_id].to_dict() if lesion_id in image_features.index else {}
        filled, lesion_notes = fill_from_features(row.to_dict(), feats)
        rows.append(filled)
        notes += [f"lesion {lesion_id}: {n}" for n in lesion_notes]
    return pd.DataFrame(rows, index=table.index), notes


def tabular_features(table: pd.DataFrame, image_features: pd.DataFrame, config: FeatureConfig,
                     extra_features: Sequence[str] = ()) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """The tabular feature frame and its column names per group."""
    columns: dict[str, pd.Series] = {}
    groups: dict[str, list[str]] = {"radiological": [], "clinical": [], "laboratory": []}
    for group, names in (("radiological", config.radiological), ("clinical", config.clinical),
                         ("laboratory", config.laboratory)):
        for name in names:
            encoded, values = encode_column(table, name)
            if values.notna().any():
                columns[encoded] = values
                groups[group].append(encoded)
    if config.extra_as_radiological:
        for name in extra_features:
            encoded, values = encode_column(table, name)
            columns[encoded] = values
            groups["radiological"].append(encoded)
    if config.image_radiological:
        for name in image_features.columns:
            if name not in columns:
                columns[name] = image_features[name].reindex(table.index).astype(float)
                groups["radiological"].append(name)
    return pd.DataFrame(columns, index=table.index), groups


@dataclass
class EmbeddingPCA:
    """The principal axes of the encoder's out-of-fold embeddings: the heads see the first few components."""

    mean: list[float]
    components: list[list[float]]  # (components, embedding size), each a unit axis

    @classmethod
    def fit(cls, embeddings: np.ndarray, n_components: int) -> EmbeddingPCA | None:
        """The first ``n_components`` axes (None for none)."""
        if n_components == 0:
            return None
        embeddings = np.asarray(embeddings, dtype=float)
        mean = embeddings.mean(axis=0)
        _, _, vt = np.linalg.svd(embeddings - mean, full_matrices=False)
        k = min(n_components, vt.shape[0])
        return cls(mean.tolist(), vt[:k].tolist())

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        """Each embedding's coordinates on the axes (lesions, components)."""
        return (np.asarray(embeddings, dtype=float) - np.asarray(self.mean)) @ np.asarray(self.components).T

    def to_manifest(self) -> dict:
        """Plain data for the model manifest."""
        return {"mean": self.mean, "components": self.components}

    @classmethod
    def from_manifest(cls, entry: dict | None) -> EmbeddingPCA | None:
        """The axes a manifest entry holds (None for none)."""
        return None if entry is None else cls(list(entry["mean"]), [list(c) for c in entry["components"]])


def imaging_features(logits: np.ndarray, embeddings: np.ndarray, pca: EmbeddingPCA | None,
                     index: pd.Index) -> pd.DataFrame:
    """The encoder's logit and the first principal components of its embedding."""
    frame = {"image_logit": np.asarray(logits, dtype=float)}
    if pca is not None and pca.components:
        comps = pca.project(embeddings)
        for k in range(comps.shape[1]):
            frame[f"image_pc{k + 1}"] = comps[:, k]
    return pd.DataFrame(frame, index=index)


def fit_pca(embeddings: np.ndarray, n_components: int) -> EmbeddingPCA | None:
    """Principal axes of the embeddings (None for ``n_components`` 0)."""
    return EmbeddingPCA.fit(embeddings, n_components)


def filled_feature_table(table: pd.DataFrame, features: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per lesion with computed features (``features``, indexed by lesion_id): its size_mm and
    unenhanced_hu (the table's where given, else measured) and every radiological feature; with a note for each
    value filled or disagreeing."""
    rows, notes = [], []
    by_lesion = table.set_index("lesion_id")
    for lesion_id, values in features.iterrows():
        filled, lesion_notes = fill_from_features(by_lesion.loc[lesion_id].to_dict(), values.to_dict())
        notes += [f"lesion {lesion_id}: {n}" for n in lesion_notes]
        rows.append({"lesion_id": lesion_id, "size_mm": filled.get("size_mm"),
                     "unenhanced_hu": filled.get("unenhanced_hu"), **values.to_dict()})
    return pd.DataFrame(rows), notes
