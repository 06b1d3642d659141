"""Encoder pre-training on lesions the synthetic generator draws (``fusion-model pretrain-encoder``).

The lesions are drawn into crops of the experiment's geometry and channels by
:mod:`fusion_model.synthetic.pretraining`. Here the experiment's own network (with its augmentation) learns to
read back, from its embedding, what the crops' channels can show: regression targets standardised on the
training draws (mean squared error), binary findings and the type by cross-entropy, malignancy through the
network's own logit; the losses are summed. A held-out share of the draws gives the figures (R2 per target, AUC
per finding, type accuracy beside the majority share) that the weight file records
(:mod:`fusion_model.encoder.weights`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import r2_score, roc_auc_score
from torch import nn

from fusion_model.config import ExperimentConfig, PretrainConfig
from fusion_model.devices import resolve_device
from fusion_model.encoder.train import as_float32, build_network, predict
from fusion_model.encoder.transforms import BatchAugmentation
from fusion_model.encoder.weights import FORMAT
from fusion_model.errors import UserInputError
from fusion_model.imaging.preprocess import crop_channels
from fusion_model.synthetic.pretraining import (
    DrawnSet,
    DrawSettings,
    binary_targets,
    draw_set,
    regression_targets,
    type_names,
)
from fusion_model.training import TrainingLoop


def _memory_bytes() -> int:
    """This machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass
class PretrainResult:
    """The pre-trained network, its held-out figures, and what the weight file records."""

    model: nn.Module
    figures: dict
    metadata: dict


class _PretextHeads(nn.Module):
    """Linear read-outs of the embedding: standardised regression targets, binary findings, type."""

    def __init__(self, embedding_size: int, regression: int, binary: int, types: int):
        super().__init__()
        self.sizes = (regression, binary, types)
        self.linear = nn.Linear(embedding_size, sum(self.sizes))

    def forward(self, embedding: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.split(self.linear(embedding), self.sizes, dim=1)


def _losses(outputs, logit, batch, mean, scale) -> torch.Tensor:
    regression, binary, types = outputs
    reg_target, bin_target, type_target, malignant = batch
    total = F.cross_entropy(types, type_target) + F.binary_cross_entropy_with_logits(logit, malignant)
    present = ~torch.isnan(reg_target[:, 0])  # normal glands have no lesion values
    if present.any() and regression.shape[1]:
        total = total + F.mse_loss(regression[present], ((reg_target - mean) / scale)[present])
    if present.any() and binary.shape[1]:
        total = total + F.binary_cross_entropy_with_logits(binary[present], bin_target[present])
    return total


def crop_settings(experiment: ExperimentConfig, settings: PretrainConfig) -> DrawSettings:
    """The drawing settings that give crops of ``experiment``'s geometry and channels."""
    pre = experiment.preprocess
    return DrawSettings(tuple(settings.phases), pre.depth_channel, pre.crop_voxels, pre.spacing_mm,
                        tuple(pre.hu_window), settings.outline, settings.normal_fraction)


def pretrain_encoder(experiment: ExperimentConfig, settings: PretrainConfig, device: str = "cpu",
                     progress: bool = True) -> PretrainResult:
    """Draw ``settings.examples`` lesions, train the experiment's network on their targets, measure it on the
    held-out share."""
    started = time.perf_counter()
    if experiment.encoder.kind != "3d":
        raise UserInputError(f"encoder.kind is {experiment.encoder.kind!r}: pre-training trains the 3D network on "
                             "whole crops; set encoder.kind: 3d in the experiment")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch_device = resolve_device(device)
    draw = crop_settings(experiment, settings)
    channels = crop_channels(settings.phases, bool(settings.phases), draw.depth_channel)
    needed, total = settings.examples * len(channels) * draw.voxels ** 3 * 2, _memory_bytes()
    if needed > 0.6 * total:
        raise UserInputError(f"--examples {settings.examples}: their crops ({len(channels)} x {draw.voxels}^3 voxels "
                             f"each) would take {needed / 2**30:.1f} GiB of this machine's {total / 2**30:.0f} GiB; "
                             f"draw at most {int(0.6 * total / (needed / settings.examples))}")
    data = draw_set(settings.examples, settings.seed, draw, settings.workers, progress)
    n = settings.examples
    held_out = np.random.default_rng(settings.seed).permutation(n)[:max(10, int(round(settings.held_out_fraction * n)))]
    train_idx = np.setdiff1d(np.arange(n), held_out)
    reg_names = regression_targets(settings.phases)
    bin_names = binary_targets(settings.phases)
    types = type_names(settings.outline)
    known = data.regression[train_idx][~np.isnan(data.regression[train_idx, 0])]
    mean = known.mean(0) if len(known) else np.zeros(len(reg_names), dtype=np.float32)
    scale = known.std(0) if len(known) else np.ones(len(reg_names), dtype=np.float32)
    scale = np.where(scale > 1e-6, scale, 1.0).astype(np.float32)

    encoder = experiment.encoder
    torch.manual_seed(settings.seed)
    model = build_network(encoder, channels).to(torch_device)
    if model.input_skip is not None:  # fitted on the user's cohort, not here
        model.input_skip.requires_grad_(False)
    heads = _PretextHeads(encoder.embedding_size, len(reg_names), len(bin_names), len(types)).to(torch_device)
    parameters = [p for p in [*model.parameters(), *heads.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    steps = settings.epochs * int(math.ceil(len(train_idx) / settings.batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.learning_rate, total_steps=max(steps, 1),
                                                    pct_start=0.2)
    loop = TrainingLoop(model, optimizer, scheduler, torch_device, settings.seed, salt=(1,), progress=progress,
                        description="pre-training encoder")
    augmentation = BatchAugmentation(encoder.augmentation_strength, tuple(draw.hu_window), encoder.hu_jitter)
    mean_t, scale_t = (torch.as_tensor(v, device=torch_device) for v in (mean, scale))

    def targets(idx: np.ndarray) -> tuple[torch.Tensor, ...]:
        return (torch.as_tensor(data.regression[idx], device=torch_device),
                torch.as_tensor(data.binary[idx], device=torch_device),
                torch.as_tensor(data.type_index[idx], device=torch_device),
                torch.as_tensor(data.malignant[idx], device=torch_device))

    history = []
    for epoch, random in loop.epochs(0, settings.epochs):
        heads.train()
        augmentation_rng = np.random.default_rng(random.augmentation_seed)
        order = random.generator.permutation(train_idx)
        total = 0.0
        for start in range(0, len(order), settings.batch_size):
            idx = np.sort(order[start:start + settings.batch_size])
            if len(idx) < 2:
                continue
            x = augmentation(as_float32(data.crops[idx]).to(torch_device), augmentation_rng)
            with loop.autocast():
                logit, embedding = model(x)
                loss = _losses(heads(embedding.float()), logit.float(), targets(idx), mean_t, scale_t)
            loop.step(loss)
            total += loss.item() * len(idx)
        history.append({"epoch": epoch, "train_loss": total / len(order)})

    figures = _held_out_figures(model, heads, data, np.sort(held_out), reg_names, bin_names, types, mean, scale,
                                experiment)
    figures.update(minutes=(time.perf_counter() - started) / 60, device=str(torch_device),
                   training_examples=int(len(train_idx)), held_out_examples=int(len(held_out)), history=history)
    model.cpu().eval()
    metadata = {
        "format": FORMAT, "architecture": encoder.architecture(), "channels": channels,
        "spacing_mm": draw.spacing_mm, "crop_voxels": draw.voxels, "hu_window": list(draw.hu_window),
        "settings": settings.model_dump(mode="json"), "targets": {"regression": reg_names, "binary": bin_names,
                                                                  "types": types},
        "figures": {k: v for k, v in figures.items() if k != "history"},
    }
    return PretrainResult(model, figures, metadata)


@torch.inference_mode()
def _held_out_figures(model, heads, data: DrawnSet, idx: np.ndarray, reg_names, bin_names, types, mean, scale,
                      experiment: ExperimentConfig) -> dict:
    """R^2 per regression target, AUC per finding, type accuracy, malignancy AUC on the held-out draws."""
    logit, embedding = predict(model, data.crops[idx], experiment.encoder, tta_views=1)
    regression, binary, type_logits = (o.numpy() for o in heads.cpu().eval()(torch.from_numpy(embedding)))
    present = ~np.isnan(data.regression[idx, 0])
    figures: dict = {"r2": {}, "auc": {}}
    for j, name in enumerate(reg_names):
        truth = data.regression[idx, j][present]
        figures["r2"][name] = float(r2_score(truth, regression[present, j] * scale[j] + mean[j])) \
            if len(truth) > 1 else None
    for j, name in enumerate(bin_names):
        truth = data.binary[idx, j][present]
        figures["auc"][name] = float(roc_auc_score(truth, binary[present, j])) if len(set(truth)) == 2 else None
    malignant = data.malignant[idx]
    figures["auc"]["malignant"] = float(roc_auc_score(malignant, logit)) if len(set(malignant)) == 2 else None
    figures["type_accuracy"] = float(np.mean(type_logits.argmax(1) == data.type_index[idx]))
    counts = np.bincount(data.type_index[idx], minlength=len(types))
    figures["type_accuracy_majority"] = float(counts.max() / counts.sum())
    return figures
