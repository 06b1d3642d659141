"""`fusion-model pretrain-encoder`: pre-train an experiment's encoder and write its weight file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fusion_model.console import console


app = typer.Typer()


@app.command("pretrain-encoder")
def pretrain_encoder_command(
    config: Annotated[Path, typer.Option("--config", help="the experiment YAML whose network and crops to "
                                                          "pre-train (its encoder and preprocess sections)")],
    out: Annotated[Path, typer.Option("--out", help="weight file to write (*.safetensors); give it to the "
                                                    "experiment as encoder.pretrained")],
    phase: Annotated[list[str] | None, typer.Option("--phase", help="a CT phase of the cohort's crops, once per "
                                                                    "phase; none: mask-only crops")] = None,
    outline: Annotated[str, typer.Option("--outline", help="lesion (masks outline the lesion) or gland (the whole "
                                                           "gland with its lesion, as in AdrenalMNIST3D)")] = "lesion",
    examples: Annotated[int, typer.Option("--examples", help="lesions to draw")] = 2000,
    epochs: Annotated[int, typer.Option("--epochs")] = 8,
    normal_fraction: Annotated[float, typer.Option("--normal-fraction", help="gland: share without a lesion")] = 0.5,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    workers: Annotated[int, typer.Option("--workers", help="processes drawing lesions (0: up to 2)")] = 0,
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu (the default), cuda (mixed precision) or "
                                                         "auto")] = "cpu",
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
) -> None:
    """Pre-train an experiment's encoder on generator-drawn lesions (size, shape, attenuation, enhancement, texture,
    type and malignancy) and write the weight file that encoder.pretrained fine-tunes from."""
    from fusion_model.config import PretrainConfig, load_experiment
    from fusion_model.configbase import parse_model
    from fusion_model.encoder.pretrain import pretrain_encoder
    from fusion_model.encoder.weights import check_output, save_pretrained

    experiment = load_experiment(config)
    settings = parse_model(PretrainConfig, {
        "phases": phase or [], "outline": outline, "examples": examples, "epochs": epochs,
        "normal_fraction": normal_fraction, "seed": seed, "workers": workers, "threads": threads}, "pretrain-encoder")
    check_output(out, overwrite)  # before the work, not after it
    result = pretrain_encoder(experiment, settings, device=device)
    save_pretrained(result.model, result.metadata, out, overwrite=overwrite)
    f = result.figures
    table = Table(title=f"held-out draws ({f['held_out_examples']}; trained on {f['training_examples']})")
    table.add_column("target")
    table.add_column("figure")
    for name, value in f["r2"].items():
        table.add_row(name, "n/a" if value is None else f"R2 {value:.3f}")
    for name, value in f["auc"].items():
        table.add_row(name, "n/a" if value is None else f"AUC {value:.3f}")
    table.add_row("type", f"accuracy {f['type_accuracy']:.3f} (most common type {f['type_accuracy_majority']:.3f})")
    console.print(table)
    console.print(f"{f['minutes']:.1f} min on {f['device']}; wrote {out} (set encoder.pretrained: {out})")
