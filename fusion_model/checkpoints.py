"""Per-epoch training checkpoints, shared by the image encoder and the segmenter.

A checkpoint holds the network, optimiser and scheduler states and the loop's own state (epoch, best score,
history...), under a run key that hashes everything that shapes the run (settings, data, split). A run started
again with the same key resumes from it; a checkpoint of another run is refused or ignored, as the caller says.
Written atomically, so a kill during the write leaves the previous epoch's checkpoint.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from fusion_model.errors import UserInputError
from fusion_model.fileio import atomic_write


def save_checkpoint(path: Path, run_key: str, model: torch.nn.Module, optimizer, scheduler, state: dict) -> None:
    """Write the run's checkpoint (atomically)."""
    payload = {"run_key": run_key, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "scheduler": scheduler.state_dict(), **state}
    atomic_write(Path(path), functools.partial(torch.save, payload))


def resume_checkpoint(path: Path | None, run_key: str, model: torch.nn.Module, optimizer, scheduler, state: dict,
                      refuse_other_runs: bool = True) -> dict | None:
    """Restore model, optimiser and scheduler from ``path`` and return the loop state saved with them (the keys
    of ``state``), or None when there is no checkpoint of this run (one of another run is refused, or ignored
    without ``refuse_other_runs``)."""
    if path is None or not Path(path).is_file():
        return None
    saved = torch.load(path, weights_only=True, map_location="cpu")
    if saved.get("run_key") != run_key:
        if refuse_other_runs:
            raise UserInputError(f"{path}: checkpoint of a different training run (other config, data or split); "
                                 "delete it or use another checkpoint folder")
        return None
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return {k: saved[k] for k in state}
