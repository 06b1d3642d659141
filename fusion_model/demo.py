"""`fusion-model demo`: the whole product on a synthetic cohort, in a few minutes on two cores.

1. synthesise a cohort from three centres (CT phantoms, masks, clinical table, true risks);
2. validate it;
3. train the four variants and the guideline rules on the internal centres (centre_a, centre_b),
   holding the external centre (centre_c) out;
4. evaluate every variant and rule on the external centre (report.html, metrics.json, ...), the lesion-type
   heads beside malignancy;
5. explain the external centre's lesions (case review page and case cards);
6. compare the model's answers with the outlines of a simulated second reader on the external centre
   (``fusion-model agreement``: Dice, feature ICCs, probability ICC, class flips, AUC per reader);
7. print the headline figures beside the oracle AUC and list every output in ``demo_summary.json``.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import yaml

from fusion_model import __version__
from fusion_model.config import ExperimentConfig, packaged_experiment
from fusion_model.configbase import parse_model
from fusion_model.errors import FusionModelError
from fusion_model.fileio import atomic_write_json

EXTERNAL_CENTRE = "centre_c"

def demo_experiment(overrides: dict | None = None) -> ExperimentConfig:
    """The demo's experiment: the packaged experiments/synthetic_demo.yaml, with ``overrides`` (section ->
    values) applied."""
    data = yaml.safe_load(packaged_experiment("synthetic_demo.yaml").read_text(encoding="utf-8"))
    for section, values in (overrides or {}).items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            data[section].update(values)
        else:
            data[section] = values
    return parse_model(ExperimentConfig, data, "demo experiment")


def _subtype_headline(subtype: dict | None) -> dict | None:
    if not subtype or not subtype.get("variants"):
        return None
    oracle = subtype.get("oracle")
    return {"lesions": subtype["lesions"], "classes": subtype["classes"],
            "macro_auc": {v: b["macro_auc"] for v, b in subtype["variants"].items()},
            "macro_auc_ci95": {v: b["macro_auc_ci95"] for v, b in subtype["variants"].items()},
            "top1_accuracy": {v: b["top1_accuracy"] for v, b in subtype["variants"].items()},
            "small_classes": next(iter(subtype["variants"].values()))["small_classes"],
            "oracle_macro_auc": oracle["macro_auc"] if oracle else None,
            "oracle_macro_auc_ci95": oracle["macro_auc_ci95"] if oracle else None}


def _agreement_headline(metrics: dict) -> dict:
    block = metrics["comparisons"][0]
    primary = block["model"][metrics["primary_variant"]]
    return {"lesions": metrics["lesions_compared"], "dice_mean": block["segmentation"]["dice"]["mean"],
            "features_below_0.75": block["features_below_0.75"], "variant": metrics["primary_variant"],
            "probability_icc": (primary["icc"]["icc2_1"] or {}).get("icc"),
            "mean_absolute_difference": primary["mean_absolute_difference"], "class_flips": primary["flips"],
            "auc_first": (primary.get("auc") or {}).get("a"), "auc_second": (primary.get("auc") or {}).get("b"),
            "p_value": (primary.get("auc") or {}).get("p_value")}


def run_demo(out: Path, patients: int = 210, seed: int = 0, experiment: ExperimentConfig | None = None,
             bootstrap: int = 2000, console=None, progress: bool = True, device: str = "cpu") -> dict:
    """Run every stage; returns the summary also written to ``out/demo_summary.json``. ``device``: where the
    encoder trains (cpu, cuda or auto), as in ``fusion-model train``."""
    from fusion_model import pipeline
    from fusion_model.agreement.run import AgreementSettings, run_agreement
    from fusion_model.cohort import validate_cohort
    from fusion_model.config import SynthConfig
    from fusion_model.devices import resolve_device
    from fusion_model.evaluate.metrics import EvaluationSettings
    from fusion_model.evaluate.run import evaluate_model
    from fusion_model.explain.run import explain_cohort
    from fusion_model.imaging.cache import ImageCache
    from fusion_model.synthetic.generate import synthesize_cohort

    def say(text: str) -> None:
        if console is not None:
            console.rule(text)

    out = Path(out)
    device = str(resolve_device(device))  # a CUDA request on a machine without one is refused before any work
    experiment = experiment or demo_experiment()
    cache = ImageCache(out / "cache")
    stages: dict[str, float] = {}
    start_all = time.perf_counter()

    say(f"1/6 synthesise a cohort of {patients} patients from three centres")
    t = time.perf_counter()
    cohort = synthesize_cohort(out / "cohort", SynthConfig(patients=patients, seed=seed, centres=3,
                                                                          second_reader=True), overwrite=True,
                               progress=progress)
    stages["synthesise"] = time.perf_counter() - t

    say("2/6 validate it")
    t = time.perf_counter()
    report = validate_cohort(cohort, require_label=True, progress=progress)
    if not report.ok:
        raise FusionModelError(f"the synthetic cohort in {cohort} failed validation (a bug; please report it)")
    stages["validate"] = time.perf_counter() - t

    say(f"3/6 train the four variants on centre_a + centre_b ({EXTERNAL_CENTRE} held out)")
    t = time.perf_counter()
    run = pipeline.train(experiment, cohort, out / "model", cache, test_centre=EXTERNAL_CENTRE, overwrite=True,
                         progress=progress, device=device)
    stages["train"] = time.perf_counter() - t

    say(f"4/6 evaluate on the external centre {EXTERNAL_CENTRE}")
    t = time.perf_counter()
    evaluation = evaluate_model(out / "model", cohort, out / "evaluation", cache,
                                EvaluationSettings(bootstrap_resamples=bootstrap), overwrite=True,
                                progress=progress, centre=EXTERNAL_CENTRE)
    stages["evaluate"] = time.perf_counter() - t

    say("5/6 explain the external centre's lesions")
    t = time.perf_counter()
    explained = explain_cohort(out / "model", cohort, out / "explain", cache, overwrite=True, progress=progress,
                               centre=EXTERNAL_CENTRE)
    stages["explain"] = time.perf_counter() - t

    say(f"6/6 reader agreement on {EXTERNAL_CENTRE}: the first outlines against a second reader's")
    t = time.perf_counter()
    agreement = run_agreement(cohort, out / "agreement", AgreementSettings(centre=EXTERNAL_CENTRE),
                              model_dir=out / "model", overwrite=True, progress=progress)
    stages["agreement"] = time.perf_counter() - t
    stages["total"] = time.perf_counter() - start_all

    metrics = evaluation.metrics
    headline = {name: {"kind": m["kind"], "auc": m["auc"]["value"] if m.get("auc") else None,
                       "delong_ci": m["auc"]["delong_ci"] if m.get("auc") else None,
                       "ci": m["auc"]["ci"] if m.get("auc") else None,
                       "bootstrap_ci": m["auc"].get("bootstrap_ci") if m.get("auc") else None}
                for name, m in metrics["models"].items()}
    summary = {
        "format": "fusion-model-demo-summary", "package_version": __version__,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "patients": patients, "seed": seed, "external_centre": EXTERNAL_CENTRE, "device": device,
        "lesions": {"training": run.model.oof_.shape[0], "external": metrics["cohort"]["lesions"]},
        "external_auc": headline,
        "external_oracle_auc": metrics["oracle"]["auc"] if metrics.get("oracle") else None,
        "training_oof_auc": run.model.oof_auc_, "training_oracle_auc": run.oracle_auc,
        "external_subtype": _subtype_headline(metrics.get("subtype")),
        "agreement": _agreement_headline(agreement.metrics),
        "seconds": stages,
        "outputs": {
            "cohort": str(cohort / "clinical.csv"),
            "model_manifest": str(out / "model" / "manifest.json"),
            "evaluation_report": str(evaluation.out / "report.html"),
            "evaluation_metrics": str(evaluation.out / "metrics.json"),
            "evaluation_predictions": str(evaluation.out / "predictions.csv"),
            **{f"evaluation_{name[:-4]}_png": str(evaluation.out / name) for name in evaluation.files
               if name.endswith(".png")},
            "case_review": str(explained.out / "index.html"),
            "shap_values": str(explained.out / "shap_values.csv"),
            "agreement_report": str(out / "agreement" / "report.html"),
        },
    }
    atomic_write_json(out / "demo_summary.json", summary)
    return summary
