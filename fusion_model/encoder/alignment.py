"""One embedding space for networks trained apart.

Each fold network (and the final one) learns its own embedding coordinates: the same lesion gets unrelated
vectors from two networks, so out-of-fold embeddings (each from its fold's network) and a new lesion's (from
another network) cannot be compared, and principal components over them mix spaces. Generalised Procrustes
analysis puts them in one space: every network embeds the same lesions (the training lesions); each is mapped
onto the consensus (the mean of the mapped embeddings) by a similarity transform (centring, an orthogonal
rotation and one scale), iterated until the consensus settles. A network's map is then applied to whatever it
embeds, so equal vectors mean equal things whichever network produced them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import orthogonal_procrustes


@dataclass(frozen=True)
class SimilarityMap:
    """``(z - source_mean) @ rotation * scale + target_mean``: one network's coordinates in the shared space."""

    source_mean: np.ndarray
    rotation: np.ndarray
    scale: float
    target_mean: np.ndarray

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        z = np.asarray(embeddings, dtype=np.float64)
        return ((z - self.source_mean) @ self.rotation * self.scale + self.target_mean).astype(np.float32)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Named arrays (for a weight file)."""
        return {f"{prefix}.source_mean": self.source_mean.astype(np.float32),
                f"{prefix}.rotation": self.rotation.astype(np.float32),
                f"{prefix}.scale": np.asarray([self.scale], dtype=np.float32),
                f"{prefix}.target_mean": self.target_mean.astype(np.float32)}

    @classmethod
    def from_arrays(cls, arrays: dict, prefix: str) -> SimilarityMap:
        """The map :meth:`to_arrays` wrote."""
        return cls(np.asarray(arrays[f"{prefix}.source_mean"], np.float64),
                   np.asarray(arrays[f"{prefix}.rotation"], np.float64),
                   float(np.asarray(arrays[f"{prefix}.scale"]).ravel()[0]),
                   np.asarray(arrays[f"{prefix}.target_mean"], np.float64))


def similarity_map(source: np.ndarray, target: np.ndarray) -> SimilarityMap:
    """The similarity transform taking ``source`` rows closest (least squares) to ``target`` rows."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    a, b = source - source_mean, target - target_mean
    norm = float((a ** 2).sum())
    if norm <= 1e-12:  # a network that embeds every lesion alike: nothing to rotate, all map to the mean
        return SimilarityMap(source_mean, np.eye(a.shape[1]), 0.0, target_mean)
    rotation, singular_sum = orthogonal_procrustes(a, b)
    return SimilarityMap(source_mean, rotation, float(singular_sum) / norm, target_mean)


def consensus_maps(embeddings: list[np.ndarray], iterations: int = 10, tolerance: float = 1e-6) -> list[SimilarityMap]:
    """Generalised Procrustes: one map per network (its embeddings of the same lesions, same row order) onto
    their consensus. The consensus starts as the first network's and keeps its overall scale."""
    if len(embeddings) == 1:
        z = np.asarray(embeddings[0], np.float64)
        return [SimilarityMap(z.mean(axis=0), np.eye(z.shape[1]), 1.0, z.mean(axis=0))]
    target = np.asarray(embeddings[0], np.float64)
    size = np.sqrt(((target - target.mean(axis=0)) ** 2).sum())
    maps: list[SimilarityMap] = []
    for _ in range(iterations):
        maps = [similarity_map(z, target) for z in embeddings]
        consensus = np.mean([m(z) for m, z in zip(maps, embeddings)], axis=0).astype(np.float64)
        centred = consensus - consensus.mean(axis=0)
        spread = np.sqrt((centred ** 2).sum())
        if spread > 1e-12:
            consensus = centred * (size / spread) + consensus.mean(axis=0)
        moved = np.sqrt(((consensus - target) ** 2).sum()) / max(size, 1e-12)
        target = consensus
        if moved < tolerance:
            break
    return [similarity_map(z, target) for z in embeddings]
