"""Which torch device the networks train on: ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``."""

from __future__ import annotations

import torch

from fusion_model.errors import UserInputError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto``: CUDA when present, else CPU; ``cuda`` without a GPU, or another name, is refused."""
    name = str(device)
    if name not in DEVICES and not name.startswith("cuda:"):
        raise UserInputError(f"--device {name!r}: choose one of {', '.join(DEVICES)}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(f"--device {name}: no CUDA device is visible to torch here (torch {torch.__version__}, "
                             f"CUDA build: {torch.version.cuda or 'none'}); use --device auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
