"""The segmenter in the risk pipeline: trained on two centres, outlining the third, the risk model scored on it.

1. ``fusion-model synth`` writes a cohort (default 200 patients, three centres).
2. ``segment train --test-centre centre_c``: the segmenter learns from centres A and B (minutes, peak memory).
3. ``segment evaluate --centre centre_c``: lesion Dice, HD95, surface Dice, FROC against the generator's masks.
4. ``segment predict --centre centre_c``: a cohort of centre C with automatic masks (seconds per scan).
5. The risk model (experiments/synthetic_demo.yaml) is trained on centres A and B with manual masks and scores
   centre C twice, with the manual and with the automatic masks: each variant's AUC on the same lesions and
   DeLong's paired test of the difference.

Every figure is printed and written to OUT/segment_chain.json. Targets: median lesion Dice >= 0.85, mean >= 0.80,
sensitivity >= 0.90 at <= 0.5 false positives per scan, the `all` variant's AUC with automatic masks within
0.02 of manual, training <= 20 minutes on 2 CPU cores, inference <= 5 s per scan, peak memory < 6 GB.

    python benchmarks/segment_chain.py --out runs/segment_chain [--patients 200 --seed 5 --device auto]
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
    parser.add_argument("--stages", default="synth,train,evaluate,predict,risk",
                        help="comma-separated stages to run (earlier outputs are reused)")
    args = parser.parse_args(argv)
    stages = set(args.stages.split(","))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    cohort, segmenter, report, auto = out / "cohort", out / "segmenter", out / "segment_report", out / "auto_c"
    figures: dict = {"patients": args.patients, "seed": args.seed, "test_centre": TEST_CENTRE}

    if "synth" in stages and not cohort.exists():
        from fusion_model.synthetic.generate import synthesize_cohort

        synthesize_cohort(cohort, SynthConfig(patients=args.patients, seed=args.seed))
    if "train" in stages:
        from fusion_model.segment.train import train_segmenter

        run = train_segmenter(cohort, segmenter, load_segment_config(args.segment_config), device=args.device,
                              test_centre=TEST_CENTRE, overwrite=True)
        figures["train"] = {k: run.figures[k] for k in ("training_patients", "early_stopping_patients",
                                                         "epochs_run", "best_epoch", "minutes", "peak_memory_gb",
                                                         "device", "operating_point")}
        print(f"segment train: {run.figures['minutes']:.1f} min, peak {run.figures['peak_memory_gb']:.2f} GB, "
              f"{run.figures['epochs_run']} epochs on {run.figures['device']}", flush=True)
    if "evaluate" in stages:
        from fusion_model.segment.evaluate import evaluate_segmenter

        result = evaluate_segmenter(segmenter, cohort, report, centre=TEST_CENTRE, device=args.device,
                                    overwrite=True)
        overall = result.metrics["overall"]
        op = overall["detection"]["operating_point"]
        figures["segmentation"] = {
            "lesions": overall["lesions"], "dice_median": overall["dice"]["median"],
            "dice_mean": overall["dice"]["mean"], "hd95_median_mm": overall["hd95_mm"]["median"],
            "surface_dice_2mm_median": overall["surface_dice_2mm"]["median"],
            "sensitivity": op["sensitivity"], "fp_per_scan": op["fp_per_scan"],
            "sensitivity_within_0.5_fp": overall["detection"]["sensitivity_within_fp_per_scan"]["0.5"],
            "seconds_per_scan": result.metrics["seconds_per_scan"]}
        print("segment evaluate (centre C): " + json.dumps(figures["segmentation"]), flush=True)
    if "predict" in stages:
        from fusion_model.segment.predict import predict_masks

        run = predict_masks(segmenter, cohort, auto, centre=TEST_CENTRE, device=args.device, overwrite=True)
        figures["predict"] = {"lesions": run.lesions, "found": run.found, "seconds_per_scan": run.seconds_per_scan,
                              "not_found": list(run.not_found["lesion_id"])}
        print(f"segment predict: {run.found}/{run.lesions} lesions outlined, {run.seconds_per_scan:.2f} s per scan",
              flush=True)
    if "risk" in stages:
        figures["risk"] = risk_on_auto_masks(cohort, auto, out)
        for name, r in figures["risk"]["variants"].items():
            print(f"risk {name}: AUC manual {r['auc_manual']:.3f}, auto {r['auc_auto']:.3f}, difference "
                  f"{r['difference']:+.3f} (p = {r['p_value']})", flush=True)
    figures["peak_memory_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    (out / "segment_chain.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(figures, indent=2))
    return figures


def risk_on_auto_masks(cohort: Path, auto: Path, out: Path) -> dict:
    """Train the demo experiment on centres A and B (manual masks); score centre C with both mask sets."""
    from fusion_model import pipeline
    from fusion_model.artifact import load_model
    from fusion_model.cohort import load_cohort
    from fusion_model.stats import delong_paired_test

    started = time.perf_counter()
    cache = ImageCache(out / "cache")
    model_dir = out / "risk_model"
    config = load_experiment(packaged_experiment("synthetic_demo.yaml"))
    if not (model_dir / "manifest.json").is_file():  # it depends on the cohort only: a rerun reuses it
        pipeline.train(config, cohort, model_dir, cache, test_centre=TEST_CENTRE, overwrite=True)
    model = load_model(model_dir)
    manual_data, _, _ = pipeline.lesion_data(load_cohort(cohort).select(centre=TEST_CENTRE), model.config, cache)
    auto_data, auto_errors, _ = pipeline.lesion_data(load_cohort(auto), model.config, cache)
    manual = model.predict_variants(manual_data)
    automatic = model.predict_variants(auto_data)
    shared = [i for i in auto_data.table.index if i in set(manual_data.table.index)]
    labels = manual_data.table.loc[shared, "label"].astype(int).to_numpy()
    variants = {}
    for name in model.variants_:
        test = delong_paired_test(labels, automatic.loc[shared, f"p_{name}"].to_numpy(),
                                  manual.loc[shared, f"p_{name}"].to_numpy())
        variants[name] = {"auc_manual": test.auc_b, "auc_auto": test.auc_a, "difference": test.difference,
                          "ci": test.ci, "p_value": None if test.p_value is None else round(test.p_value, 4)}
    return {"lesions_compared": len(shared), "lesions_without_auto_mask": len(auto_errors),
            "variants": variants, "minutes": (time.perf_counter() - started) / 60,
            "mean_abs_probability_difference_all": float(np.mean(np.abs(
                automatic.loc[shared, "p_all"] - manual.loc[shared, "p_all"]))) if "all" in model.variants_ else None}


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
