"""The segmentation network (MONAI's UNet or DynUNet)."""

from __future__ import annotations

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
