"""One small training loop for every network the project trains: the image encoder, its pre-training and the
segmenter (in the spirit of MONAI's engine / handler split: the loop owns what all three share, each caller
its batches, losses and what it keeps).

What the loop owns: the device and mixed precision (float16 autocast and gradient scaling on CUDA; bfloat16
autocast on CPU when asked, no scaling needed), the
optimiser step (zero, backward, step, scheduler, then the caller's ``after_step`` hooks), reseeding at every
epoch from (seed, epoch, salt) so that an epoch draws the same batches and augmentations whether the run was
interrupted or not, the per-epoch checkpoint and its resumption under a run key, and the progress bar.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fusion_model.checkpoints import resume_checkpoint, save_checkpoint
from fusion_model.progress import track


@dataclass
class EpochRandom:
    """An epoch's random sources, drawn from (seed, epoch, salt) alone: ``generator`` for the batch order and
    choices, ``augmentation_seed`` for the augmentation (torch's global generator, for dropout, is reseeded
    too)."""

    generator: np.random.Generator
    augmentation_seed: int


@dataclass
class TrainingLoop:
    """The shared part of training one network; the caller iterates :meth:`epochs` and calls :meth:`step`."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    seed: int
    salt: tuple[int, ...] = ()                       # tells apart loops of one run (the segmenter's two stages)
    checkpoint: Path | None = None
    run_key: str = ""                                # hashes everything that shapes the run
    refuse_other_runs: bool = True                   # a checkpoint of another run: refuse (or start afresh)
    progress: bool = True
    description: str = "training"
    after_step: list[Callable[[], None]] = field(default_factory=list)  # e.g. a moving average of the weights
    cpu_bfloat16: bool = False                       # bfloat16 autocast on CPU (see cpu_bfloat16_supported)

    def __post_init__(self) -> None:
        self.cuda = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.cuda)

    def autocast(self):
        """Mixed precision: float16 on CUDA, bfloat16 on CPU when ``cpu_bfloat16``; full precision otherwise."""
        if not self.cuda and self.cpu_bfloat16:
            return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
        return torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.cuda)

    def step(self, loss: torch.Tensor) -> None:
        """One optimiser step on ``loss`` (scaled on CUDA), the scheduler's step, then the ``after_step`` hooks."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        for hook in self.after_step:
            hook()

    def resume(self, state: dict) -> dict | None:
        """The loop state of this run's checkpoint (model, optimiser and scheduler restored), or None."""
        return resume_checkpoint(self.checkpoint, self.run_key, self.model, self.optimizer, self.scheduler, state,
                                 refuse_other_runs=self.refuse_other_runs)

    def save(self, state: dict) -> None:
        """The epoch's checkpoint (when the loop has a checkpoint file)."""
        if self.checkpoint is not None:
            save_checkpoint(self.checkpoint, self.run_key, self.model, self.optimizer, self.scheduler, state)

    def epochs(self, first: int, stop: int, should_stop: Callable[[], bool] | None = None
               ) -> Iterator[tuple[int, EpochRandom]]:
        """Epochs ``first`` .. ``stop - 1`` with a progress bar, each with its random sources, the model in
        training mode; ``should_stop()`` (early stopping) is asked before each epoch draws anything."""
        remaining = range(first, stop)
        for epoch in track(remaining, self.description, total=len(remaining), enabled=self.progress):
            if should_stop is not None and should_stop():
                break
            self.model.train()
            generator = np.random.default_rng([self.seed, epoch, *self.salt])
            augmentation_seed = int(generator.integers(2**31 - 1))
            torch.manual_seed(int(generator.integers(2**31 - 1)))  # dropout
            yield epoch, EpochRandom(generator, augmentation_seed)


def cpu_bfloat16_supported() -> bool:
    """Whether this CPU runs bfloat16 natively (oneDNN's check: AVX512-BF16 or AMX); elsewhere bfloat16 is
    emulated and slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place among the data-parallel processes that train one network together (torchrun's
    ``RANK`` / ``WORLD_SIZE``): rank 0 (the leader) validates, writes checkpoints and the result; one process
    alone is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1

    @property
    def leader(self) -> bool:
        """Rank 0."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the processes (``value`` itself for one)."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def from_leader(self, value):
        """The leader's ``value`` on every process (a picklable object)."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        """Leave the group (after the last collective call)."""
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def join_process_group(device: torch.device) -> tuple[ProcessGroup, torch.device]:
    """The data-parallel group torchrun started this process in (NCCL on CUDA, each process on the GPU of its
    ``LOCAL_RANK``; gloo on the CPU), or a group of one when it was not started by torchrun."""
    import os

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return ProcessGroup(), device
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            from fusion_model.errors import UserInputError

            raise UserInputError(f"process {local_rank} of {world_size} has no GPU: {torch.cuda.device_count()} "
                                 "visible; start as many processes as GPUs (--gpus N, or torchrun "
                                 "--nproc_per_node N)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return ProcessGroup(rank, world_size), device
