"""The segmenter in the risk pipeline: trained on two centres, outlining the third, the risk model scored on it.

1. ``fusion-model synth`` writes a cohort (default 200 patients, three centres).
2. ``segment train --test-centre centre_c``: the segmenter learns from centres A and B (and where the glands are,
   from the cohort's glands/ folder): minutes, peak memory.
3. The risk model (experiments/synthetic_demo.yaml, with lesion-type heads) is trained on centres A and B with
   manual masks.
4. ``segment evaluate --centre centre_c --risk-model``: lesion Dice (by side and type), HD95, surface Dice, FROC with
   touching and IoU >= 0.5 hits, false positives by count and volume (and outside the true gland region), detection
   and classification average precision per lesion type at IoU 0.5, lesions left without a mask.
5. ``segment predict --centre centre_c``: a cohort of centre C with automatic masks (seconds per scan), every
   lesion without one counted by label and type.
6. The risk model scores centre C twice, with the manual and with the automatic masks: each variant's AUC on the
   lesions both scored (DeLong's paired test), and on all lesions with the unscored ones counted as missed.

Every figure is printed and written to OUT/segment_chain.json. Targets: median lesion Dice >= 0.90, mean >= 0.85,
right-sided median within 0.03 of left; sensitivity >= 0.95 at <= 0.25 false positives per scan (touching) and
>= 0.90 at <= 0.5 (IoU >= 0.5); no false-positive component over 5 mL outside a gland region; every lesion scored
or listed; the `all` variant's AUC with automatic masks (unscored = missed) within 0.02 of manual on all
lesions; training <= 10 minutes on 2 CPU cores, inference <= 2 s per scan, peak memory < 4 GB.

    python benchmarks/segment_chain.py --out runs/segment_chain [--patients 200 --seed 5 --device auto]

With ``--second-reader`` the cohort also has a second reader's outlines (the same patients and images) and the risk
model of steps 3 and 6 trains on both readers' outlines (``masks: [a, b]``: one of the two drawn per lesion and
epoch), i.e. on outlines that vary as automatic ones do.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

from fusion_model.config import (
    SynthConfig,
    load_experiment,
    load_segment_config,
    packaged_experiment,
)
from fusion_model.engine import package_versions
from fusion_model.imaging.cache import ImageCache

TEST_CENTRE = "centre_c"


def main(argv: list[str] | None = None) -> dict:
    """Run the chain; print and return its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/segment_chain"))
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--segment-config", type=Path, default=packaged_experiment("segment.yaml"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--second-reader", action="store_true",
                        help="the cohort also has a second reader's outlines (masks_b/; the same patients and images) "
                             "and the risk model trains on both readers' (masks: [a, b]), in OUT/risk_model_ab")
    parser.add_argument("--stages", default="synth,train,risk_model,evaluate,predict,risk",
                        help="comma-separated stages to run (earlier outputs are reused)")
    args = parser.parse_args(argv)
    stages = set(args.stages.split(","))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    cohort, segmenter, report, auto = out / "cohort", out / "segmenter", out / "segment_report", out / "auto_c"
    figures: dict = {"patients": args.patients, "seed": args.seed, "test_centre": TEST_CENTRE,
                     "risk_model_masks": ["a", "b"] if args.second_reader else ["a"]}
    masks = figures["risk_model_masks"]

    if "synth" in stages and not cohort.exists():
        from fusion_model.synthetic.generate import synthesize_cohort

        synthesize_cohort(cohort, SynthConfig(patients=args.patients, seed=args.seed,
                                              second_reader=args.second_reader))
    if "train" in stages:
        from fusion_model.segment.train import train_segmenter

        run = train_segmenter(cohort, segmenter, load_segment_config(args.segment_config), device=args.device,
                              test_centre=TEST_CENTRE, overwrite=True)
        figures["train"] = {k: run.figures[k] for k in ("training_patients", "early_stopping_patients",
                                                         "epochs_run", "best_epoch", "minutes", "peak_memory_gb",
                                                         "device", "operating_point")}
        print(f"segment train: {run.figures['minutes']:.1f} min, peak {run.figures['peak_memory_gb']:.2f} GB, "
              f"{run.figures['epochs_run']} epochs on {run.figures['device']}", flush=True)
    if "risk_model" in stages or "evaluate" in stages or "risk" in stages:
        train_risk_model(cohort, out, masks)
    if "evaluate" in stages:
        from fusion_model.segment.evaluate import evaluate_segmenter

        result = evaluate_segmenter(segmenter, cohort, report, centre=TEST_CENTRE, device=args.device,
                                    overwrite=True, risk_model=risk_model_dir(out, masks),
                                    cache=ImageCache(out / "cache"))
        overall = result.metrics["overall"]
        op = overall["detection"]["operating_point"]
        fp = overall["false_positives"]
        ap = result.metrics["average_precision_iou_0.5"]
        lesions = result.lesions
        figures["segmentation"] = {
            "lesions": overall["lesions"], "dice_median": overall["dice"]["median"],
            "dice_mean": overall["dice"]["mean"],
            "dice_median_by_side": {k: v["median"] for k, v in overall["dice_by_side"].items()},
            "dice_median_by_type": {t: float(g["dice"].median()) for t, g in lesions.groupby("lesion_type")},
            "hd95_median_mm": overall["hd95_mm"]["median"],
            "surface_dice_2mm_median": overall["surface_dice_2mm"]["median"],
            "sensitivity": op["sensitivity"], "fp_per_scan": op["fp_per_scan"],
            "sensitivity_within_0.25_fp_touching": overall["detection"]["sensitivity_within_fp_per_scan"]["0.25"],
            "sensitivity_within_0.5_fp": overall["detection"]["sensitivity_within_fp_per_scan"]["0.5"],
            "sensitivity_within_0.5_fp_iou": overall["detection_iou"]["sensitivity_within_fp_per_scan"]["0.5"],
            "iou_operating_point": overall["detection_iou"]["operating_point"],
            "false_positives": {k: fp[k] for k in ("count", "per_scan", "volume_ml_per_scan", "outside_glands",
                                                   "outside_glands_over_5ml", "largest_outside_glands_ml")},
            "largest_false_positive_ml": fp["volume_ml"]["max"],
            "suppressed_components": result.metrics["suppressed_components"],
            "unscored": overall["unscored"],
            "average_precision": {"detection": ap["detection"], "mean_detection": ap["mean_detection_ap"],
                                  "classification_by_phase_set": ap.get("classification_by_phase_set")},
            "seconds_per_scan": result.metrics["seconds_per_scan"]}
        print("segment evaluate (centre C): " + json.dumps(figures["segmentation"]), flush=True)
    if "predict" in stages:
        from fusion_model.segment.predict import predict_masks

        run = predict_masks(segmenter, cohort, auto, centre=TEST_CENTRE, device=args.device, overwrite=True)
        figures["predict"] = {"lesions": run.lesions, "found": run.found, "seconds_per_scan": run.seconds_per_scan,
                              "peak_memory_gb": run.peak_memory_gb,
                              "not_found": list(run.not_found["lesion_id"]), "unscored": run.summary["unscored"],
                              "suppressed_components": run.summary["suppressed_components"],
                              "suppressed_volume_ml": run.summary["suppressed_volume_ml"]}
        print(f"segment predict: {run.found}/{run.lesions} lesions outlined, {run.seconds_per_scan:.2f} s per scan",
              flush=True)
    if "risk" in stages:
        figures["risk"] = risk_on_auto_masks(cohort, auto, out, masks)
        risk = figures["risk"]
        print(f"risk: {risk['lesions_compared']} of {risk['lesions_all']} lesions scored with both mask sets; "
              f"{risk['lesions_without_auto_mask']} without an automatic mask ({risk['unscored']})", flush=True)
        for name, r in risk["variants"].items():
            print(f"risk {name}: AUC manual {r['auc_manual']:.3f}, auto {r['auc_auto']:.3f}, difference "
                  f"{r['difference']:+.3f} (p = {r['p_value']}); all {risk['lesions_all']} lesions, unscored = "
                  f"missed: manual {r['auc_manual_all']:.3f}, auto {r['auc_auto_all_unscored_missed']:.3f}, "
                  f"difference {r['difference_all']:+.3f}", flush=True)
    figures["peak_memory_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    # the same seed gives the same figures in the same environment: name it (a new numpy, SimpleITK or torch release
    # changes the third digit)
    figures["versions"] = package_versions(("fusion-model", "torch", "monai", "numpy", "scipy", "SimpleITK",
                                            "scikit-learn", "xgboost-cpu", "pandas"))
    (out / "segment_chain.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(figures, indent=2))
    return figures


def risk_model_dir(out: Path, masks: list[str]) -> Path:
    """Where the risk model trained on ``masks`` (the first reader's, or both readers') outlines lies."""
    return out / ("risk_model" if masks == ["a"] else "risk_model_" + "".join(masks))


def train_risk_model(cohort: Path, out: Path, masks: list[str]) -> Path:
    """The demo experiment (lesion-type heads included) trained on centres A and B with manual masks (the first
    reader's, or both readers' as augmentation); reused."""
    from fusion_model import pipeline

    model_dir = risk_model_dir(out, masks)
    if not (model_dir / "manifest.json").is_file():  # it depends on the cohort only: a rerun reuses it
        config = load_experiment(packaged_experiment("synthetic_demo.yaml")).model_copy(update={"masks": masks})
        pipeline.train(config, cohort, model_dir, ImageCache(out / "cache"), test_centre=TEST_CENTRE, overwrite=True)
    return model_dir


def risk_on_auto_masks(cohort: Path, auto: Path, out: Path, masks: list[str]) -> dict:
    """Score centre C with both mask sets: each variant's AUC on the lesions both scored (paired DeLong) and on
    all lesions with those left without an automatic mask counted as missed (scored below every other)."""
    from fusion_model import pipeline
    from fusion_model.artifact import load_model
    from fusion_model.cohort import load_cohort
    from fusion_model.segment.predict import unscored_counts
    from fusion_model.stats import auc_mann_whitney, delong_paired_test

    started = time.perf_counter()
    cache = ImageCache(out / "cache")
    model = load_model(train_risk_model(cohort, out, masks))
    manual_data, _, _ = pipeline.lesion_data(load_cohort(cohort).select(centre=TEST_CENTRE), model.config, cache)
    auto_data, auto_errors, _ = pipeline.lesion_data(load_cohort(auto), model.config, cache)
    manual = model.predict_variants(manual_data)
    automatic = model.predict_variants(auto_data)
    shared = [i for i in auto_data.table.index if i in set(manual_data.table.index)]
    every = list(manual_data.table.index)
    unscored = [i for i in every if i not in set(shared)]
    labels = manual_data.table.loc[shared, "label"].astype(int).to_numpy()
    labels_all = manual_data.table.loc[every, "label"].astype(int).to_numpy()
    variants = {}
    for name in model.variants_:
        test = delong_paired_test(labels, automatic.loc[shared, f"p_{name}"].to_numpy(),
                                  manual.loc[shared, f"p_{name}"].to_numpy())
        auto_all = automatic[f"p_{name}"].reindex(every).fillna(-1.0).to_numpy()  # unscored: below every score
        auc_manual_all = auc_mann_whitney(labels_all, manual.loc[every, f"p_{name}"].to_numpy())
        auc_auto_all = auc_mann_whitney(labels_all, auto_all)
        variants[name] = {"auc_manual": test.auc_b, "auc_auto": test.auc_a, "difference": test.difference,
                          "ci": test.ci, "p_value": None if test.p_value is None else round(test.p_value, 4),
                          "auc_manual_all": auc_manual_all, "auc_auto_all_unscored_missed": auc_auto_all,
                          "difference_all": auc_auto_all - auc_manual_all}
    return {"lesions_all": len(every), "lesions_compared": len(shared), "lesions_without_auto_mask": len(unscored),
            "unscored": unscored_counts(manual_data.table.loc[unscored].reset_index()),
            "unscored_lesions": unscored, "auto_read_errors": len(auto_errors),
            "variants": variants, "minutes": (time.perf_counter() - started) / 60,
            "mean_abs_probability_difference_all": float(np.mean(np.abs(
                automatic.loc[shared, "p_all"] - manual.loc[shared, "p_all"]))) if "all" in model.variants_ else None}


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
