"""A compact CNN for lesion crops, 3D or 2D (for the 2.5D variant), built for CPU speed.

The stem is a strided "patchify" convolution (kernel = stride = ``stem_stride``), so no
convolution runs at full resolution: a 64^3 crop becomes 16^3 at once, where a stock
ResNet-18 would spend seconds per volume in its 7^3 stem on two cores. Then ``depth``
stages, each a strided 3^d convolution (halving resolution, widening) and a residual block.
The last stage's features are averaged over the whole crop (size and context), and every
stage's features are also averaged over the lesion (the mask channel downsampled to that
stage's resolution), so that "what is inside the lesion" (attenuation, enhancement,
texture, at fine and coarse scales) is one linear step away even for the small cohorts of
clinical studies. With ``input_pooling`` the input itself is pooled over the lesion too: the
mean and SD of every input channel inside the mask and the cube root of the mask's share of
the crop (proportional to the lesion's diameter), standardised (batch norm), so mean
attenuation, enhancement, heterogeneity and size reach the embedding through one linear layer
however the convolutions train. A linear layer maps the pooled features to the embedding, a second one to
the malignancy logit. Layers come from MONAI's factories, so one class serves
``spatial_dims`` 2 and 3.
"""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Act, Conv, Norm
from torch import nn


def _conv_norm_act(dims: int, cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        Conv[Conv.CONV, dims](cin, cout, kernel_size=kernel, stride=stride, padding=kernel // 2 if stride == 1
                              or kernel > stride else 0, bias=False),
        Norm[Norm.BATCH, dims](cout),
        Act[Act.RELU](inplace=True),
    )


class ResidualBlock(nn.Module):
    """Two convolutions with a skip connection (2D or 3D)."""

    def __init__(self, dims: int, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            _conv_norm_act(dims, channels, channels, 3, 1),
            Conv[Conv.CONV, dims](channels, channels, kernel_size=3, padding=1, bias=False),
            Norm[Norm.BATCH, dims](channels),
        )
        self.act = Act[Act.RELU](inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + F(x), then the activation."""
        return self.act(x + self.body(x))


class LesionEncoder(nn.Module):
    """``forward(x)`` returns ``(logit (batch,), embedding (batch, embedding_size))``."""

    def __init__(self, spatial_dims: int, in_channels: int, width: int = 16, depth: int = 3,
                 embedding_size: int = 64, dropout: float = 0.2, stem_stride: int = 4,
                 mask_channel: int | None = -1, input_pooling: bool = False):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        stages: list[nn.Module] = [_conv_norm_act(spatial_dims, in_channels, width, stem_stride, stem_stride)]
        widths = [width]
        for _ in range(depth):
            stages.append(nn.Sequential(
                _conv_norm_act(spatial_dims, widths[-1], widths[-1] * 2, 3, 2),
                ResidualBlock(spatial_dims, widths[-1] * 2),
            ))
            widths.append(widths[-1] * 2)
        self.features = nn.ModuleList(stages)
        self.mask_channel = mask_channel
        self.input_pooling = input_pooling and mask_channel is not None
        pooled = widths[-1] + (sum(widths) if mask_channel is not None else 0)
        if self.input_pooling:
            pooled += 2 * in_channels + 1
            # the statistics vary by a few hundredths between lesions (30 HU in a 500 HU window): standardised,
            # a weight of order one turns them into logit, which the optimiser reaches in a few hundred steps
            self.input_norm = nn.BatchNorm1d(2 * in_channels + 1)
        self.embed = nn.Sequential(nn.Linear(pooled, embedding_size), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(embedding_size, 1))

    def _mask_mean(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        spatial = tuple(range(2, features.ndim))
        pool = nn.functional.adaptive_avg_pool3d if features.ndim == 5 else nn.functional.adaptive_avg_pool2d
        weights = pool(mask, features.shape[2:])
        return (features * weights).sum(dim=spatial) / weights.sum(dim=spatial).clamp_min(1e-3)

    @staticmethod
    def input_statistics(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per input channel the mean and SD inside the mask, and the cube root of the mask's share of the
        crop."""
        spatial = tuple(range(2, x.ndim))
        weight = mask.sum(dim=spatial).clamp_min(1e-3)
        mean = (x * mask).sum(dim=spatial) / weight
        centred = (x - mean.reshape(*mean.shape, *(1,) * len(spatial))) * mask
        sd = ((centred ** 2).sum(dim=spatial) / weight).clamp_min(1e-8).sqrt()
        share = mask.mean(dim=spatial).clamp_min(0).pow(1 / 3)
        return torch.cat([mean, sd, share], dim=1)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Global mean of the last stage, the lesion mean of every stage (and of the input's statistics)."""
        mask = None if self.mask_channel is None else x[:, self.mask_channel:][:, :1]
        pooled = [self.input_norm(self.input_statistics(x, mask))] if self.input_pooling else []
        for stage in self.features:
            x = stage(x)
            if mask is not None:
                pooled.append(self._mask_mean(x, mask))
        pooled.insert(0, x.mean(dim=tuple(range(2, x.ndim))))
        return torch.cat(pooled, dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Malignancy logit (n,) and embedding (n, embedding_size) of a batch of crops."""
        embedding = self.embed(self.pool(x))
        return self.head(embedding).squeeze(-1), embedding

    def first_layer(self) -> nn.Module:
        """The stem convolution (Grad-CAM hooks the feature blocks after it)."""
        return self.features[0][0]


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates x 2 of one forward pass for one input (convolutions and linears)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            kernel = int(torch.tensor(module.kernel_size).prod())
            total += 2 * output.numel() * kernel * module.in_channels // module.groups
        elif isinstance(module, nn.Linear):
            total += 2 * output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d,
                                                                                         nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total
