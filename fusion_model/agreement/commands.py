"""`fusion-model agreement`: two readers' (or perturbed) outlines compared, with the model's stability."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fusion_model.console import SchedulerOption, WorkersOption, console, labelled
from fusion_model.errors import UserInputError


app = typer.Typer()


@app.command()
def agreement(
    cohort: Annotated[Path, typer.Option("--cohort", help="cohort directory with two readers' masks (mask_path and "
                                                          "mask_path_b), or any outlined cohort with --perturb")],
    out: Annotated[Path, typer.Option("--out", help="report folder, e.g. reports/agreement")],
    model: Annotated[Path | None, typer.Option("--model", help="model artifact: also compare its answers")] = None,
    masks_b: Annotated[Path | None, typer.Option("--masks-b", help="folder of the second reader's masks, named as "
                                                                   "the mask_path files (instead of mask_path_b)")] = None,
    perturb: Annotated[bool, typer.Option("--perturb", help="no second reader: compare each outline with itself "
                                                            "eroded/dilated by 1 and 2 voxels and smoothly perturbed")] = False,
    contour_dice: Annotated[float, typer.Option("--contour-dice", help="Dice of the smooth perturbation")] = 0.90,
    seed: Annotated[int, typer.Option(help="random seed of the perturbations")] = 0,
    centre: Annotated[str | None, typer.Option("--centre", help="compare the lesions of this centre only")] = None,
    resample: Annotated[bool, typer.Option("--resample", help="resample second masks on another grid onto the CT")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    workers: WorkersOption = None,
    scheduler: SchedulerOption = None,
) -> None:
    """Reader agreement: Dice/HD95 of the two outlines, feature ICCs, Bland-Altman and the model's stability."""
    from fusion_model.agreement.run import AgreementSettings, run_agreement
    from fusion_model.engine import Engine, EngineSettings

    if perturb and masks_b is not None:
        raise UserInputError("--perturb compares each outline with perturbed copies of itself; leave out --masks-b")
    with Engine(EngineSettings(workers, scheduler)) as engine:
        result = run_agreement(cohort, out, AgreementSettings(masks_b_dir=masks_b, perturb=perturb,
                                                              contour_dice=contour_dice, seed=seed, resample=resample,
                                                              centre=centre),
                               model_dir=model, overwrite=overwrite, engine=engine)
    m = result.metrics
    table = Table(title=f"agreement on {m['cohort_name']} ({m['lesions_compared']} lesions compared)")
    columns = ["comparison", "Dice mean (SD)", "Dice range", "features ICC(2,1) < 0.75"]
    if model is not None:
        columns += [f"{m['primary_variant']}: prob. ICC", "mean |dp|", "class flips", "AUC first -> other (p)"]
    for column in columns:
        table.add_column(column)
    for b in m["comparisons"]:
        d = b["segmentation"]["dice"]
        row = [b["title"], f"{d['mean']:.3f} ({d['sd']:.3f})", f"{d['min']:.3f}-{d['max']:.3f}",
               str(len(b["features_below_0.75"]))]
        if model is not None:
            p = b["model"][m["primary_variant"]]
            icc = p["icc"]["icc2_1"]
            auc = p.get("auc")
            row += ["-" if icc is None else f"{icc['icc']:.3f}", f"{p['mean_absolute_difference']:.3f}",
                    str(p["flips"]), "-" if not auc else
                    f"{auc['a']:.3f} -> {auc['b']:.3f} ({'-' if auc['p_value'] is None else format(auc['p_value'], '.3f')})"]
        table.add_row(*row)
    console.print(table)
    if m["read_once"]:
        labelled(f"{len(m['read_once'])} lesion(s) with one outline only, not compared", "yellow",
                 " (listed in the report): " + ", ".join(r["lesion_id"] for r in m["read_once"][:20]))
    console.print(f"{m['seconds']:.1f} s; wrote {out / 'report.html'}")
