"""Training one encoder: AdamW, one-cycle or cosine schedule, class weighting, early stopping on
validation AUC, a checkpoint per epoch (a killed run resumes), deterministic on CPU.

Determinism: initial weights come from ``seed``; each epoch reseeds the batch order, the
augmentation and dropout from (seed, epoch), so a run resumed from its epoch-``e`` checkpoint continues
exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from fusion_model.config import EncoderConfig
from fusion_model.devices import resolve_device
from fusion_model.encoder.network import LesionEncoder
from fusion_model.encoder.slices import aggregate, lesion_slice_indices, slice_stacks
from fusion_model.encoder.transforms import BatchAugmentation, flip_views
from fusion_model.encoder.weights import load_pretrained
from fusion_model.training import TrainingLoop

EpochHook = Callable[[int, dict], None]


def unnamed_channels(count: int) -> list[str]:
    """Names for crops that come without them: images, then the mask (the crops' layout)."""
    return [f"image{k}" for k in range(count - 1)] + ["mask"]


def mask_index(channels: Sequence[str]) -> int:
    """Where the mask is among the crop channels: the last one, as the network's mask input expects."""
    channels = list(channels)
    if not channels or channels[-1] != "mask" or channels.count("mask") != 1:
        raise ValueError(f"crop channels {channels}: the mask must be the last channel, once")
    return len(channels) - 1


def build_network(config: EncoderConfig, channels: Sequence[str]) -> LesionEncoder:
    """The network for crops with these channels (phases, the depth map if asked for, then the mask)."""
    dims = 3 if config.kind == "3d" else 2
    mask = mask_index(channels)
    in_channels = len(channels) if dims == 3 else len(channels) * 3
    # in 2.5D stacks every channel becomes three slices: the mask's middle slice is channel 3 * mask + 1
    mask_channel = mask if dims == 3 else 3 * mask + 1
    return LesionEncoder(dims, in_channels, width=config.width, depth=config.depth,
                         embedding_size=config.embedding_size, dropout=config.dropout,
                         stem_stride=config.stem_stride, mask_channel=mask_channel if config.mask_pooling else None,
                         input_pooling=config.input_pooling, mask_input=config.mask_input,
                         mask_input_channels=1 if dims == 3 else 3, input_skip=config.input_skip)


def as_float32(batch: np.ndarray) -> torch.Tensor:
    """A float32 tensor with memory of its own (torch converts the crops' float16 several times faster than
    NumPy)."""
    array = np.ascontiguousarray(batch)
    if array.dtype == np.float32 or not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array).float()


@torch.inference_mode()
def predict(model: LesionEncoder, crops: np.ndarray, config: EncoderConfig,
            tta_views: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lesion logits (n,) and embeddings (n, embedding_size); TTA averages axial flips."""
    views = config.tta_views if tta_views is None else tta_views
    model.eval()
    device = next(model.parameters()).device
    logits, embeddings = [], []

    def outputs(x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=device.type == "cuda"):
            outs = [model(v) for v in flip_views(x.to(device), views)]
        return [(o[0].float().cpu(), o[1].float().cpu()) for o in outs]

    if config.kind == "3d":
        for start in range(0, len(crops), config.inference_batch_size):
            outs = outputs(as_float32(crops[start:start + config.inference_batch_size]))
            logits.append(torch.stack([o[0] for o in outs]).mean(0))
            embeddings.append(torch.stack([o[1] for o in outs]).mean(0))
        return torch.cat(logits).numpy(), torch.cat(embeddings).numpy()
    for crop in crops:
        tensor = as_float32(crop)
        stacks = slice_stacks(tensor, lesion_slice_indices(tensor))
        outs = outputs(stacks)
        slice_logits = torch.stack([o[0] for o in outs]).mean(0)
        slice_embeddings = torch.stack([o[1] for o in outs]).mean(0)
        logit, embedding = aggregate(slice_logits, slice_embeddings, config.aggregation, config.top_k,
                                     config.operating_value)
        logits.append(logit)
        embeddings.append(embedding)
    return torch.stack(logits).numpy(), torch.stack(embeddings).numpy()


def _training_batch(crops: np.ndarray, labels: np.ndarray, indices: np.ndarray, augmentation: BatchAugmentation,
                    config: EncoderConfig, rng: np.random.Generator, augmentation_rng: np.random.Generator,
                    second_reader_crops: np.ndarray | None = None, use_second: np.ndarray | None = None,
                    device: torch.device = torch.device("cpu")) -> tuple[torch.Tensor, torch.Tensor]:
    """The augmented batch of lesions ``indices`` on ``device`` (3D), or their slice stacks (2.5D, slices drawn
    with ``rng``), and its labels."""
    raw = as_float32(crops[indices])
    if second_reader_crops is not None and use_second is not None and use_second[indices].any():
        second = np.flatnonzero(use_second[indices])
        raw[second] = as_float32(second_reader_crops[indices[second]])
    if config.kind == "3d":
        x = augmentation(raw.to(device, non_blocking=True), augmentation_rng)
        return x, torch.as_tensor(labels[indices], dtype=torch.float32, device=device)
    augmented = augmentation(raw, augmentation_rng)
    xs, ys = [], []
    for crop, i in zip(augmented, indices):
        available = lesion_slice_indices(crop)
        chosen = rng.choice(available, size=min(config.slices_per_lesion, len(available)), replace=False)
        xs.append(slice_stacks(crop, np.sort(chosen)))
        ys.extend([labels[i]] * len(chosen))
    return torch.cat(xs).to(device), torch.as_tensor(np.asarray(ys), dtype=torch.float32, device=device)


@torch.inference_mode()
def _lesion_statistics(model: LesionEncoder, crops: np.ndarray, indices: np.ndarray, config: EncoderConfig,
                       device: torch.device) -> torch.Tensor:
    """The input statistics of the un-augmented crops ``crops[indices]``, read a batch at a time (no copy of the
    training set); in 2.5D those of each lesion's central slice stack."""
    out = []
    for start in range(0, len(indices), config.inference_batch_size):
        batch = as_float32(crops[indices[start:start + config.inference_batch_size]])
        if config.kind != "3d":
            central = [lesion_slice_indices(c) for c in batch]
            batch = torch.cat([slice_stacks(c, k[len(k) // 2:][:1]) for c, k in zip(batch, central)])
        out.append(model.lesion_statistics(batch.to(device)).float().cpu())
    return torch.cat(out)


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else float("nan")


@dataclass
class TrainResult:
    """A trained encoder network, its best epoch and validation AUC, and the epoch history."""

    model: LesionEncoder
    best_epoch: int
    best_val_auc: float | None
    history: list[dict] = field(default_factory=list)
    resumed_from_epoch: int | None = None


def train_encoder(
    crops: np.ndarray,
    labels: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray | None,
    config: EncoderConfig,
    hu_window: tuple[float, float] = (-200.0, 300.0),
    seed: int = 0,
    epochs: int | None = None,
    checkpoint: Path | None = None,
    on_epoch: EpochHook | None = None,
    progress: bool = True,
    description: str = "training encoder",
    second_reader_crops: np.ndarray | None = None,
    device: str = "cpu",
    channels: Sequence[str] | None = None,
) -> TrainResult:
    """Train on ``train_idx``; early-stop on ``val_idx`` (AUC) when given, else run all epochs.

    With ``second_reader_crops``, each epoch draws for every lesion (with even odds) whether its training crop
    is the first or the second reader's; validation uses ``crops``. On a CUDA ``device`` the network trains
    with mixed precision (float16 autocast, gradient scaling); the returned network is on the CPU. ``channels``:
    the crops' channel names (default: images, then the mask).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(device)
    labels = np.asarray(labels).astype(np.float32)
    epochs = epochs or config.epochs
    torch.manual_seed(seed)
    model = build_network(config, channels or unnamed_channels(crops.shape[1]))
    if config.pretrained:
        load_pretrained(model, config.pretrained)  # the malignancy layer stays as seeded above
    model = model.to(device)
    if model.input_skip is not None:
        skip_idx = np.sort(np.asarray(train_idx))
        model.fit_input_skip(_lesion_statistics(model, crops, skip_idx, config, device), labels[skip_idx],
                             balanced=config.class_weighting == "balanced")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = int(np.ceil(len(train_idx) / config.batch_size))
    total_steps = epochs * steps_per_epoch
    if config.schedule == "onecycle" and total_steps >= 4:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.learning_rate, total_steps=total_steps,
                                                        pct_start=max(0.2, 2.0 / total_steps))
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    positives = float(labels[train_idx].sum())
    pos_weight = None
    if config.class_weighting == "balanced" and 0 < positives < len(train_idx):
        pos_weight = torch.tensor((len(train_idx) - positives) / positives, device=device)
    augmentation = BatchAugmentation(config.augmentation_strength, tuple(hu_window), config.hu_jitter)
    averaged = None
    if config.ema_decay is not None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
    smoothing = config.label_smoothing

    run_key = hashlib.sha256(f"{config.fingerprint()}|{seed}|{epochs}|{np.asarray(train_idx).tobytes().hex()}|"
                             f"{None if val_idx is None else np.asarray(val_idx).tobytes().hex()}".encode()
                             + (b"" if second_reader_crops is None else b"|second reader")).hexdigest()
    loop = TrainingLoop(model, optimizer, scheduler, device, seed, checkpoint=checkpoint, run_key=run_key,
                        progress=progress, description=description)
    if averaged is not None:
        loop.after_step.append(lambda: averaged.update_parameters(model))
    state = {"epoch": -1, "best_auc": -np.inf, "best_neg_loss": -np.inf, "best_epoch": -1, "bad_epochs": 0,
             "history": [], "best_model": None, "averaged": None}
    resumed = None
    restored = loop.resume(state)
    if restored is not None:
        state, resumed = restored, restored["epoch"]
        if averaged is not None and state["averaged"] is not None:
            averaged.load_state_dict(state["averaged"])
    trained = model if averaged is None else averaged.module  # the network validated and returned

    def patience_spent() -> bool:
        return val_idx is not None and state["bad_epochs"] >= config.patience

    for epoch, random in loop.epochs(state["epoch"] + 1, epochs, patience_spent):
        generator = random.generator
        augmentation_rng = np.random.default_rng(random.augmentation_seed)
        order = generator.permutation(train_idx)
        use_second = None if second_reader_crops is None else generator.random(len(crops)) < 0.5
        total_loss = 0.0
        for start in range(0, len(order), config.batch_size):
            batch_idx = order[start:start + config.batch_size]
            if len(batch_idx) < 2:
                continue  # BatchNorm needs two examples
            x, y = _training_batch(crops, labels, batch_idx, augmentation, config, generator, augmentation_rng,
                                   second_reader_crops, use_second, device)
            with loop.autocast():
                logits, _ = model(x)
                target = y * (1.0 - smoothing) + 0.5 * smoothing if smoothing else y
                loss = F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=pos_weight)
            loop.step(loss)
            total_loss += loss.item() * len(batch_idx)
        record = {"epoch": epoch, "train_loss": total_loss / len(order), "lr": scheduler.get_last_lr()[0]}
        if val_idx is not None:
            val_logits, _ = predict(trained, crops[val_idx], config, tta_views=1)
            record["val_auc"] = _auc(labels[val_idx], val_logits)
            record["val_loss"] = float(F.binary_cross_entropy_with_logits(
                torch.from_numpy(val_logits), torch.from_numpy(labels[val_idx])))
            # higher AUC wins; on a tie (small validation sets saturate) lower loss wins
            score = (record["val_auc"] if not np.isnan(record["val_auc"]) else 0.0, -record["val_loss"])
            if score > (state["best_auc"], state["best_neg_loss"]):
                state.update(best_auc=score[0], best_neg_loss=score[1], best_epoch=epoch, bad_epochs=0,
                             best_model=copy.deepcopy(trained.state_dict()))
            else:
                state["bad_epochs"] += 1
        else:
            state.update(best_epoch=epoch, best_model=None)
        state["epoch"] = epoch
        state["history"].append(record)
        if averaged is not None:
            state["averaged"] = averaged.state_dict()
        loop.save(state)
        if on_epoch is not None:
            on_epoch(epoch, record)

    if state["best_model"] is not None:
        trained.load_state_dict(state["best_model"])
    trained.cpu().eval()
    best_auc = None if val_idx is None else float(state["best_auc"])
    return TrainResult(trained, state["best_epoch"], best_auc, state["history"], resumed)
