"""The `fusion-model` command line: thin wrappers over the library's API.

User errors (:class:`fusion_model.errors.FusionModelError`) print one line and exit 2.
Heavy libraries are imported inside the commands so that `--help` stays fast.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fusion_model.errors import FusionModelError, FusionModelWarning, UserInputError

app = typer.Typer(
    name="fusion-model",
    help="CT + clinical fusion models for adrenal lesion malignancy risk (a research tool, not a medical device).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# No console markup: user and experiment text (file names, messages, "targets: [malignancy, lesion_type]") is
# printed as written; colour comes from Text styles (_labelled), never from square brackets in a string.
console = Console(soft_wrap=True, markup=False)
if not console.is_terminal:
    console.width = 160  # logs and pipes: keep tables readable
err_console = Console(stderr=True, markup=False)


def _labelled(label: str, style: str, text: str = "", out: Console | None = None) -> None:
    """One line: ``label`` in ``style``, then ``text`` exactly as written."""
    (out or console).print(Text.assemble((label, style), text))

DEFAULT_DEMO_DIR = Path("reports/demo")


def _print_summary(summary: dict) -> None:
    table = Table(title=f"cohort {summary.get('name', '')}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("lesions", str(summary["lesions"]))
    table.add_row("patients", str(summary["patients"]))
    table.add_row("centres", ", ".join(f"{k}: {v}" for k, v in summary["centres"].items()))
    if "class_balance" in summary:
        cb = summary["class_balance"]
        share = cb["malignant"] / max(1, cb["benign"] + cb["malignant"])
        table.add_row("label", summary["label_meaning"])
        table.add_row("class balance", f"0: {cb['benign']}, 1: {cb['malignant']} ({share:.0%} label 1)"
                      + (f", unlabelled {cb['unlabelled']}" if cb["unlabelled"] else ""))
        table.add_row("malignant by centre", ", ".join(f"{k}: {v}" for k, v in summary["malignant_by_centre"].items()))
    if "lesion_types" in summary:
        table.add_row("lesion types", ", ".join(f"{k}: {v}" for k, v in summary["lesion_types"].items()))
    if "splits" in summary:
        table.add_row("splits", ", ".join(f"{k}: {v}" for k, v in summary["splits"].items()))
    table.add_row("phases (lesions with file)", ", ".join(f"{k}: {v}" for k, v in summary["phases"].items()))
    if summary.get("mask_sources"):
        table.add_row("masks", ", ".join(f"{k}: {v}" for k, v in summary["mask_sources"].items()))
    if "second_reader_masks" in summary:
        table.add_row("second reader's masks", str(summary["second_reader_masks"]))
    missing = {k: v for k, v in summary["missing_percent"].items() if v > 0}
    table.add_row("missing (% of lesions)", ", ".join(f"{k}: {v:g}%" for k, v in missing.items()) or "none")
    console.print(table)


def _print_problems(problems, limit: int = 200) -> None:
    if not problems:
        return
    table = Table(title=f"{len(problems)} problem(s)", show_lines=False)
    for column in ("severity", "where", "problem"):
        table.add_column(column, overflow="fold")
    for p in problems[:limit]:
        style = "red" if p.severity == "error" else "yellow"
        table.add_row(Text(p.severity, style=style), p.where, p.message)
    console.print(table)
    if len(problems) > limit:
        console.print(f"... and {len(problems) - limit} more (use --json to get them all)")


@app.command()
def validate(
    cohort: Annotated[Path, typer.Argument(help="cohort directory (cohort.json, clinical.csv, images, masks)")],
    require_labels: Annotated[bool, typer.Option("--require-labels", help="every lesion must have a label")] = False,
    resample: Annotated[bool, typer.Option("--resample", help="accept phases/masks on different grids "
                                                              "(they will be resampled onto the reference phase)")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write summary and problems as JSON")] = None,
    masks_b: Annotated[Path | None, typer.Option("--masks-b", help="folder of a second reader's masks, named as the "
                                                                   "mask_path files: checked like the first")] = None,
) -> None:
    """Check a cohort directory: table schema, files, masks, geometry, split leakage. Exit 2 on errors."""
    from fusion_model.cohort import validate_cohort
    from fusion_model.fileio import atomic_write_json

    report = validate_cohort(cohort, require_label=require_labels, resample_mismatched=resample, masks_b_dir=masks_b)
    if report.summary:
        _print_summary(report.summary)
    _print_problems(report.problems)
    if json_out:
        atomic_write_json(json_out, {"cohort": str(cohort), "ok": report.ok, "summary": report.summary,
                                     "problems": [p.__dict__ for p in report.problems]})
    if not report.ok:
        raise UserInputError(f"{cohort}: {len(report.errors)} error(s) found; fix them and run validate again")
    _labelled(f"{cohort}: valid", "green", f" ({len(report.warnings)} warning(s))")


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", help="cohort directory to create")],
    patients: Annotated[int, typer.Option(help="number of patients")] = 100,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    centres: Annotated[int, typer.Option(help="number of centres (1-3)")] = 3,
    phases: Annotated[str, typer.Option(help="comma-separated phases")] = "unenhanced,venous",
    two_lesion_fraction: Annotated[float, typer.Option(help="share of patients with a lesion on each side")] = 0.08,
    without_masks: Annotated[int, typer.Option(
        "--without-masks", help="add this many patients whose lesions have no mask yet (for segment predict)")] = 0,
    second_reader: Annotated[bool, typer.Option(
        "--second-reader", help="also write a second reader's outlines (mask_path_b), for fusion-model agreement")] = False,
    workers: Annotated[int, typer.Option(help="processes (0 = automatic)")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing cohort directory")] = False,
) -> None:
    """Write a synthetic cohort (CT phantoms, masks, clinical table, truth.csv with oracle risks).

    Phases: any of unenhanced, arterial, venous, delayed (e.g. --phases unenhanced,arterial,venous)."""
    from fusion_model.config import SynthConfig
    from fusion_model.configbase import parse_model
    from fusion_model.synthetic.generate import synthesize_cohort

    config = parse_model(SynthConfig, {
        "patients": patients, "seed": seed, "centres": centres, "two_lesion_fraction": two_lesion_fraction,
        "workers": workers, "phases": [p.strip() for p in phases.split(",") if p.strip()],
        "patients_without_masks": without_masks, "second_reader": second_reader,
    }, "synth options")
    synthesize_cohort(out, config, overwrite=overwrite)
    console.print(f"wrote {out}")


@app.command("import-medmnist")
def import_medmnist_command(
    npz: Annotated[Path, typer.Argument(help="MedMNIST-format 3D npz (any of train/val/test splits)")],
    out: Annotated[Path, typer.Option("--out", help="cohort directory to create")],
    fov_mm: Annotated[float, typer.Option("--fov-mm", help="physical edge of each cube")] = 64.0,
    name: Annotated[str | None, typer.Option(help="cohort name")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
) -> None:
    """Turn a MedMNIST 3D npz (e.g. AdrenalMNIST3D) into a cohort directory with shape features."""
    from fusion_model.cohort import validate_cohort
    from fusion_model.datasets.medmnist import import_medmnist

    import_medmnist(npz, out, field_of_view_mm=fov_mm, name=name, overwrite=overwrite)
    report = validate_cohort(out, progress=False)
    _print_summary(report.summary)
    _print_problems(report.problems)
    console.print(f"wrote {out}")


@app.command()
def features(
    cohort: Annotated[Path, typer.Argument(help="cohort directory")],
    out: Annotated[Path, typer.Option("--out", help="CSV of radiological features per lesion")],
    cache: Annotated[Path | None, typer.Option(help="cache directory (default ~/.cache/fusion-model)")] = None,
    resample: Annotated[bool, typer.Option("--resample")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="stop at the first unreadable lesion")] = False,
) -> None:
    """Compute radiological features from images and masks; fill size_mm / unenhanced_hu where empty."""
    import pandas as pd

    from fusion_model.cohort import load_cohort
    from fusion_model.config import PreprocessConfig
    from fusion_model.features.radiological import fill_from_features
    from fusion_model.fileio import atomic_write_text
    from fusion_model.imaging.cache import ImageCache, default_cache_dir

    loaded = load_cohort(cohort)
    images = loaded.images(PreprocessConfig(resample_mismatched=resample), ImageCache(cache or default_cache_dir()),
                           crops=False, strict=strict)
    rows, notes = [], []
    table = loaded.table.set_index("lesion_id")
    for lesion_id, feats in images.features.iterrows():
        filled, lesion_notes = fill_from_features(table.loc[lesion_id].to_dict(), feats.to_dict())
        notes += [f"lesion {lesion_id}: {n}" for n in lesion_notes]
        rows.append({"lesion_id": lesion_id, "size_mm": filled.get("size_mm"),
                     "unenhanced_hu": filled.get("unenhanced_hu"), **feats.to_dict()})
    atomic_write_text(out, pd.DataFrame(rows).to_csv(index=False))
    for note in notes:
        _labelled("warning", "yellow", f": {note}")
    for error in images.errors:
        _labelled("error", "red", f": lesion {error.lesion_id} (row {error.row}): {error.message}")
    console.print(f"wrote {out}: {len(rows)} lesions, {len(images.errors)} unreadable")


@app.command()
def preprocess(
    cohort: Annotated[Path, typer.Argument(help="cohort directory")],
    cache: Annotated[Path | None, typer.Option(help="cache directory (default ~/.cache/fusion-model)")] = None,
    spacing_mm: Annotated[float, typer.Option(help="isotropic crop spacing")] = 1.0,
    crop_mm: Annotated[float, typer.Option(help="edge of the lesion-centred cube")] = 64.0,
    resample: Annotated[bool, typer.Option("--resample")] = False,
    strict: Annotated[bool, typer.Option("--strict")] = False,
) -> None:
    """Build the lesion-centred crops (phases + mask) into the cache; a second run reads the cache."""
    import time

    from fusion_model.cohort import load_cohort
    from fusion_model.config import PreprocessConfig
    from fusion_model.configbase import parse_model
    from fusion_model.imaging.cache import ImageCache, default_cache_dir

    config = parse_model(PreprocessConfig, {"spacing_mm": spacing_mm, "crop_size_mm": crop_mm,
                                            "resample_mismatched": resample}, "preprocess options")
    image_cache = ImageCache(cache or default_cache_dir())
    start = time.perf_counter()
    images = load_cohort(cohort).images(config, image_cache, features=False, strict=strict)
    elapsed = time.perf_counter() - start
    shape = None if images.crops is None else tuple(images.crops.shape)
    console.print(f"crops {shape} channels {images.channels}: {image_cache.hits} from cache, "
                  f"{image_cache.misses} computed, {len(images.errors)} unreadable, {elapsed:.1f} s")
    for error in images.errors:
        _labelled("error", "red", f": lesion {error.lesion_id} (row {error.row}): {error.message}")


def _fmt_auc(value) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"


def _macro_text(value, ci) -> str:
    """A macro AUC with its bootstrap interval, e.g. '0.853 (0.781-0.912)'."""
    return _fmt_auc(value) + (f" ({_ci_text(ci)})" if ci else "")


def _small_classes_text(small: dict | None) -> str:
    """The lesion types too small for a stable one-vs-rest AUC, e.g. '; noisy: fewer than 10 lesions of cyst (2),
    pheochromocytoma (3)'."""
    if not small:
        return ""
    from fusion_model.heads.subtype import SMALL_CLASS_LESIONS

    return (f"; noisy (fewer than {SMALL_CLASS_LESIONS} lesions, one lesion moves the AUC): "
            + ", ".join(f"{c} ({n})" for c, n in small.items()))


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
        table.add_row(variant, method, _fmt_auc(fit.score_oof_auc), *(_fmt_auc(fit.oof_auc.get(m)) for m in margins))
    blank = [""] * len(margins)
    for rule, auc in model.baseline_oof_auc_.items():
        table.add_row(f"rule {rule}", "guideline rule", _fmt_auc(auc), *blank)
    if run.oracle_auc is not None:
        table.add_row("oracle (truth.csv)", "generator's true risk", _fmt_auc(run.oracle_auc), *blank)
    console.print(table)
    if run.test_auc:
        console.print("held-out test AUC: " + ", ".join(f"{k} {_fmt_auc(v)}" for k, v in run.test_auc.items()))
    info = model.subtype_info_
    if info:
        lesions = sum(info["training_lesions"].values())
        left = ", ".join(f"{n} {why}" for why, n in info["left_out"].items() if n) or "none"
        console.print(f"lesion-type heads: {lesions} lesions of {len(info['classes'])} classes ("
                      + ", ".join(f"{c} {n}" for c, n in info["training_lesions"].items()) + f"); left out: {left}"
                      + (f"; 'rare' holds {', '.join(info['merged_into_rare'])}" if info["merged_into_rare"] else ""))
        console.print("lesion-type out-of-fold macro AUC (95% CI): " + ", ".join(
            f"{v} {_macro_text(a['macro'], a.get('macro_ci95'))}" for v, a in info["oof_auc"].items())
            + _small_classes_text(next(iter(info["oof_auc"].values()), {}).get("small_classes")))


def _cache(cache: Path | None):
    from fusion_model.imaging.cache import ImageCache, default_cache_dir

    return ImageCache(cache or default_cache_dir())


@app.command()
def train(
    config: Annotated[Path, typer.Option("--config", help="experiment YAML (see experiments/)")],
    cohort: Annotated[Path, typer.Option("--cohort", help="labelled cohort directory")],
    out: Annotated[Path, typer.Option("--out", help="model artifact directory to create, e.g. runs/NAME")],
    test_centre: Annotated[str | None, typer.Option("--test-centre", help="hold this centre out as "
                                                                             "external test")] = None,
    cache: Annotated[Path | None, typer.Option(help="image cache directory")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="stop at the first unreadable lesion")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    device: Annotated[str, typer.Option("--device", help="where the encoder trains: cpu (the default), cuda "
                                                         "(mixed precision) or auto (CUDA when present)")] = "cpu",
) -> None:
    """Train the encoder, the heads of every variant and the calibration; write a model artifact."""
    from fusion_model import pipeline
    from fusion_model.config import load_experiment

    experiment = load_experiment(config)
    run = pipeline.train(experiment, cohort, out, _cache(cache), test_centre=test_centre, strict=strict,
                         overwrite=overwrite, device=device)
    for error in run.errors:
        _labelled("unreadable", "red", f" lesion {error.lesion_id} (row {error.row}): {error.message}")
    for note in run.notes[:20]:
        _labelled("note", "yellow", f": {note}")
    _print_training_summary(run)
    console.print(f"model written to {out}")


@app.command()
def predict(
    model: Annotated[Path, typer.Option("--model", help="model artifact directory (from train)")],
    cohort: Annotated[Path, typer.Option("--cohort", help="cohort directory; labels not needed")],
    out: Annotated[Path, typer.Option("--out", help="predictions CSV to write")],
    cache: Annotated[Path | None, typer.Option(help="image cache directory")] = None,
    strict: Annotated[bool, typer.Option("--strict")] = False,
    all_variants: Annotated[bool, typer.Option("--all-variants", help="type probabilities of every variant, "
                                                                      "not only the primary's")] = False,
) -> None:
    """Malignancy probability per lesion (every variant, and the guideline rules) and, for a model with subtype
    heads, the probability of each lesion type, as CSV."""
    from fusion_model import pipeline

    predictions, errors = pipeline.predict(model, cohort, out, _cache(cache), strict=strict,
                                           all_variants=all_variants)
    if not any(c.startswith("p_type_") for c in predictions.columns):
        console.print("no lesion-type probabilities (p_type_*): this model has no subtype heads; train it with "
                      "'targets: [malignancy, lesion_type]' in the experiment to add them")
    for error in errors:
        _labelled("not predicted", "red", f": lesion {error.lesion_id} (row {error.row}): {error.message}")
    console.print(f"wrote {out}: {len(predictions)} lesions predicted, {len(errors)} not"
                  + (f" (see {out.with_name(out.stem + '_errors.csv')})" if errors else ""))


def _ci_text(pair) -> str:
    return "{:.3f}-{:.3f}".format(*pair) if pair else "-"


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
        table.add_row(name, m["kind"], _fmt_auc(m["auc"]["value"]),
                      _ci_text(m["auc"]["ci"]), _ci_text(m["auc"]["bootstrap_ci"]),
                      f"{sens:.0%} / {spec:.0%} ({point['name']})",
                      _fmt_auc(m["calibration"]["brier"]) if m.get("calibration") else "-")
    if metrics.get("oracle"):
        oracle = metrics["oracle"]["auc"]
        table.add_row("oracle", "generator's true risk", _fmt_auc(oracle["value"]), _ci_text(oracle["ci"]), "", "",
                      "")
    console.print(table)
    for name, m in metrics["models"].items():
        if m.get("auc") and m["auc"].get("note"):
            _labelled("note", "yellow", f": {name}: {m['auc']['note']}")
    for entry in metrics.get("not_evaluated", []):
        _labelled("not evaluated", "red", f": lesion {entry['lesion_id']} (row {entry['row']}): {entry['message']}")
    subtype = metrics.get("subtype")
    if subtype and subtype.get("variants"):
        oracle = subtype.get("oracle")
        console.print(f"lesion type ({subtype['lesions']} lesions, {len(subtype['classes'])} classes): macro AUC "
                      "(95% CI) " + ", ".join(f"{v} {_macro_text(b['macro_auc'], b.get('macro_auc_ci95'))}"
                                              for v, b in subtype["variants"].items())
                      + (f", oracle {_macro_text(oracle['macro_auc'], oracle.get('macro_auc_ci95'))}" if oracle else "")
                      + "; top-1 accuracy " + ", ".join(f"{v} {b['top1_accuracy']:.0%}"
                                                        for v, b in subtype["variants"].items())
                      + _small_classes_text(next(iter(subtype["variants"].values()))["small_classes"]))
    console.print(f"report: {result.out / 'report.html'} (also metrics.json, predictions.csv, "
                  f"{', '.join(f for f in result.files if f.endswith('.png'))})")


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
    cache: Annotated[Path | None, typer.Option(help="image cache directory")] = None,
    centre: Annotated[str | None, typer.Option("--centre", help="evaluate only this centre's lesions (e.g. the "
                                                                   "centre held out with train --test-centre)")] = None,
    split: Annotated[str | None, typer.Option("--split", help="evaluate only lesions of this split (the "
                                                                 "cohort's split column, e.g. val)")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="stop at the first unreadable lesion")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing report folder")] = False,
) -> None:
    """ROC report of a model on a labelled cohort (or of saved prediction files): HTML, JSON, CSV, PNG."""
    from fusion_model.evaluate.metrics import EvaluationSettings
    from fusion_model.evaluate.run import evaluate_model, evaluate_predictions

    if bootstrap < 200:
        raise UserInputError(f"--bootstrap {bootstrap}: use at least 200 resamples (2000 or more for a report)")
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
        if not model or not cohort:
            raise UserInputError("give --model and --cohort (or --predictions a.csv b.csv ...)")
        result = evaluate_model(model, cohort, out, _cache(cache), settings, strict=strict, overwrite=overwrite,
                                centre=centre, split=split)
    _print_evaluation(result)


@app.command()
def explain(
    model: Annotated[Path, typer.Option("--model", help="model artifact directory (from train)")],
    cohort: Annotated[Path, typer.Option("--cohort", help="cohort directory; labels not needed")],
    out: Annotated[Path, typer.Option("--out", help="folder for the case review page and case cards")],
    lesion: Annotated[list[str] | None, typer.Option("--lesion", help="explain only this lesion id "
                                                                          "(repeat for several)")] = None,
    variant: Annotated[str | None, typer.Option(help="model variant to explain (default: the primary)")] = None,
    centre: Annotated[str | None, typer.Option("--centre", help="explain only this centre's lesions")] = None,
    cache: Annotated[Path | None, typer.Option(help="image cache directory")] = None,
    strict: Annotated[bool, typer.Option("--strict")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing output folder")] = False,
) -> None:
    """Why the model says what it says: SHAP factors, CT saliency, case cards and a case review page."""
    from fusion_model.explain.run import explain_cohort

    result = explain_cohort(model, cohort, out, _cache(cache), lesion_ids=lesion or None, variant=variant,
                            strict=strict, overwrite=overwrite, centre=centre)
    for error in result.errors:
        _labelled("not explained", "red", f": lesion {error.lesion_id} (row {error.row}): {error.message}")
    t = result.timings
    console.print(f"explained {len(result.lesion_ids)} lesions: read {t['read_seconds']:.1f} s, SHAP "
                  f"{t['shap_seconds']:.2f} s, saliency {t['saliency_seconds']:.1f} s, case cards "
                  f"{t['render_seconds']:.1f} s")
    console.print(f"case review page: {result.out / 'index.html'} (case cards in {result.out / 'cases'})")


@app.command()
def tune(
    config: Annotated[Path, typer.Option("--config", help="experiment YAML with a 'search' section")],
    cohort: Annotated[Path, typer.Option("--cohort", help="labelled cohort; only its training part is used")],
    trials: Annotated[int, typer.Option("--trials", help="finished trials the study should reach in total")],
    out: Annotated[Path | None, typer.Option("--out", help="run folder (journal storage, encoder outputs, "
                                                              "report); default runs/STUDY-tune")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", help="stop starting trials after S seconds")] = None,
    storage: Annotated[str | None, typer.Option("--storage", help="SQLAlchemy URL (postgresql://...) shared by "
                                                                     "workers on many machines, or a journal file "
                                                                     "path; default: the run folder's journal")] = None,
    study: Annotated[str | None, typer.Option("--study", help="study name (default: the experiment's name)")] = None,
    jobs: Annotated[int, typer.Option("--jobs", help="worker processes on this machine")] = 1,
    worker: Annotated[int, typer.Option("--worker", help="distinct number per extra worker started by hand "
                                                         "(seeds its sampler)")] = 0,
    test_centre: Annotated[str | None, typer.Option("--test-centre", help="held-out centre, never used in "
                                                                             "an objective")] = None,
    cache: Annotated[Path | None, typer.Option(help="image cache directory")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads per worker (default: this "
                                                                     "machine's cores shared among the live workers "
                                                                     "of the run folder)")] = None,
) -> None:
    """Optuna search over the config's search space: resumable, shareable by many workers."""
    from fusion_model.config import load_experiment
    from fusion_model.tune.run import TuneRequest
    from fusion_model.tune.run import tune as run_tune

    name = study or load_experiment(config).name
    request = TuneRequest(config, cohort, out or Path("runs") / f"{name}-tune", trials, timeout, storage, study,
                          jobs, worker, test_centre, cache, threads)
    result = run_tune(request)
    from optuna.trial import TrialState

    states = {s.name.lower(): len(result.study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    console.print("trials: " + ", ".join(f"{k} {v}" for k, v in states.items() if v))
    complete = result.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        best = result.study.best_trial
        console.print(f"best: trial {best.number}, value {best.value:.4f}, params {best.params}")
        console.print(f"best config: {result.best_config} (fusion-model train --config {result.best_config} ...)")
    console.print(f"study report: {result.out / 'study_report.html'}")


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


@app.command()
def schema(
    format: Annotated[str, typer.Option("--format", help="markdown (data dictionary) or json (JSON Schema)")] = "markdown",
    out: Annotated[Path | None, typer.Option("--out", help="file to write (default: print)")] = None,
    cohort: Annotated[Path | None, typer.Option(help="include this cohort's declared extra features")] = None,
) -> None:
    """Export the clinical table contract as a data dictionary or a JSON Schema."""
    import json

    from clinical_schema.export import data_dictionary_markdown, to_json_schema
    from fusion_model.cohort.spec import read_cohort_spec
    from fusion_model.fileio import atomic_write_text

    extra = read_cohort_spec(cohort).extra_features if cohort else []
    if format == "markdown":
        text = data_dictionary_markdown(extra)
    elif format == "json":
        text = json.dumps(to_json_schema(extra), indent=2) + "\n"
    else:
        raise UserInputError(f"--format {format!r}: use 'markdown' or 'json'")
    if out:
        atomic_write_text(out, text)
        console.print(f"wrote {out}")
    else:
        sys.stdout.write(text)


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
        table.add_row(name, h["kind"], _fmt_auc(h["auc"]), _ci_text(h["ci"]), _ci_text(h["bootstrap_ci"]))
    oracle = summary["external_oracle_auc"]
    if oracle:
        table.add_row("oracle", "generator's true risk", _fmt_auc(oracle["value"]), _ci_text(oracle["ci"]), "")
    console.print(table)
    subtype = summary.get("external_subtype")
    if subtype:
        console.print(f"lesion type on {subtype['lesions']} external lesions ({len(subtype['classes'])} classes): macro "
                      "AUC (95% CI) " + ", ".join(f"{v} {_macro_text(a, subtype['macro_auc_ci95'][v])}"
                                                  for v, a in subtype["macro_auc"].items())
                      + f", oracle {_macro_text(subtype['oracle_macro_auc'], subtype['oracle_macro_auc_ci95'])}; "
                      "top-1 accuracy " + ", ".join(f"{v} {a:.0%}" for v, a in subtype["top1_accuracy"].items())
                      + _small_classes_text(subtype["small_classes"]))
    a = summary["agreement"]
    console.print(f"reader agreement on {a['lesions']} external lesions: Dice {a['dice_mean']:.3f}; {a['variant']} "
                  f"probability ICC {_fmt_auc(a['probability_icc'])}, mean |dp| {a['mean_absolute_difference']:.3f}, "
                  f"{a['class_flips']} class flip(s); AUC {_fmt_auc(a['auc_first'])} (first reader) vs "
                  f"{_fmt_auc(a['auc_second'])} (second reader)")
    seconds = summary["seconds"]
    console.print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
                  + f" (encoder on {summary['device']})")
    console.print("outputs:")
    for name, path in summary["outputs"].items():
        console.print(f"  {name}: {path}")
    console.print(f"  summary: {out / 'demo_summary.json'}")


segment_app = typer.Typer(
    help="Find and outline lesions: train a MONAI 3D U-Net on outlined scans, predict masks for a cohort, evaluate.",
    no_args_is_help=True)
app.add_typer(segment_app, name="segment")

DeviceOption = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu or cuda")]
SegmenterOption = Annotated[Path, typer.Option("--model", help="segmenter folder from segment train")]
CentreOption = Annotated[str | None, typer.Option("--centre", help="only this centre")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite")]
RegionOption = Annotated[Path | None, typer.Option(
    "--region", help="CSV with the adrenal region per patient_id: box columns x_min_mm..z_max_mm (LPS mm) or "
                     "region_mask_path (an organ mask, e.g. TotalSegmentator's adrenal labels); default: whole scan")]


def _regions(region: Path | None, cohort: Path):
    from fusion_model.segment.scans import read_regions

    return read_regions(region, cohort) if region else None


@segment_app.command("train")
def segment_train(
    cohort: Annotated[Path, typer.Option("--cohort", help="cohort directory with outlined lesions")],
    out: Annotated[Path, typer.Option("--out", help="segmenter folder to write")],
    config: Annotated[Path | None, typer.Option("--config", help="segmenter YAML (experiments/segment.yaml)")] = None,
    test_centre: Annotated[str | None, typer.Option("--test-centre", help="leave this centre out")] = None,
    region: RegionOption = None,
    device: DeviceOption = "auto",
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads")] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Train the lesion segmenter (resumes after a kill: run the same command again)."""
    from fusion_model.config import load_segment_config
    from fusion_model.segment.train import train_segmenter

    settings = load_segment_config(config)
    if threads:
        settings = settings.model_copy(update={"threads": threads})
    run = train_segmenter(cohort, out, settings, device=device, regions=_regions(region, cohort),
                          test_centre=test_centre, overwrite=overwrite)
    f = run.figures
    op = f["operating_point"]
    if f["resumed_from_epoch"] is not None:
        console.print(f"resumed after epoch {f['resumed_from_epoch'] + 1}")
    if run.skipped:
        console.print(f"left out {len(run.skipped)} scan(s) with lesions not outlined: {', '.join(run.skipped[:10])}")
    console.print(f"trained on {f['training_patients']} patients, early-stopped on {f['early_stopping_patients']} "
                  f"({', '.join(f['centres'])}); best epoch {f['best_epoch'] + 1} of {f['epochs_run']}")
    dice = f["early_stopping_lesion_dice"]
    console.print(f"early-stopping patients: lesion Dice median {dice['median']:.3f}, mean {dice['mean']:.3f}; "
                  f"operating point: component probability >= {op['threshold']:.3f} gives sensitivity "
                  f"{op['sensitivity']:.3f} at {op['fp_per_scan']:.2f} false positives per scan")
    console.print(f"{f['minutes']:.1f} min on {f['device']}, peak memory {f['peak_memory_gb']:.2f} GB; wrote {out}")


@segment_app.command("predict")
def segment_predict(
    model: SegmenterOption,
    cohort: Annotated[Path, typer.Option("--cohort", help="cohort directory to outline")],
    out: Annotated[Path, typer.Option("--out", help="new cohort directory with the automatic masks")],
    centre: CentreOption = None,
    region: RegionOption = None,
    device: DeviceOption = "auto",
    dicom_seg: Annotated[bool, typer.Option("--dicom-seg/--no-dicom-seg",
                                            help="also write DICOM SEG when the images are DICOM")] = True,
    overwrite: OverwriteOption = False,
) -> None:
    """Outline every lesion of a cohort; write a new cohort (mask_source = auto) and list lesions not found."""
    from fusion_model.segment.predict import NOT_FOUND_FILE, predict_masks

    run = predict_masks(model, cohort, out, centre=centre, regions=_regions(region, cohort), device=device,
                        dicom_seg=dicom_seg, overwrite=overwrite)
    console.print(f"outlined {run.found} of {run.lesions} lesions ({run.seconds_per_scan:.1f} s per scan, peak "
                  f"memory {run.peak_memory_gb:.2f} GB)" + (f"; {run.dicom_seg_files} DICOM SEG file(s)"
                                                           if run.dicom_seg_files else ""))
    if len(run.not_found):
        _labelled("not found", "yellow", f" ({len(run.not_found)}, listed in {out / NOT_FOUND_FILE}; their "
                  "rows keep an empty mask_path): " + ", ".join(run.not_found["lesion_id"].head(20)))
    console.print(f"wrote {out}")


@segment_app.command("evaluate")
def segment_evaluate(
    model: SegmenterOption,
    cohort: Annotated[Path, typer.Option("--cohort", help="cohort directory with reference masks")],
    out: Annotated[Path, typer.Option("--out", help="report folder")],
    centre: CentreOption = None,
    region: RegionOption = None,
    device: DeviceOption = "auto",
    overwrite: OverwriteOption = False,
) -> None:
    """Dice, HD95, surface Dice, volume difference and FROC of the segmenter against reference masks."""
    from fusion_model.segment.evaluate import evaluate_segmenter

    result = evaluate_segmenter(model, cohort, out, centre=centre, regions=_regions(region, cohort), device=device,
                                overwrite=overwrite)
    table = Table(title=f"segmenter on {result.metrics['cohort_name']}")
    for column in ("centre", "lesions", "Dice median", "Dice mean", "HD95 median (mm)", "sensitivity",
                   "FP / scan"):
        table.add_column(column)
    blocks = [("all", result.metrics["overall"]), *result.metrics["per_centre"].items()]
    for name, b in blocks:
        op = b["detection"]["operating_point"]
        table.add_row(name, str(b["lesions"]), f"{b['dice']['median']:.3f}", f"{b['dice']['mean']:.3f}",
                      "-" if b["hd95_mm"]["median"] is None else f"{b['hd95_mm']['median']:.1f}",
                      f"{op['sensitivity']:.3f}", f"{op['fp_per_scan']:.2f}")
    console.print(table)
    console.print(f"{result.metrics['seconds_per_scan']:.1f} s per scan; wrote {out / 'report.html'}")


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
) -> None:
    """Reader agreement: Dice/HD95 of the two outlines, feature ICCs, Bland-Altman and the model's stability."""
    from fusion_model.agreement.run import AgreementSettings, run_agreement

    if perturb and masks_b is not None:
        raise UserInputError("--perturb compares each outline with perturbed copies of itself; leave out --masks-b")
    result = run_agreement(cohort, out, AgreementSettings(masks_b_dir=masks_b, perturb=perturb,
                                                          contour_dice=contour_dice, seed=seed, resample=resample,
                                                          centre=centre),
                           model_dir=model, overwrite=overwrite)
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
        _labelled(f"{len(m['read_once'])} lesion(s) with one outline only, not compared", "yellow",
                  " (listed in the report): " + ", ".join(r["lesion_id"] for r in m["read_once"][:20]))
    console.print(f"{m['seconds']:.1f} s; wrote {out / 'report.html'}")


_PYTHON_SHOWWARNING = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """fusion-model's own warnings as one 'warning:' line on stderr; others as Python prints them."""
    if issubclass(category, FusionModelWarning):
        err_console.print(Text.assemble(("warning:", "yellow"), f" {message}"), highlight=False, soft_wrap=True)
    else:
        _PYTHON_SHOWWARNING(message, category, filename, lineno, file, line)


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2; fusion-model's warnings one
    line each."""
    warnings.showwarning = _show_warning
    try:
        app()
    except FusionModelError as err:
        err_console.print(Text.assemble(("error:", "red"), f" {err}"), highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
