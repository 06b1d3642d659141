"""The 2.5D variant: stacks of three adjacent axial slices through the lesion.

Each stack is a 2D input whose channels are, for every crop channel (phases and mask), the
slices k-1, k and k+1; only slices k that cut the lesion are used. Slice logits are
aggregated to one lesion score, as in the NHS adrenal study: the mean of the top-k slice
logits, or the fraction of slices above an operating value (returned as a logit).
"""

from __future__ import annotations

import numpy as np
import torch


def lesion_slice_indices(crop: torch.Tensor) -> np.ndarray:
    """Axial indices k (1 .. z-2) whose mask slice holds lesion voxels; the centre if none."""
    mask = crop[-1]
    present = torch.nonzero(mask.flatten(1).amax(dim=1) > 0.5).flatten().numpy()
    present = present[(present >= 1) & (present <= mask.shape[0] - 2)]
    return present if present.size else np.array([mask.shape[0] // 2])


def slice_stacks(crop: torch.Tensor, indices: np.ndarray) -> torch.Tensor:
    """(len(indices), channels * 3, y, x) stacks of slices k-1, k, k+1."""
    idx = torch.as_tensor(indices)
    stacks = torch.stack([crop[:, idx - 1], crop[:, idx], crop[:, idx + 1]], dim=2)  # (C, n, 3, y, x)
    c, n, three, y, x = stacks.shape
    return stacks.permute(1, 0, 2, 3, 4).reshape(n, c * three, y, x)


def aggregate(slice_logits: torch.Tensor, slice_embeddings: torch.Tensor, method: str, top_k: int,
              operating_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One lesion's logit and embedding from its slices."""
    k = max(1, min(top_k, slice_logits.numel()))
    top = torch.topk(slice_logits, k).indices
    embedding = slice_embeddings[top].mean(dim=0)
    if method == "topk_mean":
        return slice_logits[top].mean(), embedding
    if method == "fraction_above":
        fraction = (torch.sigmoid(slice_logits) > operating_value).float().mean()
        fraction = fraction.clamp(0.5 / slice_logits.numel(), 1 - 0.5 / slice_logits.numel())
        return torch.logit(fraction), embedding
    raise ValueError(f"unknown aggregation {method!r}; use 'topk_mean' or 'fraction_above'")
