"""The segmentation network (MONAI's UNet or DynUNet)."""

from __future__ import annotations

import numpy as np
import torch
from monai.networks.nets import DynUNet, UNet

from fusion_model.config import SegmentConfig


def build_segmenter(config: SegmentConfig, in_channels: int) -> torch.nn.Module:
    """A 3D U-Net with two output classes (background, lesion)."""
    levels = len(config.channels)
    if config.architecture == "dynunet":
        return DynUNet(spatial_dims=3, in_channels=in_channels, out_channels=2, kernel_size=[3] * levels,
                       strides=[1] + [2] * (levels - 1), upsample_kernel_size=[2] * (levels - 1),
                       filters=list(config.channels), dropout=config.dropout or None, res_block=True)
    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=2, channels=tuple(config.channels),
                strides=(2,) * (levels - 1), num_res_units=config.residual_units, dropout=config.dropout)


FLIP_VIEWS = ((), (4,), (3,), (2,))  # none, then x, y, z mirrored (tensor dims: batch, channel, z, y, x)


def flip_averaged_probability(network: torch.nn.Module, predictor, inputs: torch.Tensor, views: int,
                              device: torch.device) -> np.ndarray:
    """Foreground probability of ``predictor(inputs)``, averaged over the first ``views`` mirrorings."""
    network.eval()
    total = None
    for dims in FLIP_VIEWS[:views]:
        x = torch.flip(inputs, dims) if dims else inputs
        with torch.autocast(device_type="cuda", enabled=device.type == "cuda"):
            probability = torch.softmax(predictor(x).float(), dim=1)[:, 1:2]
        probability = torch.flip(probability, dims) if dims else probability
        total = probability if total is None else total + probability
    return (total / max(1, min(views, len(FLIP_VIEWS))))[0, 0].cpu().numpy()
