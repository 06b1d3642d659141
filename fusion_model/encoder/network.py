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
however the convolutions train. With ``mask_input="signed_distance"`` the mask's input channels are replaced by
a signed depth map computed inside the network (:func:`signed_depth`: the mask's erosions minus its dilations,
by repeated 3^d max pooling, in [-1, 1]): every voxel then carries how deep inside or how far outside the outline
it lies, i.e. the local thickness of shape data, and the same map serves training, test-time flips and
Grad-CAM. A linear layer maps the pooled features to the embedding, a second one to
the malignancy logit. Layers come from MONAI's factories, so one class serves
``spatial_dims`` 2 and 3.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.networks.layers.factories import Act, Conv, Norm
from torch import nn

STATISTICS_BLOCK = 8192  # voxels per block of the input statistics' sums


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


def _max_3(x: torch.Tensor) -> torch.Tensor:
    """Maximum over each voxel's 3^d neighbourhood (the crop's edge repeated outward), one axis at a time:
    several times faster on the CPU than ``max_pool3d``."""
    for axis in range(2, x.ndim):
        n = x.shape[axis]
        padded = torch.cat([x.narrow(axis, 0, 1), x, x.narrow(axis, n - 1, 1)], dim=axis)
        x = torch.maximum(torch.maximum(padded.narrow(axis, 0, n), padded.narrow(axis, 1, n)),
                          padded.narrow(axis, 2, n))
    return x


def signed_depth(mask: torch.Tensor, steps: int = 8) -> torch.Tensor:
    """Signed chessboard depth of a (soft) mask, per channel, in [-1, 1]: +d/steps for a voxel d voxels deep
    (1 on the outline), -d/steps for one d voxels outside, saturating at ``steps`` (the mean over ``steps``
    erosions of the mask minus the mean over ``steps`` dilations of its complement). Works for (n, c, z, y, x)
    and (n, c, y, x)."""
    inside, outside = mask, mask
    depth = torch.zeros_like(mask)
    for step in range(steps):
        if step:
            inside = -_max_3(-inside)
            outside = _max_3(outside)
        depth = depth + inside - (1 - outside)
    return depth / steps


class LesionEncoder(nn.Module):
    """``forward(x)`` returns ``(logit (batch,), embedding (batch, embedding_size))``."""

    def __init__(self, spatial_dims: int, in_channels: int, width: int = 16, depth: int = 3,
                 embedding_size: int = 64, dropout: float = 0.2, stem_stride: int = 4,
                 mask_channel: int | None = -1, input_pooling: bool = False, mask_input: str = "binary",
                 mask_input_channels: int = 1, input_skip: bool = False):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if mask_input not in ("binary", "signed_distance"):
            raise ValueError(f"mask_input must be 'binary' or 'signed_distance', got {mask_input!r}")
        self.spatial_dims = spatial_dims
        self.mask_input = mask_input
        self.mask_input_channels = mask_input_channels  # the trailing input channels that hold the mask
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
        self.n_input_statistics = 2 * in_channels + 1 if self.input_pooling else 0  # per channel mean, SD; share
        pooled = widths[-1] + (sum(widths) if mask_channel is not None else 0) + self.n_input_statistics
        if self.input_pooling:
            # the statistics vary by a few hundredths between lesions (30 HU in a 500 HU window): standardised,
            # a weight of order one turns them into logit, which the optimiser reaches in a few hundred steps
            self.input_norm = nn.BatchNorm1d(self.n_input_statistics)
        # normalised, then GELU: beside the input skip, which carries the statistics' signal from the first step,
        # a Linear + ReLU embedding died at learning rate 0.01 (every unit negative for every lesion: the logit
        # was the skip alone, no gradient reached the convolutions or Grad-CAM). Normalised across its
        # units, each lesion's embedding always has units on the positive side, so gradient always flows.
        self.embed = nn.Sequential(nn.Linear(pooled, embedding_size), nn.LayerNorm(embedding_size), nn.GELU())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(embedding_size, 1))
        self.input_skip = None
        if input_skip and self.input_pooling:
            # a logistic regression on the input statistics, standardised by fixed training-set moments (set,
            # with its weights, by fit_input_skip before training), added to the logit
            self.input_skip = nn.Linear(self.n_input_statistics, 1)
            nn.init.zeros_(self.input_skip.weight)
            nn.init.zeros_(self.input_skip.bias)
            self.register_buffer("statistics_mean", torch.zeros(self.n_input_statistics))
            self.register_buffer("statistics_scale", torch.ones(self.n_input_statistics))

    @staticmethod
    def _mask_mean(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        spatial = tuple(range(2, features.ndim))
        return (features * weights).sum(dim=spatial) / weights.sum(dim=spatial).clamp_min(1e-3)

    @staticmethod
    def _pooled_mask(mask: torch.Tensor, previous: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """The (soft) mask averaged onto a stage's grid (adaptive average pooling of ``mask``). Where the input's
        grid and ``previous`` (the mask on the previous stage's grid) both divide into this one, the same averages
        come from ``previous`` by plain average pooling: one full-size pass in all, several times faster on the
        CPU."""
        dims = mask.ndim - 2

        def divides(grid) -> bool:
            return all(n % m == 0 for n, m in zip(grid, shape))

        if divides(previous.shape[2:]) and all(n % p == 0 for n, p in zip(mask.shape[2:], previous.shape[2:])):
            kernel = tuple(n // m for n, m in zip(previous.shape[2:], shape))
            if all(k == 1 for k in kernel):
                return previous
            pool = nn.functional.avg_pool3d if dims == 3 else nn.functional.avg_pool2d
            return pool(previous, kernel)
        pool = nn.functional.adaptive_avg_pool3d if dims == 3 else nn.functional.adaptive_avg_pool2d
        return pool(mask, shape)

    @staticmethod
    def input_statistics(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per input channel the mean and SD inside the mask (weighted by it), and the cube root of the mask's
        share of the crop. The sums run over blocks of voxels small enough to stay in the CPU's cache (full-size
        temporaries of a batch of 64^3 crops made this the encoder's costliest step)."""
        n, channels = x.shape[:2]
        flat = x.reshape(n, channels, -1)
        weights = mask.reshape(n, 1, -1).to(flat.dtype)
        total = flat.new_zeros(n, channels)
        squares = flat.new_zeros(n, channels)
        for start in range(0, flat.shape[-1], STATISTICS_BLOCK):
            block = flat[..., start:start + STATISTICS_BLOCK]
            weighted = block * weights[..., start:start + STATISTICS_BLOCK]
            total += weighted.sum(dim=-1)
            squares += (weighted * block).sum(dim=-1)
        mask_sum = weights.sum(dim=(1, 2))
        weight = mask_sum.clamp_min(1e-3)[:, None]
        mean = total / weight
        sd = (squares / weight - mean * mean).clamp_min(1e-8).sqrt()
        share = (mask_sum / flat.shape[-1]).clamp_min(0).pow(1 / 3)[:, None]
        return torch.cat([mean, sd, share], dim=1)

    def network_input(self, x: torch.Tensor) -> torch.Tensor:
        """The crop as the convolutions see it (the mask channels as a signed depth map, if so configured)."""
        if self.mask_input == "signed_distance":
            first = x.shape[1] - self.mask_input_channels
            x = torch.cat([x[:, :first], signed_depth(x[:, first:])], dim=1)
        return x

    def lesion_statistics(self, x: torch.Tensor) -> torch.Tensor:
        """The input statistics of a batch of crops (not standardised); needs input pooling."""
        return self.input_statistics(self.network_input(x), x[:, self.mask_channel:][:, :1])

    def pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Global mean of the last stage, the lesion mean of every stage (and the standardised input statistics);
        and the raw input statistics (None without input pooling)."""
        mask = None if self.mask_channel is None else x[:, self.mask_channel:][:, :1]
        x = self.network_input(x)
        statistics = self.input_statistics(x, mask) if self.input_pooling else None
        pooled = [self.input_norm(statistics)] if self.input_pooling else []
        weights = mask
        for stage in self.features:
            x = stage(x)
            if mask is not None:
                weights = self._pooled_mask(mask, weights, x.shape[2:])
                pooled.append(self._mask_mean(x, weights))
        pooled.insert(0, x.mean(dim=tuple(range(2, x.ndim))))
        return torch.cat(pooled, dim=1), statistics

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Malignancy logit (n,) and embedding (n, embedding_size) of a batch of crops."""
        pooled, statistics = self.pool(x)
        embedding = self.embed(pooled)
        logit = self.head(embedding).squeeze(-1)
        if self.input_skip is not None:
            standardised = (statistics - self.statistics_mean) / self.statistics_scale
            logit = logit + self.input_skip(standardised).squeeze(-1)
        return logit, embedding

    @torch.no_grad()
    def fit_input_skip(self, statistics: torch.Tensor, labels: np.ndarray, balanced: bool = True,
                       inverse_regularisation: float = 1.0) -> None:
        """Start the input skip as an L2 logistic regression (scikit-learn) of the labels on the standardised
        input statistics of the training lesions: the network then learns what the convolutions add to it."""
        from sklearn.linear_model import LogisticRegression

        statistics = statistics.detach().double().cpu()
        mean, scale = statistics.mean(0), statistics.std(0)
        scale = torch.where(scale > 1e-6, scale, torch.ones_like(scale))  # a constant statistic (the mask's SD)
        standardised = ((statistics - mean) / scale).numpy()
        regression = LogisticRegression(C=inverse_regularisation, class_weight="balanced" if balanced else None,
                                        max_iter=5000).fit(standardised, np.asarray(labels).astype(int))
        device = self.input_skip.weight.device
        self.statistics_mean.copy_(mean.float().to(device))
        self.statistics_scale.copy_(scale.float().to(device))
        self.input_skip.weight.copy_(torch.as_tensor(regression.coef_, dtype=torch.float32, device=device))
        self.input_skip.bias.copy_(torch.as_tensor(regression.intercept_, dtype=torch.float32, device=device))

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
