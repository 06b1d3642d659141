"""Grad-CAM saliency of the image encoder (Selvaraju et al. 2017) on the crop the model scored.

The map answers "where in this crop did the network find evidence for malignancy": the
activations of a convolutional stage weighted by the gradient of the malignancy logit,
rectified, upsampled to the crop, averaged over the networks that score new lesions (the fold
ensemble, or the final network) and scaled to [0, 1]. It is computed on exactly the
preprocessed crop the model predicted from (same cache entry, same windowing, no flip), and
the logit of that same forward pass is returned so callers can check it.
For the 2.5D encoder the map of each slice stack fills its axial slice.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fusion_model.encoder.slices import aggregate, lesion_slice_indices, slice_stacks
from fusion_model.encoder.train import as_float32


def target_stage(network: nn.Module) -> nn.Module:
    """The last-but-one stage: fine enough to localise, deep enough to mean something."""
    stages = network.features
    return stages[max(1, len(stages) - 2)]


class GradCAM:
    """Grad-CAM saliency of the encoder's logit on one crop, upsampled to the crop."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.networks = encoder.scoring_networks()  # the fold ensemble (or the final network): their mean map
        self.kind = encoder.config.kind

    def _cam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-input maps at input resolution and the logits, averaged over the scoring networks."""
        maps, logits = zip(*(self._network_cam(network, x) for network in self.networks))
        return torch.stack(maps).mean(0), torch.stack(logits).mean(0)

    @staticmethod
    def _network_cam(network: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One network's maps and logits, from one forward and one backward pass."""
        captured: dict[str, torch.Tensor] = {}

        def hook(module, inputs, output):
            output.retain_grad()
            captured["activation"] = output

        handle = target_stage(network).register_forward_hook(hook)
        network.eval()
        try:
            with torch.enable_grad():
                x = x.detach().requires_grad_(False)
                logits, _ = network(x)
                logits.sum().backward()
        finally:
            handle.remove()
            network.zero_grad(set_to_none=True)
        activation, gradient = captured["activation"], captured["activation"].grad
        spatial = tuple(range(2, activation.ndim))
        weights = gradient.mean(dim=spatial, keepdim=True)
        cam = torch.relu((weights * activation).sum(dim=1, keepdim=True)).detach()
        mode = "trilinear" if cam.ndim == 5 else "bilinear"
        cam = nn.functional.interpolate(cam, size=x.shape[2:], mode=mode, align_corners=False)[:, 0]
        return cam, logits.detach()

    def __call__(self, crop: np.ndarray) -> tuple[np.ndarray, float]:
        """(saliency (z, y, x) in [0, 1], the logit of the same forward pass) for one crop (C, z, y, x)."""
        tensor = as_float32(np.asarray(crop)[None])[0]
        if self.kind == "3d":
            cam, logits = self._cam(tensor[None])
            volume, logit = cam[0], float(logits[0])
        else:
            indices = lesion_slice_indices(tensor)
            cam, slice_logits = self._cam(slice_stacks(tensor, indices))
            volume = torch.zeros(tensor.shape[1:])
            volume[torch.as_tensor(indices)] = cam
            cfg = self.encoder.config
            logit = float(aggregate(slice_logits, torch.zeros(len(indices), 1), cfg.aggregation, cfg.top_k,
                                    cfg.operating_value)[0])
        volume = volume.numpy()
        peak = float(volume.max())
        return (volume / peak if peak > 0 else volume).astype(np.float32), logit
