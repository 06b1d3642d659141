"""Training augmentation for CT lesion crops, applied to a whole batch on its device, and test-time flips.

A batch of crops (n, channels, z, y, x) holds the CT phases (HU windowed to [0, 1]) and, last, the lesion mask.
Spatial transforms move phases and mask together (nearest neighbour for the mask, so it stays 0/1); intensity
transforms touch only the phases. Per crop, each with its own random draw:

1. left-right and antero-posterior flips (each with odds 0.5);
2. a 90-degree turn in the axial plane (odds 0.5; a quarter, half or three-quarter turn);
3. a small affine (odds 0.3): a turn in the axial plane of up to 0.25 rad, scaling of up to 10 % along each axis
   and a shift of up to 3 voxels along each, resampled by one batched ``grid_sample`` (zeros outside the crop);
4. an intensity shift of up to ``hu_jitter`` HU (converted with the crop's HU window) and a scaling of up to 5 %
   (odds 0.5 each), the same for every phase of a crop.

``strength`` scales the ranges (odds are capped at 1); 0 turns augmentation off. The random draws come from a
NumPy generator (seeded per epoch by the trainer), so a batch's augmentation is the same on every device.
Done a batch at a time with tensor operations, augmentation costs a few milliseconds per batch on the CPU and runs
on the GPU beside the network when training there; crop-by-crop dictionary transforms cost as much CPU time as the
network's training step on the demo's crops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class BatchAugmentation:
    """Random augmentation of a batch of crops; ``strength`` 0 turns it off, 1 is the default amount."""

    strength: float = 1.0
    hu_window: tuple[float, float] = (-200.0, 300.0)
    hu_jitter: float = 10.0

    def draw(self, n: int, rng: np.random.Generator, square: bool = True) -> dict[str, np.ndarray]:
        """The random parameters of ``n`` crops (``square``: the axial plane is square, so quarter turns keep the
        crop's shape; otherwise only half turns are drawn)."""
        s, p = self.strength, 0.5 * min(1.0, self.strength)
        window = self.hu_window[1] - self.hu_window[0]
        turns = rng.integers(1, 4, n) if square else np.full(n, 2)
        return {
            "flip_x": rng.random(n) < p,
            "flip_y": rng.random(n) < p,
            "turns": np.where(rng.random(n) < p, turns, 0),
            "affine": rng.random(n) < min(1.0, 0.3 * s),
            "angle": rng.uniform(-0.25 * s, 0.25 * s, n),
            "scale": 1.0 + rng.uniform(-0.1 * s, 0.1 * s, (n, 3)),
            "shift_voxels": rng.uniform(-3 * s, 3 * s, (n, 3)),
            "offset": np.where(rng.random(n) < p, rng.uniform(-1, 1, n) * self.hu_jitter * s / window, 0.0),
            "factor": np.where(rng.random(n) < p, 1.0 + rng.uniform(-0.05 * s, 0.05 * s, n), 1.0),
        }

    def __call__(self, batch: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """An augmented copy of ``batch`` (n, channels, z, y, x), mask last; on the batch's device."""
        if self.strength <= 0:
            return batch
        n, channels = batch.shape[:2]
        params = self.draw(n, rng, square=batch.shape[-1] == batch.shape[-2])
        out = torch.empty_like(batch, memory_format=torch.contiguous_format)
        for i, (fx, fy, k) in enumerate(zip(params["flip_x"], params["flip_y"], params["turns"])):
            out[i] = _flip_turn(batch[i], bool(fx), bool(fy), int(k))
        chosen = np.flatnonzero(params["affine"])
        if chosen.size:
            theta = affine_theta(params["angle"][chosen], params["scale"][chosen], params["shift_voxels"][chosen],
                                 tuple(batch.shape[-3:]))
            image, mask = _sampled(out[chosen], torch.as_tensor(theta, dtype=batch.dtype, device=batch.device))
            index = torch.as_tensor(chosen, device=batch.device)
            out[index, -1:] = mask  # written in place: no concatenated copy
            if image is not None:
                out[index, :-1] = image
        jittered = np.flatnonzero((params["offset"] != 0) | (params["factor"] != 1))
        if channels > 1 and jittered.size:  # in place, on the crops drawn for it: the same values, no temporaries
            factor = torch.as_tensor(params["factor"][jittered], dtype=batch.dtype, device=batch.device)
            offset = torch.as_tensor(params["offset"][jittered], dtype=batch.dtype, device=batch.device)
            for row, k in enumerate(jittered.tolist()):
                out[k, :-1].add_(offset[row]).mul_(factor[row])
        return out


def _flip_turn(crop: torch.Tensor, flip_x: bool, flip_y: bool, turns: int) -> torch.Tensor:
    dims = tuple(d for d, on in ((-1, flip_x), (-2, flip_y)) if on)
    if dims:
        crop = crop.flip(dims)
    return torch.rot90(crop, turns, dims=(-2, -1)) if turns else crop


def affine_theta(angle: np.ndarray, scale: np.ndarray, shift_voxels: np.ndarray,
                 shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """(n, 3, 4) matrices for ``F.affine_grid`` (coordinates x, y, z in [-1, 1]): each maps an output voxel to
    where it samples the input, turned by ``angle`` in the axial (x, y) plane, scaled by ``scale`` (x, y, z) and
    shifted by ``shift_voxels`` (x, y, z), built in voxel units so that a turn stays a turn in a non-cubic crop."""
    n = len(angle)
    half = np.array(shape_zyx[::-1], dtype=np.float64) / 2.0  # voxels per unit of normalised x, y, z
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.zeros((n, 3, 3))
    rotation[:, 0, 0], rotation[:, 0, 1], rotation[:, 1, 0], rotation[:, 1, 1] = cos, -sin, sin, cos
    rotation[:, 2, 2] = 1.0
    voxel = rotation * scale[:, None, :]  # in voxel units: turn after scaling
    theta = np.zeros((n, 3, 4))
    theta[:, :, :3] = voxel * half[None, None, :] / half[None, :, None]
    theta[:, :, 3] = shift_voxels / half
    return theta


def affine_grid(theta: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``F.affine_grid(theta, shape, align_corners=False)`` for 3D or 2D batches, computed axis by axis (each output
    coordinate a sum of the theta-weighted voxel-centre coordinates, broadcast): the same grid to rounding, and
    three times faster on the CPU than the batched matrix product over every voxel."""
    n, spatial = shape[0], list(shape[2:])
    dims = len(spatial)
    centres = [(torch.arange(size, dtype=theta.dtype, device=theta.device) * 2 + 1) / size - 1 for size in spatial]
    axes = []  # x, y (, z): the last array axis first, each shaped to broadcast over (n, *spatial)
    for k, values in enumerate(reversed(centres)):
        view = [1] * (dims + 1)
        view[dims - k] = values.numel()
        axes.append(values.view(view))
    grid = torch.empty(n, *spatial, dims, dtype=theta.dtype, device=theta.device)
    for i in range(dims):
        weights = theta[:, i].reshape(n, dims + 1, *([1] * dims))
        total = weights[:, dims] + weights[:, dims - 1] * axes[dims - 1]
        for k in range(dims - 2, -1, -1):
            total = total + weights[:, k] * axes[k]
        grid[..., i] = total
    return grid


def _sampled(crops: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The phases (trilinear; None for a mask-only crop) and the mask (last channel, nearest neighbour) of
    ``crops`` resampled through ``theta``, zeros outside."""
    grid = affine_grid(theta, crops.shape)
    mask = F.grid_sample(crops[:, -1:], grid, mode="nearest", padding_mode="zeros", align_corners=False)
    if crops.shape[1] == 1:
        return None, mask
    return F.grid_sample(crops[:, :-1], grid, mode="bilinear", padding_mode="zeros", align_corners=False), mask


def resample(crops: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``crops`` (n, channels, z, y, x) resampled through ``theta``: phases trilinear, the mask (last channel)
    nearest neighbour, zeros outside."""
    image, mask = _sampled(crops, theta)
    return mask if image is None else torch.cat([image, mask], dim=1)


TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-1, -2))  # none, left-right, AP, both


def flip_views(batch: torch.Tensor, n_views: int) -> list[torch.Tensor]:
    """The batch and its axial-plane flips, for test-time augmentation."""
    return [batch.flip(dims) if dims else batch for dims in TTA_FLIPS[: max(1, n_views)]]
