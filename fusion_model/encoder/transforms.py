"""Training augmentation for CT lesion crops (MONAI dictionary transforms) and test-time flips.

A crop (channels, z, y, x) is split into ``image`` (the CT phases, HU windowed to [0, 1]) and
``mask``; spatial transforms move both together (nearest neighbour for the mask), intensity
transforms touch only ``image``. Axial-plane operations act on (y, x): left-right and
antero-posterior flips, 90-degree rotations, and a small affine (rotation, scaling, shift).
Intensity jitter is given in HU and converted with the crop's HU window.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import (
    Compose, RandAffined, RandFlipd, RandRotate90d, RandScaleIntensityd, RandShiftIntensityd,
)

KEYS = ("image", "mask")


def training_transforms(strength: float, hu_window: tuple[float, float], hu_jitter: float = 10.0) -> Compose:
    """Random augmentation; ``strength`` 0 turns it off, 1 is the default amount."""
    window = hu_window[1] - hu_window[0]
    transforms = [
        RandFlipd(keys=KEYS, prob=0.5 * min(1.0, strength), spatial_axis=2, allow_missing_keys=True),
        RandFlipd(keys=KEYS, prob=0.5 * min(1.0, strength), spatial_axis=1, allow_missing_keys=True),
        RandRotate90d(keys=KEYS, prob=0.5 * min(1.0, strength), max_k=3, spatial_axes=(1, 2),
                      allow_missing_keys=True),
        RandAffined(
            keys=KEYS, prob=min(1.0, 0.3 * strength), rotate_range=(0.0, 0.0, 0.25 * strength),
            scale_range=(0.1 * strength,) * 3, translate_range=(3 * strength,) * 3,
            mode=("bilinear", "nearest"), padding_mode="zeros", allow_missing_keys=True, lazy=False,
        ),
        RandShiftIntensityd(keys="image", offsets=hu_jitter * strength / window, prob=0.5 * min(1.0, strength),
                            allow_missing_keys=True),
        RandScaleIntensityd(keys="image", factors=0.05 * strength, prob=0.5 * min(1.0, strength),
                            allow_missing_keys=True),
    ]
    return Compose(transforms)


def split_channels(crop: np.ndarray | torch.Tensor) -> dict:
    """{'image': phases (may be absent), 'mask': last channel} as float32 tensors."""
    tensor = torch.as_tensor(np.asarray(crop, dtype=np.float32))
    out = {"mask": tensor[-1:]}
    if tensor.shape[0] > 1:
        out["image"] = tensor[:-1]
    return out


def join_channels(sample: dict) -> torch.Tensor:
    """A transformed sample (image and mask) back into one channels-first tensor."""
    parts = [sample["image"]] if "image" in sample else []
    parts.append(sample["mask"])
    return torch.cat([torch.as_tensor(p) for p in parts], dim=0).float()


def augment(crop: np.ndarray, transform: Compose) -> torch.Tensor:
    """One randomly augmented copy of a crop."""
    return join_channels(transform(split_channels(crop)))


TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-1, -2))  # none, left-right, AP, both


def flip_views(batch: torch.Tensor, n_views: int) -> list[torch.Tensor]:
    """The batch and its axial-plane flips, for test-time augmentation."""
    return [batch.flip(dims) if dims else batch for dims in TTA_FLIPS[: max(1, n_views)]]
