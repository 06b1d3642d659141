"""`fusion-model evaluate`: a model's (or prediction files') ROC report and its console summary."""

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
from fusion_model.errors import UserInputError


app = typer.Typer()


def _print_evaluation(result) -> None:
    metrics = result.metrics
    table = Table(title=f"evaluation: {metrics['cohort']['lesions']} lesions, {metrics['cohort']['malignant']} malignant")
    shown = f"95% CI ({metrics['settings']['auc_ci_shown_description']})"
    for column in ("model", "kind", "AUC", shown, "95% CI (bootstrap)", "sens / spec at", "Brier"):
        table.add_column(column)
    for name, m in metrics["models"].items():
        if not m.get("auc"):
            table.add_row(name, m["kind"], "-", m.get("note", ""), "", "", "")
            continue
        point = m["operating_points"][0]
        sens, spec = point["sensitivity"]["value"], point["specificity"]["value"]
        table.add_row(name, m["kind"], fmt_auc(m["auc"]["value"]),
                      ci_text(m["auc"]["ci"]), ci_text(m["auc"]["bootstrap_ci"]),
                      f"{sens:.0%} / {spec:.0%} ({point['name']})",
                      fmt_auc(m["calibration"]["brier"]) if m.get("calibration") else "-")
    if metrics.get("oracle"):
        oracle = metrics["oracle"]["auc"]
        table.add_row("oracle", "generator's true risk", fmt_auc(oracle["value"]), ci_text(oracle["ci"]), "", "",
                      "")
    console.print(table)
    for name, m in metrics["models"].items():
        if m.get("auc") and m["auc"].get("note"):
            labelled("note", "yellow", f": {name}: {m['auc']['note']}")
    unscored = metrics.get("unscored")
    if unscored and unscored.get("as_missed"):
        labelled("unscored", "yellow", f": {unscored['count']} lesion(s) without a score ("
                 + ", ".join(f"{n} {k}" for k, n in unscored["by_label"].items()) + "); AUC with them counted as "
                 "missed: " + ", ".join(f"{name} {a['auc_all_unscored_missed']:.3f} (scored only "
                                        f"{a['auc_scored']:.3f})" for name, a in unscored["as_missed"].items()))
    for entry in metrics.get("not_evaluated", []):
        labelled("not evaluated", "red", f": lesion {entry['lesion_id']} (row {entry['row']}): {entry['message']}")
    subtype = metrics.get("subtype")
    if subtype and subtype.get("variants"):
        oracle = subtype.get("oracle")
        console.print(f"lesion type ({subtype['lesions']} lesions, {len(subtype['classes'])} classes): macro AUC "
                      "(95% CI) " + ", ".join(f"{v} {macro_text(b['macro_auc'], b.get('macro_auc_ci95'))}"
                                              for v, b in subtype["variants"].items())
                      + (f", oracle {macro_text(oracle['macro_auc'], oracle.get('macro_auc_ci95'))}" if oracle else "")
                      + "; top-1 accuracy " + ", ".join(f"{v} {b['top1_accuracy']:.0%}"
                                                        for v, b in subtype["variants"].items())
                      + small_classes_text(next(iter(subtype["variants"].values()))["small_classes"]))
    console.print(f"report: {result.out / 'report.html'} (also metrics.json, predictions.csv, "
                  f"{', '.join(f for f in result.files if f.endswith('.png'))})")



def small_classes_text(small: dict | None) -> str:
    """The lesion types too small for a stable one-vs-rest AUC, e.g. '; noisy: fewer than 10 lesions of cyst (2),
    pheochromocytoma (3)'."""
    if not small:
        return ""
    from fusion_model.heads.subtype import SMALL_CLASS_LESIONS

    return (f"; noisy (fewer than {SMALL_CLASS_LESIONS} lesions, one lesion moves the AUC): "
            + ", ".join(f"{c} ({n})" for c, n in small.items()))

@app.command()
def evaluate(
    files: Annotated[list[Path] | None, typer.Argument(help="with --predictions: prediction CSVs (lesion_id, "
                                                               "label, a score per model)", show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", help="report folder to write, e.g. reports/NAME")] = Path("reports/evaluation"),
    model: Annotated[Path | None, typer.Option("--model", help="model artifact directory (from train)")] = None,
    cohort: Annotated[Path | None, typer.Option("--cohort", help="labelled cohort directory")] = None,
    predictions: Annotated[bool, typer.Option("--predictions", help="evaluate the prediction CSVs given as "
                                                                    "arguments instead of a model")] = False,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples for the AUC and calibration CIs")] = 2000,
    seed: Annotated[int, typer.Option(help="bootstrap seed")] = 0,
    auc_ci: Annotated[str, typer.Option("--auc-ci", help="the AUC interval shown: logit (logit-transformed DeLong, "
                                                         "inside 0-1) or wald (AUC +/- 1.96 SE)")] = "logit",
    cache: CacheOption = None,
    centre: Annotated[str | None, typer.Option("--centre", help="evaluate only this centre's lesions (e.g. the "
                                                                   "centre held out with train --test-centre)")] = None,
    split: Annotated[str | None, typer.Option("--split", help="evaluate only lesions of this split (the "
                                                                 "cohort's split column, e.g. val)")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="stop at the first unreadable lesion")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing report folder")] = False,
    workers: WorkersOption = None,
    scheduler: SchedulerOption = None,
) -> None:
    """ROC report of a model on a labelled cohort (or of saved prediction files): HTML, JSON, CSV, PNG."""
    if bootstrap < 200:
        raise UserInputError(f"--bootstrap {bootstrap}: use at least 200 resamples (2000 or more for a report)")
    if not (predictions or files):
        if not model or not cohort:
            raise UserInputError("give --model and --cohort (or --predictions a.csv b.csv ...)")
        from fusion_model.prechecks import check_scoring_inputs

        # answered before the report's and the network libraries load
        check_scoring_inputs(model, cohort, out, overwrite, require_label=True, centre=centre, split=split)
    from fusion_model.imaging.cache import ImageCache
    from fusion_model.evaluate.metrics import EvaluationSettings
    from fusion_model.evaluate.run import evaluate_model, evaluate_predictions

    settings = EvaluationSettings(bootstrap_resamples=bootstrap, seed=seed, auc_interval=auc_ci)
    if predictions or files:
        if not predictions:
            raise UserInputError("prediction files given without --predictions; write "
                                 "'fusion-model evaluate --predictions a.csv b.csv --out DIR'")
        if model or centre or split:
            raise UserInputError("--predictions evaluates the files as they are; --model, --centre and --split do not apply")
        if not files:
            raise UserInputError("--predictions needs at least one CSV file after it")
        result = evaluate_predictions(files, out, cohort, settings, overwrite=overwrite)
    else:
        from fusion_model.engine import Engine, EngineSettings

        with Engine(EngineSettings(workers, scheduler)) as engine:
            result = evaluate_model(model, cohort, out, ImageCache.at(cache), settings, strict=strict,
                                    overwrite=overwrite, centre=centre, split=split, engine=engine)
    _print_evaluation(result)
