"""Encoder pre-training on lesions the synthetic generator draws (``fusion-model pretrain-encoder``).

The generator (:mod:`fusion_model.synthetic`) draws lesions without limit, each with its latent values
known. Here each drawn lesion is rendered straight into a crop of the experiment's geometry (its spacing,
cube, HU window and channels): the phantom's anatomy around an adrenal gland, the lesion over it, partial-volume
blur and noise as in ``fusion-model synth``, cut around the mask's centroid as the pipeline cuts its crops. The
experiment's network learns to read back, from its embedding, what the crop's channels can show:

- always: the latent size (log mm), the ellipsoid's two axis ratios, the outline's irregularity; the lesion's
  type (the generator's eight kinds; with ``outline: gland`` also "normal gland") and malignancy (the network's
  own logit);
- with CT phases: the latent attenuation in each phase, the enhancement of each enhanced phase over the
  unenhanced one, the washout between venous and delayed, the texture SD, necrosis, calcification and fat.

Regression targets are standardised on the training draws (mean squared error), binary ones and the type
take cross-entropy; the losses are summed. With ``outline: gland`` the mask is the whole adrenal gland (two or
three limbs of random length, thickness, height and bend) with the lesion on a limb, and a share of the glands
has no lesion: AdrenalMNIST3D's masks are of this kind.

The weight file (safetensors, tensors only) holds the network without its malignancy layer and input skip
(those start afresh on the user's cohort) and, as metadata, the network's architecture settings, the crop's
channels and geometry, the pre-training settings and its held-out figures, so that a mismatched experiment is
refused with a message, not loaded into the wrong shapes.
"""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from scipy import ndimage
from sklearn.metrics import r2_score, roc_auc_score
from torch import nn

from fusion_model.config import ExperimentConfig, PretrainConfig
from fusion_model.devices import resolve_device
from fusion_model.errors import UserInputError
from fusion_model.fileio import atomic_write
from fusion_model.imaging.preprocess import AIR_HU, crop_channels, depth_map, window_hu
from fusion_model.progress import track
from fusion_model.synthetic import phantom
from fusion_model.synthetic.generate import CENTRES, draw_lesion_parameters
from fusion_model.synthetic.profiles import PROFILES

FORMAT = "fusion-model pretrained encoder 1"
METADATA_KEY = "fusion_model"
NORMAL_GLAND = "normal_gland"
# fresh on the user's cohort: the malignancy layer (another label's meaning) and the input skip (fitted there)
NOT_TRANSFERRED = ("head.", "input_skip.", "statistics_mean", "statistics_scale")
ENHANCED = ("arterial", "venous", "delayed")


# --- targets -------------------------------------------------------------------------------------------------
def regression_targets(phases: list[str]) -> list[str]:
    """The continuous latent values the crop's channels show: geometry always, intensities per phase."""
    names = ["log_size_mm", "axis_ratio_mid", "axis_ratio_least", "irregularity"]
    names += [f"{phase}_hu" for phase in phases]
    if "unenhanced" in phases:
        names += [f"{phase}_enhancement_hu" for phase in ENHANCED if phase in phases]
    if "venous" in phases and "delayed" in phases:
        names.append("washout_fraction")
    if phases:
        names.append("texture_sd_hu")
    return names


def binary_targets(phases: list[str]) -> list[str]:
    """Yes/no latent findings the CT shows (none for mask-only crops)."""
    return ["necrosis", "calcification", "macroscopic_fat"] if phases else []


def type_names(outline: str) -> list[str]:
    """The type classes: the generator's kinds (and a normal gland for gland outlines)."""
    return [p.name for p in PROFILES] + ([NORMAL_GLAND] if outline == "gland" else [])


def _phase_hu(latents: dict, phase: str) -> float:
    enhancement = {"unenhanced": 0.0, "arterial": latents["arterial_enhancement_hu"],
                   "venous": latents["venous_enhancement_hu"],
                   "delayed": latents["venous_enhancement_hu"] * (1.0 - latents["washout_fraction"])}
    return latents["unenhanced_hu"] + enhancement[phase]


def _target_values(lesion, names: list[str]) -> list[float]:
    latents, semi = lesion.latents, lesion.semi_axes
    values = {"log_size_mm": math.log(latents["size_mm"]), "axis_ratio_mid": semi[1] / semi[0],
              "axis_ratio_least": semi[2] / semi[0], "irregularity": latents["irregularity"],
              "washout_fraction": latents["washout_fraction"], "texture_sd_hu": latents["texture_sd_hu"]}
    for phase in phantom.PHASE_INDEX:
        values[f"{phase}_hu"] = _phase_hu(latents, phase)
        values[f"{phase}_enhancement_hu"] = _phase_hu(latents, phase) - latents["unenhanced_hu"]
    return [float(values[n]) for n in names]


# --- drawing ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DrawSettings:
    """What one drawn example looks like: channels, crop geometry, outline."""

    phases: tuple[str, ...]
    depth_channel: bool
    voxels: int
    spacing_mm: float
    hu_window: tuple[float, float]
    outline: str
    normal_fraction: float


@dataclass
class Example:
    """One drawn crop (channels, z, y, x; float16 in [0, 1]) and its targets (NaN where not defined)."""

    crop: np.ndarray
    regression: np.ndarray
    binary: np.ndarray
    type_index: int
    malignant: float


def _coarse_field(grid: phantom.Grid, scale_mm: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth unit-SD random field on ``grid`` with correlation length ``scale_mm``, drawn on a grid a quarter
    as fine and interpolated (the same field, sixty times cheaper than filtering at full resolution)."""
    coarse = tuple(max(2, int(math.ceil(n / 4)) + 1) for n in grid.shape)
    sigma = tuple(scale_mm / (4 * s) for s in grid.spacing[::-1])
    field = phantom.smooth_field(coarse, sigma, rng)
    return ndimage.zoom(field, [n / c for n, c in zip(grid.shape, coarse)], order=1, grid_mode=True,
                        mode="grid-constant")[tuple(slice(0, n) for n in grid.shape)]


def gland_mask(grid: phantom.Grid, junction: tuple[float, float, float], rng: np.random.Generator
               ) -> tuple[np.ndarray, list[tuple[np.ndarray, float]]]:
    """An adrenal gland (z, y, x bool): two or three limbs from one junction, each a flat ellipsoid (length
    15-35 mm, thickness 3-7 mm, height 16-36 mm) bent by a smooth random field; and each limb's (direction,
    length), for placing a lesion on it."""
    x, y, z = grid.axes()
    bend = 2.5 * rng.uniform(0.3, 1.0)
    dx, dy = (bend * _coarse_field(grid, 8.0, rng) for _ in range(2))
    xb, yb, zb = x + dx, y + dy, np.broadcast_to(z, grid.shape)
    mask = np.zeros(grid.shape, dtype=bool)
    limbs = []
    first = rng.uniform(0, 2 * math.pi)
    for k in range(int(rng.integers(2, 4))):
        angle = first + k * rng.uniform(0.5, 1.6) * (1 if k < 2 else -1)
        direction = np.array([math.cos(angle), math.sin(angle)])
        length, thickness, height = rng.uniform(15, 35), rng.uniform(1.5, 3.5), rng.uniform(8, 18)
        tilt = rng.uniform(-0.3, 0.3)  # the limb's axis rises or falls along its length
        cx, cy = junction[0] + direction[0] * length / 2, junction[1] + direction[1] * length / 2
        along = (xb - cx) * direction[0] + (yb - cy) * direction[1]
        across = -(xb - cx) * direction[1] + (yb - cy) * direction[0]
        up = zb - junction[2] - tilt * along
        mask |= (along / (length / 2)) ** 2 + (across / thickness) ** 2 + (up / height) ** 2 <= 1.0
        limbs.append((direction, length))
    return mask, limbs


def _cut(volume: np.ndarray, centre: np.ndarray, voxels: int, fill: float) -> np.ndarray:
    """The ``voxels``^3 cube of ``volume`` centred on voxel ``centre`` (z, y, x); ``fill`` beyond its edges."""
    out = np.full((voxels,) * 3, fill, dtype=volume.dtype)
    lo = np.asarray(centre) - (voxels - 1) // 2
    src = tuple(slice(max(0, a), min(n, a + voxels)) for a, n in zip(lo, volume.shape))
    dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, lo))
    out[dst] = volume[src]
    return out


def draw_example(index: int, seed: int, settings: DrawSettings) -> Example:
    """Example ``index`` of the stream ``seed``: a generator lesion (or a normal gland) rendered into a crop."""
    rng = np.random.default_rng([seed, index])
    s = settings.spacing_mm
    side = "right" if rng.random() < 0.5 else "left"
    lesion = draw_lesion_parameters(rng, side)
    normal = settings.outline == "gland" and rng.random() < settings.normal_fraction
    anatomy = phantom.Anatomy.draw(rng)
    ax_, ay_ = anatomy.adrenal(side)
    centre = np.array([ax_ + rng.normal(0, 2), ay_ + 4 + rng.normal(0, 2), rng.normal(0, 3)])
    big = int(math.ceil(1.5 * settings.voxels))  # room to cut the crop around the mask's centroid
    half = (big - 1) / 2 * s
    grid = phantom.Grid(origin=tuple(centre - half), spacing=(s, s, s), shape=(big, big, big))
    mask = np.zeros(grid.shape, dtype=bool)
    gland = None
    lesion_centre = tuple(centre)
    if settings.outline == "gland":
        gland, limbs = gland_mask(grid, tuple(centre), rng)
        direction, length = limbs[int(rng.integers(len(limbs)))]
        reach = rng.uniform(0.2, 0.9) * length
        lesion_centre = (centre[0] + direction[0] * reach, centre[1] + direction[1] * reach, centre[2])
        mask |= gland
    drawings = []
    if not normal:
        drawing = phantom.draw_lesion(grid, lesion_centre, lesion.latents, lesion.semi_axes, lesion.angle,
                                      cyst=lesion.profile.name == "cyst", rng=rng)
        mask[drawing.box] |= drawing.mask
        drawings.append(drawing)
    if not mask.any():  # a lesion smaller than a voxel: outline its centre voxel
        mask[tuple(int(v) for v in np.rint((np.asarray(lesion_centre[::-1]) - grid.origin[::-1]) / s))] = True
    at = np.rint(ndimage.center_of_mass(mask)).astype(int)
    crop_mask = _cut(mask.astype(np.uint8), at, settings.voxels, 0)
    channels = []
    if settings.phases:
        labels = phantom.anatomy_labels(grid, anatomy)
        if gland is not None:  # the gland drawn here replaces the phantom's
            labels[labels == phantom.LABEL["adrenal"]] = phantom.LABEL["fat"]
            labels[gland] = phantom.LABEL["adrenal"]
        centre_profile = CENTRES[int(rng.integers(len(CENTRES)))]
        for phase in settings.phases:
            hu = phantom.render_phase(labels, drawings, phase, grid, centre_profile.noise_hu,
                                      centre_profile.hu_offset, rng)
            channels.append(window_hu(_cut(hu.astype(np.float32), at, settings.voxels, AIR_HU), settings.hu_window))
    if settings.depth_channel:
        channels.append(depth_map(crop_mask, s))
    channels.append(crop_mask.astype(np.float32))
    crop = np.stack(channels).astype(np.float16)

    reg_names = regression_targets(list(settings.phases))
    bin_names = binary_targets(list(settings.phases))
    if normal:
        regression = np.full(len(reg_names), np.nan)
        binary = np.full(len(bin_names), np.nan)
        type_index, malignant = type_names("gland").index(NORMAL_GLAND), 0.0
    else:
        regression = np.asarray(_target_values(lesion, reg_names))
        binary = np.asarray([float(lesion.latents[n] >= 0.5) for n in bin_names])
        type_index, malignant = type_names(settings.outline).index(lesion.profile.name), float(lesion.profile.malignant)
    return Example(crop, regression.astype(np.float32), binary.astype(np.float32), type_index, malignant)


def _draw_task(args: tuple[int, int, DrawSettings]) -> Example:
    return draw_example(*args)


@dataclass
class DrawnSet:
    """Drawn examples stacked: crops (n, channels, z, y, x) float16 and their targets."""

    crops: np.ndarray
    regression: np.ndarray  # (n, targets) float32, NaN for normal glands
    binary: np.ndarray
    type_index: np.ndarray
    malignant: np.ndarray


def draw_set(n: int, seed: int, settings: DrawSettings, workers: int = 0, progress: bool = True) -> DrawnSet:
    """Examples 0..n-1 of the stream ``seed`` (the same whatever the number of workers)."""
    workers = workers or min(2, os.cpu_count() or 1)
    first = draw_example(0, seed, settings)
    crops = np.empty((n, *first.crop.shape), dtype=np.float16)
    regression = np.empty((n, len(first.regression)), dtype=np.float32)
    binary = np.empty((n, len(first.binary)), dtype=np.float32)
    type_index, malignant = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.float32)

    def store(i: int, example: Example) -> None:
        crops[i], regression[i], binary[i] = example.crop, example.regression, example.binary
        type_index[i], malignant[i] = example.type_index, example.malignant

    store(0, first)
    tasks = [(i, seed, settings) for i in range(1, n)]
    if workers > 1 and n > 64:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(_draw_task, tasks, chunksize=16)
            for i, example in track(enumerate(results, start=1), "drawing lesions", total=n - 1, enabled=progress):
                store(i, example)
    else:
        for i, example in track(enumerate(map(_draw_task, tasks), start=1), "drawing lesions", total=n - 1,
                                enabled=progress):
            store(i, example)
    return DrawnSet(crops, regression, binary, type_index, malignant)


# --- training --------------------------------------------------------------------------------------------
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
    from fusion_model.encoder.train import _as_float, build_network
    from fusion_model.encoder.transforms import BatchAugmentation

    started = time.perf_counter()
    if experiment.encoder.kind != "3d":
        raise UserInputError(f"encoder.kind is {experiment.encoder.kind!r}: pre-training trains the 3D network on "
                             "whole crops; set encoder.kind: 3d in the experiment")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch_device = resolve_device(device)
    cuda = torch_device.type == "cuda"
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
    model = build_network(encoder, len(channels)).to(torch_device)
    if model.input_skip is not None:  # fitted on the user's cohort, not here
        model.input_skip.requires_grad_(False)
    heads = _PretextHeads(encoder.embedding_size, len(reg_names), len(bin_names), len(types)).to(torch_device)
    parameters = [p for p in [*model.parameters(), *heads.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    steps = settings.epochs * int(math.ceil(len(train_idx) / settings.batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.learning_rate, total_steps=max(steps, 1),
                                                    pct_start=0.2)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    augmentation = BatchAugmentation(encoder.augmentation_strength, tuple(draw.hu_window), encoder.hu_jitter)
    mean_t, scale_t = (torch.as_tensor(v, device=torch_device) for v in (mean, scale))

    def targets(idx: np.ndarray) -> tuple[torch.Tensor, ...]:
        return (torch.as_tensor(data.regression[idx], device=torch_device),
                torch.as_tensor(data.binary[idx], device=torch_device),
                torch.as_tensor(data.type_index[idx], device=torch_device),
                torch.as_tensor(data.malignant[idx], device=torch_device))

    history = []
    for epoch in track(range(settings.epochs), "pre-training encoder", enabled=progress):
        model.train()
        heads.train()
        generator = np.random.default_rng([settings.seed, epoch, 1])
        augmentation_rng = np.random.default_rng(int(generator.integers(2**31 - 1)))
        torch.manual_seed(int(generator.integers(2**31 - 1)))
        order = generator.permutation(train_idx)
        total = 0.0
        for start in range(0, len(order), settings.batch_size):
            idx = np.sort(order[start:start + settings.batch_size])
            if len(idx) < 2:
                continue
            x = augmentation(_as_float(data.crops[idx]).to(torch_device), augmentation_rng)
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=cuda):
                logit, embedding = model(x)
                loss = _losses(heads(embedding.float()), logit.float(), targets(idx), mean_t, scale_t)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
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
    from fusion_model.encoder.train import predict

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


# --- the weight file ---------------------------------------------------------------------------------------
def check_output(path: Path, overwrite: bool = False) -> None:
    """Refuse a weight file name that is not *.safetensors, or one that exists (unless ``overwrite``)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UserInputError(f"--out {path}: name the weight file *.safetensors")
    if path.exists() and not overwrite:
        raise UserInputError(f"{path}: already exists; choose another --out or pass --overwrite")
    if path.is_dir():
        raise UserInputError(f"{path}: is a folder; give a file name *.safetensors")


def save_pretrained(result: PretrainResult, path: Path, overwrite: bool = False) -> Path:
    """Write the network (without what starts afresh) and its metadata, atomically."""
    path = Path(path)
    check_output(path, overwrite)
    tensors = {k: v.detach().contiguous().clone() for k, v in result.model.state_dict().items()
               if not k.startswith(NOT_TRANSFERRED)}
    metadata = {METADATA_KEY: json.dumps(result.metadata, default=float)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_pretrained_metadata(path: Path, setting: str = "encoder.pretrained") -> dict:
    """The metadata of a weight file written by :func:`save_pretrained`; anything else is refused."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{setting}: {path} does not exist (relative paths are read from the current "
                             f"directory, here {Path.cwd()}); write it with 'fusion-model pretrain-encoder'")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = json.loads((handle.metadata() or {})[METADATA_KEY])
    except (SafetensorError, KeyError, ValueError, OSError) as err:
        raise UserInputError(f"{setting}: {path} is not a weight file of 'fusion-model pretrain-encoder' "
                             f"({type(err).__name__}: {err})") from None
    if metadata.get("format") != FORMAT:
        raise UserInputError(f"{setting}: {path} has format {metadata.get('format')!r}, this version reads "
                             f"{FORMAT!r}; write it again with 'fusion-model pretrain-encoder'")
    return metadata


def describe_pretrained(path: str | Path) -> dict:
    """What a model records about the weights its networks started from: the file, its SHA-256, how it was
    pre-trained and its held-out figures."""
    from fusion_model.fileio import sha256_file

    metadata = read_pretrained_metadata(Path(path))
    return {"file": str(path), "sha256": sha256_file(Path(path)), "settings": metadata["settings"],
            "figures": metadata["figures"]}


def check_pretrained(experiment: ExperimentConfig, channels: list[str]) -> None:
    """Refuse, before any training, a weight file made for another network or other crops."""
    path = experiment.encoder.pretrained
    if not path:
        return
    metadata = read_pretrained_metadata(Path(path))
    pre, architecture = experiment.preprocess, experiment.encoder.architecture()
    differences = [f"encoder.{k}: {v!r} in the file, {architecture[k]!r} here"
                   for k, v in metadata["architecture"].items() if architecture.get(k) != v]
    if metadata["channels"] != channels:
        differences.append(f"crop channels {metadata['channels']} in the file, {channels} for this cohort")
    if not math.isclose(metadata["spacing_mm"], pre.spacing_mm) or metadata["crop_voxels"] != pre.crop_voxels:
        differences.append(f"crops of {metadata['crop_voxels']}^3 voxels at {metadata['spacing_mm']:g} mm in the "
                           f"file, {pre.crop_voxels}^3 at {pre.spacing_mm:g} mm here")
    has_ct = any(c not in ("depth", "mask") for c in channels)  # the window only matters for CT channels
    if has_ct and [float(v) for v in metadata["hu_window"]] != [float(v) for v in pre.hu_window]:
        differences.append(f"HU window {metadata['hu_window']} in the file, {list(pre.hu_window)} here")
    if differences:
        phases = [c for c in channels if c not in ("depth", "mask")]
        raise UserInputError(
            f"encoder.pretrained: {path} was pre-trained for another network or other crops ({'; '.join(differences)}); "
            f"pre-train for this experiment: fusion-model pretrain-encoder --config EXPERIMENT.yaml "
            + "".join(f"--phase {p} " for p in phases) + "--out FILE.safetensors")


def load_pretrained(model: nn.Module, path: str | Path) -> None:
    """Put a weight file's tensors into ``model`` (its malignancy layer and input skip keep their fresh values)."""
    path = Path(path)
    read_pretrained_metadata(path)
    tensors = load_file(str(path))
    own = model.state_dict()
    expected = {k for k in own if not k.startswith(NOT_TRANSFERRED)}
    wrong_shape = [k for k in expected & tensors.keys() if tuple(tensors[k].shape) != tuple(own[k].shape)]
    if expected != set(tensors) or wrong_shape:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise UserInputError(f"encoder.pretrained: {path} does not fit this network (missing {missing[:3]}, "
                             f"unexpected {extra[:3]}, other shapes {wrong_shape[:3]}); pre-train again with this "
                             "experiment's encoder settings")
    model.load_state_dict({**own, **{k: v.to(own[k].device, own[k].dtype) for k, v in tensors.items()}})
