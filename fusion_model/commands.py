"""`fusion-model train`, `predict` and `demo`: the pipeline's commands and their console output."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fusion_model.console import (
    CacheOption,
    SchedulerOption,
    WorkersOption,
    ci_text,
    console,
    fmt_auc,
    labelled,
    macro_text,
)
from fusion_model.evaluate.commands import small_classes_text

app = typer.Typer()

DEFAULT_DEMO_DIR = Path("reports/demo")


def _print_training_summary(run) -> None:
    from fusion_model.registry import FUSION_METHODS

    model = run.model
    table = Table(title="out-of-fold AUC on the training lesions")
    methods = [m for m in FUSION_METHODS if m.reported or any(m.name in fit.oof_auc for fit in model.variants_.values())]
    margins = [m.name for m in methods]
    for column in ["model", "method", "OOF AUC"] + [m.label for m in methods]:
        table.add_column(column)
    for variant, fit in model.variants_.items():
        learner = fit.learner.replace("_", " ") if fit.learner else None
        method = fit.fusion_method.label + (f" ({learner})" if learner else "") + \
            (" chosen by nested CV" if fit.selection else "")
        table.add_row(variant, method, fmt_auc(fit.score_oof_auc), *(fmt_auc(fit.oof_auc.get(m)) for m in margins))
    blank = [""] * len(margins)
    for rule, auc in model.baseline_oof_auc_.items():
        table.add_row(f"rule {rule}", "guideline rule", fmt_auc(auc), *blank)
    if run.oracle_auc is not None:
        table.add_row("oracle (truth.csv)", "generator's true risk", fmt_auc(run.oracle_auc), *blank)
    console.print(table)
    if run.test_auc:
        console.print("held-out test AUC: " + ", ".join(f"{k} {fmt_auc(v)}" for k, v in run.test_auc.items()))
    info = model.subtype_info_
    if info:
        types = info.lesion_types
        lesions = sum(types.counts.values())
        left = ", ".join(f"{n} {why}" for why, n in types.left_out.items() if n) or "none"
        console.print(f"lesion-type heads: {lesions} lesions of {len(types.classes)} classes ("
                      + ", ".join(f"{c} {n}" for c, n in types.counts.items()) + f"); left out: {left}"
                      + (f"; 'rare' holds {', '.join(types.merged)}" if types.merged else ""))
        console.print("lesion-type out-of-fold macro AUC (95% CI): " + ", ".join(
            f"{v} {macro_text(a['macro'], a.get('macro_ci95'))}" for v, a in info.oof_auc.items())
            + small_classes_text(next(iter(info.oof_auc.values()), {}).get("small_classes")))


@app.command()
def train(
    config: Annotated[Path, typer.Option("--config", help="experiment YAML (see experiments/)")],
    cohort: Annotated[Path, typer.Option("--cohort", help="labelled cohort directory")],
    out: Annotated[Path, typer.Option("--out", help="model artifact directory to create, e.g. runs/NAME")],
    test_centre: Annotated[str | None, typer.Option("--test-centre", help="hold this centre out as "
                                                                             "external test")] = None,
    cache: CacheOption = None,
    strict: Annotated[bool, typer.Option("--strict", help="stop at the first unreadable lesion")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    device: Annotated[str, typer.Option("--device", help="where the encoder trains: cpu (the default), cuda "
                                                         "(mixed precision) or auto (CUDA when present)")] = "cpu",
    workers: WorkersOption = None,
    scheduler: SchedulerOption = None,
) -> None:
    """Train the encoder, the heads of every variant and the calibration; write a model artifact."""
    from fusion_model.config import load_experiment

    experiment = load_experiment(config)  # a bad config is answered before torch is loaded
    from fusion_model.imaging.cache import ImageCache
    from fusion_model import pipeline
    from fusion_model.engine import Engine, EngineSettings

    with Engine(EngineSettings(workers, scheduler)) as engine:
        run = pipeline.train(experiment, cohort, out, ImageCache.at(cache), test_centre=test_centre, strict=strict,
                             overwrite=overwrite, device=device, engine=engine)
    for error in run.errors:
        labelled("unreadable", "red", f" lesion {error.lesion_id} (row {error.row}): {error.message}")
    for note in run.notes[:20]:
        labelled("note", "yellow", f": {note}")
    _print_training_summary(run)
    console.print(f"model written to {out}")


@app.command()
def predict(
    model: Annotated[Path, typer.Option("--model", help="model artifact directory (from train)")],
    cohort: Annotated[Path, typer.Option("--cohort", help="cohort directory; labels not needed")],
    out: Annotated[Path, typer.Option("--out", help="predictions CSV to write")],
    cache: CacheOption = None,
    strict: Annotated[bool, typer.Option("--strict")] = False,
    all_variants: Annotated[bool, typer.Option("--all-variants", help="type probabilities of every variant, "
                                                                      "not only the primary's")] = False,
    workers: WorkersOption = None,
    scheduler: SchedulerOption = None,
) -> None:
    """Malignancy probability per lesion (every variant, and the guideline rules) and, for a model with subtype
    heads, the probability of each lesion type, as CSV."""
    from fusion_model.prechecks import check_scoring_inputs

    check_scoring_inputs(model, cohort)  # answered before the network libraries load
    from fusion_model.imaging.cache import ImageCache
    from fusion_model import pipeline
    from fusion_model.engine import Engine, EngineSettings

    with Engine(EngineSettings(workers, scheduler)) as engine:
        predictions, errors = pipeline.predict(model, cohort, out, ImageCache.at(cache), strict=strict,
                                               all_variants=all_variants, engine=engine)
    if not any(c.startswith("p_type_") for c in predictions.columns):
        console.print("no lesion-type probabilities (p_type_*): this model has no subtype heads; train it with "
                      "'targets: [malignancy, lesion_type]' in the experiment to add them")
    for error in errors:
        labelled("not predicted", "red", f": lesion {error.lesion_id} (row {error.row}): {error.message}")
    console.print(f"wrote {out}: {len(predictions)} lesions predicted, {len(errors)} not"
                  + (f" (see {out.with_name(out.stem + '_errors.csv')})" if errors else ""))


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="where the demo writes its cohort, model and reports")] = DEFAULT_DEMO_DIR,
    patients: Annotated[int, typer.Option(help="synthetic patients (about a third at the external centre)")] = 210,
    seed: Annotated[int, typer.Option()] = 0,
    epochs: Annotated[int | None, typer.Option(help="encoder epochs (default: the demo experiment's 25)")] = None,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples for the AUC CIs")] = 2000,
    device: Annotated[str, typer.Option("--device", help="where the encoder trains: cpu (the default), cuda "
                                                         "(mixed precision) or auto (CUDA when present)")] = "cpu",
) -> None:
    """The main job end to end: synthesise, validate, train, evaluate on an external centre, explain, and
    measure how much the answers depend on the outline (a simulated second reader)."""
    from fusion_model.demo import demo_experiment, run_demo

    overrides = {"encoder": {"epochs": epochs}} if epochs else None
    summary = run_demo(out, patients=patients, seed=seed, experiment=demo_experiment(overrides), bootstrap=bootstrap,
                       console=console, device=device)
    table = Table(title=f"external centre {summary['external_centre']}: {summary['lesions']['external']} lesions "
                        f"(trained on {summary['lesions']['training']})")
    for column in ("model", "kind", "AUC", "95% CI (DeLong, logit)", "95% CI (bootstrap)"):
        table.add_column(column)
    for name, h in summary["external_auc"].items():
        table.add_row(name, h["kind"], fmt_auc(h["auc"]), ci_text(h["ci"]), ci_text(h["bootstrap_ci"]))
    oracle = summary["external_oracle_auc"]
    if oracle:
        table.add_row("oracle", "generator's true risk", fmt_auc(oracle["value"]), ci_text(oracle["ci"]), "")
    console.print(table)
    subtype = summary.get("external_subtype")
    if subtype:
        console.print(f"lesion type on {subtype['lesions']} external lesions ({len(subtype['classes'])} classes): macro "
                      "AUC (95% CI) " + ", ".join(f"{v} {macro_text(a, subtype['macro_auc_ci95'][v])}"
                                                  for v, a in subtype["macro_auc"].items())
                      + f", oracle {macro_text(subtype['oracle_macro_auc'], subtype['oracle_macro_auc_ci95'])}; "
                      "top-1 accuracy " + ", ".join(f"{v} {a:.0%}" for v, a in subtype["top1_accuracy"].items())
                      + small_classes_text(subtype["small_classes"]))
    a = summary["agreement"]
    console.print(f"reader agreement on {a['lesions']} external lesions: Dice {a['dice_mean']:.3f}; {a['variant']} "
                  f"probability ICC {fmt_auc(a['probability_icc'])}, mean |dp| {a['mean_absolute_difference']:.3f}, "
                  f"{a['class_flips']} class flip(s); AUC {fmt_auc(a['auc_first'])} (first reader) vs "
                  f"{fmt_auc(a['auc_second'])} (second reader)")
    seconds = summary["seconds"]
    console.print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
                  + f" (encoder on {summary['device']})")
    console.print("outputs:")
    for name, path in summary["outputs"].items():
        console.print(f"  {name}: {path}")
    console.print(f"  summary: {out / 'demo_summary.json'}")
