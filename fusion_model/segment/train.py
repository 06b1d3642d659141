"""`fusion-model segment train`: fit the U-Net on a cohort's outlined scans.

Patients are split (grouped, per centre) into a training part and an early-stopping part. Training draws
foreground-oversampled patches (MONAI's random crops by positive/negative label), then flips and intensity
jitter on the batch and minimises Dice + cross-entropy under a polynomial learning-rate decay. Each epoch
ends with sliding-window inference on the early-stopping scans; the network with the best mean Dice there is
kept, and those scans then set the component-probability operating point (the most sensitive threshold
within ``max_false_positives_per_scan``). A checkpoint is written after every epoch: a killed run started
again with the same command resumes where it stopped. Randomness comes from (seed, epoch), so a resumed run
continues as the uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.data import MetaTensor
from monai.transforms import Compose, RandCropByPosNegLabeld
from monai.transforms.utils import map_binary_to_indices

from fusion_model.cohort import load_cohort
from fusion_model.config import SegmentConfig
from fusion_model.devices import resolve_device
from fusion_model.errors import UserInputError
from fusion_model.fileio import check_output_dir
from fusion_model.progress import track
from fusion_model.segment.artifact import Segmenter
from fusion_model.segment.infer import match_table_lesions, patch_zyx, probability_map, segment_scan
from fusion_model.segment.metrics import (
    DetectionRecord,
    overlap_metrics,
    summarise,
)
from fusion_model.segment.network import as_channels_last, build_segmenter, channels_last
from fusion_model.segment.refine import difference_pair, refiner_channels, training_crops
from fusion_model.segment.scans import (
    Region,
    ScanRecord,
    GLANDS_FOLDER,
    cohort_gland_regions,
    cohort_scans,
    lesion_queries,
    load_scan,
)
from fusion_model.training import ProcessGroup, TrainingLoop, cpu_bfloat16_supported, join_process_group

BACKGROUND_SAMPLES = 50_000  # background patch centres kept per scan (uniform subsample)


@dataclass
class SegmenterRun:
    """What training produced: the segmenter and the figures to print."""

    segmenter: Segmenter
    out: Path
    figures: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def split_patients(scans: list[ScanRecord], fraction: float, seed: int) -> np.ndarray:
    """Boolean per scan: in the early-stopping part. Patients are kept whole; each centre gives its share
    (at least one patient in all, and never a centre's only patient)."""
    rng = np.random.default_rng([seed, 7])
    held: set[str] = set()
    by_centre = {c: sorted({s.patient_id for s in scans if s.centre == c}) for c in sorted({s.centre for s in scans})}
    for patients in by_centre.values():
        count = min(round(fraction * len(patients)), len(patients) - 1)
        held.update(rng.permutation(patients)[:count])
    if not held:
        largest = max(by_centre.values(), key=len)
        if len(largest) > 1 or len(by_centre) > 1:
            held.add(str(rng.choice(largest)))
    return np.array([s.patient_id in held for s in scans])


def _pad_to_patch(image: np.ndarray, target: np.ndarray, patch: tuple[int, int, int]):
    pad = [(0, max(0, p - n)) for p, n in zip(patch, target.shape)]
    if any(after for _, after in pad):
        image = np.pad(image, [(0, 0), *pad])
        target = np.pad(target, pad)
    return image, target


def gland_target(glands: np.ndarray, spacing_mm: float, margin_mm: float) -> np.ndarray:
    """The learned gland region (z, y, x) uint8: gland voxels grown by ``margin_mm``."""
    from scipy import ndimage

    if not glands.any():
        return np.zeros(glands.shape, dtype=np.uint8)
    distance = ndimage.distance_transform_edt(glands == 0, sampling=spacing_mm)
    return (distance <= margin_mm).astype(np.uint8)


def _training_example(image: np.ndarray, target: np.ndarray, patch, rng: np.random.Generator,
                      glands: np.ndarray | None = None) -> dict:
    if glands is not None:
        _, glands = _pad_to_patch(image[:1], glands, patch)
    image, target = _pad_to_patch(image, target, patch)
    fg, bg = map_binary_to_indices(target)
    fg, bg = np.asarray(fg), np.asarray(bg)
    if len(bg) > BACKGROUND_SAMPLES:
        bg = np.sort(rng.choice(bg, BACKGROUND_SAMPLES, replace=False))
    example = {"image": image.astype(np.float16), "label": target[None], "fg": fg, "bg": bg}
    if glands is not None:
        example["gland"] = glands[None]
    return example


def training_transforms(config: SegmentConfig, glands: bool = False) -> Compose:
    """Foreground-oversampled random patches of whole scans (MONAI's dictionary crop; the gland target follows the
    crops when ``glands``). Flips and intensity jitter come after, on the batch (:func:`augment_batch`)."""
    keys = ["image", "label"] + (["gland"] if glands else [])
    return Compose([RandCropByPosNegLabeld(keys, label_key="label", spatial_size=patch_zyx(config),
                                           pos=config.foreground_ratio, neg=1.0 - config.foreground_ratio,
                                           num_samples=config.patches_per_volume, fg_indices_key="fg",
                                           bg_indices_key="bg")])


def augment_batch(images: torch.Tensor, targets: torch.Tensor, config: SegmentConfig,
                  generator: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each patch of a freshly stacked batch (batch, channels, z, y, x; changed in place) mirrored along each axis
    with probability 1/2 (its targets with it), and its windowed values scaled by 1 + U(-j, j) then shifted by
    U(-j, j), j = ``intensity_jitter``. The draws come from ``generator``, so the same (seed, epoch) gives the same
    batch. On the stacked batch in torch: MONAI's per-patch dictionary transforms and their MetaTensors took
    80 ms a refiner batch (15 ms now), against a step of about 120 ms."""
    count = len(images)
    mirror = generator.random((count, 3)) < 0.5 if config.flip else np.zeros((count, 3), dtype=bool)
    scale = 1.0 + generator.uniform(-config.intensity_jitter, config.intensity_jitter, count)
    shift = generator.uniform(-config.intensity_jitter, config.intensity_jitter, count)
    for i in range(count):  # the batch is the caller's fresh stack: changed in place
        dims = [axis + 1 for axis in range(3) if mirror[i, axis]]
        if dims:
            images[i] = torch.flip(images[i], dims)
            targets[i] = torch.flip(targets[i], dims)
    if config.intensity_jitter:
        images.mul_(torch.as_tensor(scale, dtype=images.dtype).view(-1, 1, 1, 1, 1))
        images.add_(torch.as_tensor(shift, dtype=images.dtype).view(-1, 1, 1, 1, 1))
    return images, targets


def _plain(values) -> torch.Tensor:
    """A plain tensor of an array or of MONAI's MetaTensor (whose metadata bookkeeping makes every later torch
    operation on the batch several times slower)."""
    return values.as_tensor() if isinstance(values, MetaTensor) else torch.as_tensor(values)


def _batch(examples: list[dict], chosen: np.ndarray, transform: Compose | None, config: SegmentConfig,
           generator: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch: the chosen examples (cropped by ``transform`` when given), stacked and augmented.

    ``transform is not None``, never ``if transform``: the truth value of MONAI's Compose is its length, which
    builds a flattened Compose whose constructor reseeds the crop from MONAI's global seed (None: the operating
    system's entropy), so every batch's crops came out different in each process."""
    images, labels = [], []
    for index in chosen:
        example = examples[index]
        patches = transform({**example, "image": example["image"].astype(np.float32)}) if transform is not None \
            else example
        for patch in patches if isinstance(patches, list) else [patches]:
            images.append(_plain(patch["image"]))
            label = _plain(patch["label"])
            labels.append(torch.cat([label, _plain(patch["gland"])]) if "gland" in patch else label)
    return augment_batch(torch.stack(images).float(), torch.stack(labels).long(), config, generator)


class DetectorLoss(torch.nn.Module):
    """Dice + cross-entropy of the lesion (outputs 0-1 against target channel 0) and, for a detector with a gland
    output, Dice + binary cross-entropy of the gland region (output 2 against target channel 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.lesion = DiceCELoss(to_onehot_y=True, softmax=True)
        self.gland = DiceCELoss(sigmoid=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of a batch: logits (batch, 2 or 3, z, y, x), target (batch, 1 or 2, z, y, x)."""
        loss = self.lesion(logits[:, :2], target[:, :1])
        if logits.shape[1] > 2:
            loss = loss + self.gland(logits[:, 2:3], target[:, 1:2].float())
        return loss


def _scan_dice(probability: np.ndarray, target: np.ndarray, threshold: float) -> float:
    predicted = probability >= threshold
    denominator = predicted.sum() + target.sum()
    return float(2.0 * np.logical_and(predicted, target).sum() / denominator) if denominator else 1.0


def _run_key(config: SegmentConfig, scans: list[ScanRecord], held: np.ndarray) -> str:
    text = "|".join(f"{s.key}:{int(h)}:{sorted(str(p) for p in s.phase_paths.values())}"
                    f":{[str(lesion.mask_path) for lesion in s.lesions]}" for s, h in zip(scans, held))
    return hashlib.sha256(f"{config.fingerprint()}|{text}".encode()).hexdigest()


@dataclass
class FitResult:
    """A trained network (its best epoch's weights) and its epoch history."""

    network: torch.nn.Module
    best_epoch: int
    best_score: float
    epochs_run: int
    history: list[dict]
    resumed_from_epoch: int | None


def _fit(stage: str, in_channels: int, out_channels: int, config: SegmentConfig, epochs: int,
         next_batch: Callable[[np.random.Generator], tuple[torch.Tensor, torch.Tensor]],
         score: Callable[[torch.nn.Module], float], transform: Compose | None, checkpoint: Path, run_key: str,
         device: torch.device, progress: bool, on_epoch: Callable[[dict], None] | None,
         group: ProcessGroup = ProcessGroup()) -> FitResult:
    """Train one network with Dice + cross-entropy, polynomial decay, early stopping on ``score`` and a
    checkpoint per epoch (resumed when it belongs to the same run).

    Data-parallel (``group`` of several processes, from torchrun): every process draws the same global batch and
    steps on its share of it (rank k takes patches k, k + N, ...), DistributedDataParallel averages the
    gradients, so the steps are those of one process on the whole batch; the leader alone scores the network,
    and its score (hence early stopping) is every process's."""
    torch.manual_seed(config.seed)
    network = channels_last(build_segmenter(config, in_channels, out_channels).to(device))
    trained = network
    if group.distributed:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    total_steps = epochs * config.iterations_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (1 - min(step, total_steps - 1)
                                                                           / total_steps) ** 0.9)
    loss_function = DetectorLoss()
    # a checkpoint of other settings is overwritten: the same --out, a new run
    bfloat16 = config.cpu_precision == "bfloat16" or (config.cpu_precision == "auto" and cpu_bfloat16_supported())
    loop = TrainingLoop(network, optimizer, scheduler, device, config.seed, salt=(len(stage),), checkpoint=checkpoint,
                        run_key=run_key, refuse_other_runs=False, progress=progress and group.leader,
                        description=f"training the {stage}", cpu_bfloat16=bfloat16)
    state = {"epoch": -1, "best_score": -1.0, "best_epoch": -1, "bad_epochs": 0, "history": [], "best_model": None}
    resumed = None
    restored = loop.resume(state)
    if restored is not None:
        state, resumed = restored, restored["epoch"]
    for epoch, random in loop.epochs(state["epoch"] + 1, epochs, lambda: state["bad_epochs"] >= config.patience):
        epoch_started = time.perf_counter()
        if transform is not None:
            transform.set_random_state(seed=random.augmentation_seed)
        total = 0.0
        for _ in range(config.iterations_per_epoch):
            x, y = next_batch(random.generator)
            if group.distributed:  # this process's share of the global batch
                x, y = x[group.rank::group.world_size], y[group.rank::group.world_size]
            x, y = as_channels_last(x.to(device)), y.to(device)
            patches_per_process = len(x)
            with loop.autocast():
                loss = loss_function(trained(x), y)
            loop.step(loss)
            total += group.mean(float(loss.item()))
        validate = (epoch + 1) % config.validate_every == 0 or epoch + 1 == epochs
        value = group.from_leader(score(network) if validate and group.leader else None)
        record = {"stage": stage, "epoch": epoch, "train_loss": total / config.iterations_per_epoch,
                  "val_dice": value, "lr": scheduler.get_last_lr()[0], "processes": group.world_size,
                  "patches_per_process": patches_per_process,
                  "seconds": round(time.perf_counter() - epoch_started, 2)}
        if value is not None and value > state["best_score"]:
            state.update(best_score=value, best_epoch=epoch, bad_epochs=0,
                         best_model={k: v.detach().cpu().clone() for k, v in network.state_dict().items()})
        elif value is not None:
            state["bad_epochs"] += config.validate_every
        state["epoch"] = epoch
        state["history"].append(record)
        if group.leader:
            loop.save(state)
        if on_epoch is not None and group.leader:
            on_epoch(record)
    network.load_state_dict(state["best_model"])
    network.eval()
    return FitResult(network, int(state["best_epoch"]), float(state["best_score"]), int(state["epoch"] + 1),
                     state["history"], resumed)


def train_segmenter(cohort_dir: Path, out: Path, config: SegmentConfig, device: str = "auto",
                    regions: dict[str, Region] | None = None, test_centre: str | None = None,
                    overwrite: bool = False, progress: bool = True,
                    on_epoch: Callable[[dict], None] | None = None) -> SegmenterRun | None:
    """Train a segmenter on the cohort's outlined scans (leaving out ``test_centre``) and write it to ``out``.

    Started by torchrun (``--nproc_per_node N``, or ``segment train --gpus N``), the N processes train the
    networks data-parallel, one GPU each (gloo on the CPU); the leader (rank 0) writes the segmenter and returns
    the run, the others return None."""
    started = time.perf_counter()
    out = Path(out)
    group, torch_device = join_process_group(resolve_device(device))
    detector_batch_size = max(1, config.batch_size // config.patches_per_volume) * config.patches_per_volume
    if group.distributed and (config.batch_size % group.world_size or detector_batch_size % group.world_size):
        raise UserInputError(f"batch_size {config.batch_size} (the detector's {detector_batch_size} patches: "
                             f"{config.patches_per_volume} per scan) does not split evenly over {group.world_size} "
                             f"processes; give a batch_size that does (a multiple of "
                             f"{group.world_size * config.patches_per_volume})")
    if group.leader:
        check_output_dir(out, overwrite)
    if config.threads:
        torch.set_num_threads(config.threads)
    cohort = load_cohort(cohort_dir)
    if test_centre is not None:
        cohort.select(centre=test_centre)  # refuses an unknown centre
        cohort = cohort.subset(cohort.table["lesion_id"][cohort.table["centre"] != test_centre])
    scans = cohort_scans(cohort)
    outlined = [s for s in scans if s.outlined]
    if not outlined:
        raise UserInputError(f"{cohort_dir}: no lesion has a mask (mask_path is empty in every row); segment train "
                             "learns from outlined lesions: add masks for some patients")
    skipped = [s.key for s in scans if not s.outlined]
    phases = list(config.phases or cohort.spec.phases)
    held = split_patients(outlined, config.validation_fraction, config.seed)
    if len({s.patient_id for s in outlined}) < 3:
        raise UserInputError(f"{cohort_dir}: {len(outlined)} outlined patient(s) are too few to train and early-stop "
                             "a segmenter; outline at least 3 patients")
    regions = regions or {}
    gland_outlines = {p: r for p, r in regions.items() if r.has_glands} or cohort_gland_regions(cohort)
    learn_glands = config.learn_glands and bool(outlined) and all(s.patient_id in gland_outlines for s in outlined)
    patch = patch_zyx(config)
    difference = difference_pair(phases, config)
    rng = np.random.default_rng([config.seed, 11])
    train_examples, refine_train, refine_val, val_volumes, val_scans, spacings = [], [], [], [], [], []
    for scan, is_val in track(list(zip(outlined, held)), "reading scans", total=len(outlined), enabled=progress):
        region = regions.get(scan.patient_id)
        volume = load_scan(scan, phases, config, with_target=True, region=region,
                           glands=gland_outlines.get(scan.patient_id) if learn_glands and not is_val else None)
        spacings.append(volume.native_spacing_mm)
        if config.refine:
            crops = training_crops(volume.phase_images, volume.lesion_masks, volume.reference, config, rng,
                                   jitter=not is_val, difference=difference)
            (refine_val if is_val else refine_train).extend(crops)
        if is_val:
            val_volumes.append(volume)
            val_scans.append(scan)
        else:
            glands = gland_target(volume.glands, config.spacing_mm, config.gland_target_margin_mm) \
                if learn_glands else None
            train_examples.append(_training_example(volume.image, volume.target, patch, rng, glands))
            volume.phase_images.clear()

    run_key = _run_key(config, outlined, held)
    checkpoint = out.parent / f".{out.name}.checkpoint.pt"
    refiner_checkpoint = out.parent / f".{out.name}.checkpoint-refiner.pt"
    transform = training_transforms(config, glands=learn_glands)
    volumes_per_step = max(1, config.batch_size // config.patches_per_volume)

    def detector_batch(generator: np.random.Generator):
        chosen = generator.choice(len(train_examples), volumes_per_step,
                                  replace=len(train_examples) < volumes_per_step)
        return _batch(train_examples, chosen, transform, config, generator)

    def detector_score(network: torch.nn.Module) -> float:
        return float(np.mean([_scan_dice(probability_map(network, v.image, config, torch_device)[0], v.target,
                                         config.voxel_threshold) for v in val_volumes]))

    detector = _fit("detector", len(phases), 3 if learn_glands else 2, config, config.epochs, detector_batch,
                    detector_score, transform,
                    checkpoint, run_key, torch_device, progress, on_epoch, group)
    refiner = None
    if config.refine:
        def refiner_batch(generator: np.random.Generator):
            chosen = generator.choice(len(refine_train), config.batch_size, replace=len(refine_train) <
                                      config.batch_size)
            return _batch([{"image": refine_train[i][0], "label": refine_train[i][1][None]} for i in chosen],
                          np.arange(len(chosen)), None, config, generator)

        def refiner_score(network: torch.nn.Module) -> float:
            network.eval()
            with torch.no_grad():
                scores = []
                for image, target in refine_val:
                    logits = network(as_channels_last(torch.from_numpy(image.astype(np.float32))[None]
                                                      .to(torch_device)))
                    scores.append(_scan_dice(torch.softmax(logits.float(), 1)[0, 1].cpu().numpy(), target,
                                             config.voxel_threshold))
            return float(np.mean(scores))

        refiner = _fit("refiner", refiner_channels(phases, config), 2, config, config.refine_epochs, refiner_batch,
                       refiner_score,
                       None, refiner_checkpoint, run_key,
                       torch_device, progress, on_epoch, group)
    group.close()
    if not group.leader:
        return None

    detection = DetectionRecord()
    lesion_dice = []
    for scan, volume in zip(val_scans, val_volumes):
        found = segment_scan(detector.network, refiner.network if refiner else None, volume, config, torch_device,
                             phases)
        masks = volume.lesion_masks
        detection.add_scan(found.labels, {c.label: c.probability for c in found.components}, list(masks))
        queries = lesion_queries(scan)
        found, matched = match_table_lesions(refiner.network if refiner else None, volume, found, queries,
                                             config.match_min_probability or 0.0, config, torch_device, phases)
        spacing_zyx = tuple(reversed(volume.reference.GetSpacing()))
        for mask, match in zip(masks, matched):
            lesion_dice.append(overlap_metrics(found.labels == match.label if match.label else np.zeros_like(mask),
                                               mask, spacing_zyx)["dice"])
    threshold = detection.operating_threshold(config.max_false_positives_per_scan, config.voxel_threshold)
    sensitivity, fp_per_scan = detection.at(threshold)
    spacing_array = np.array(spacings)
    figures = {
        "training_patients": len({s.patient_id for s, h in zip(outlined, held) if not h}),
        "early_stopping_patients": len({s.patient_id for s, h in zip(outlined, held) if h}),
        "centres": sorted({s.centre for s in outlined}),
        "epochs_run": detector.epochs_run, "best_epoch": detector.best_epoch,
        "early_stopping_scan_dice": detector.best_score,
        "refiner": None if refiner is None else {"epochs_run": refiner.epochs_run, "best_epoch": refiner.best_epoch,
                                                 "early_stopping_crop_dice": refiner.best_score,
                                                 "training_crops": len(refine_train)},
        "early_stopping_lesion_dice": summarise(lesion_dice),
        "operating_point": {"threshold": threshold, "sensitivity": sensitivity, "fp_per_scan": fp_per_scan},
        "device": str(torch_device), "minutes": (time.perf_counter() - started) / 60,
        "peak_memory_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "resumed_from_epoch": detector.resumed_from_epoch, "skipped_scans_without_masks": skipped,
        "learned_glands": learn_glands,
        "gland_outlines": "given by --region" if learn_glands and any(r.has_glands for r in regions.values())
        else f"{cohort.root / GLANDS_FOLDER}" if learn_glands else None,
    }
    history = {"detector": detector.history, "refiner": refiner.history if refiner else []}
    network = detector.network
    segmenter = Segmenter(network, config, phases, (spacing_array.min(axis=0).tolist(),
                                                    spacing_array.max(axis=0).tolist()),
                          threshold, {"training": figures, "history": history, "cohort": str(cohort.spec.name)},
                          refiner.network if refiner else None)
    segmenter.save(out, overwrite=overwrite)
    checkpoint.unlink(missing_ok=True)
    refiner_checkpoint.unlink(missing_ok=True)
    return SegmenterRun(segmenter, out, figures, skipped)
