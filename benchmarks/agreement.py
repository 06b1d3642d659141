"""Reader agreement on a synthetic cohort with a second reader: how realistic the simulated reader is, and how
long `fusion-model agreement` takes for about 300 lesions.

Stages (outputs of earlier runs are reused):

- ``synth``: ``fusion-model synth --second-reader`` (default 290 patients, seed 11: 300 lesions or more); the
  second reader's Dice with the first is computed here from the mask files (numpy, independent of the package),
  overall and by halves of size and irregularity. Target: mean Dice within 0.02 of 0.92.
- ``model``: the demo experiment (experiments/synthetic_demo.yaml) trained on another synthetic cohort (default
  200 patients, seed 21), so that the agreement cohort is external to it (its training time is not counted).
- ``agreement``: ``fusion-model agreement --model`` on the second-reader cohort, timed. Target: < 2 minutes on
  2 CPU cores.
- ``perturb``: the same with ``--perturb`` (five perturbed outlines per lesion), timed.
- ``augment`` (not run by default): the demo experiment trained on the second-reader cohort with
  ``masks: [a]`` and with ``masks: [a, b]``; each variant's out-of-fold AUC and its AUC on the external cohort
  (seed 21) with the first reader's masks.

    python benchmarks/agreement.py --out runs/agreement_bench [--stages synth,model,agreement,perturb,augment]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from fusion_model.config import SynthConfig, load_experiment, packaged_experiment
from fusion_model.imaging.cache import ImageCache


def second_reader_dice(cohort: Path) -> dict:
    """Each lesion's Dice of the two readers' masks, from the files, and its summary."""
    table = pd.read_csv(cohort / "clinical.csv")
    truth = pd.read_csv(cohort / "truth.csv").set_index("lesion_id")
    rows = []
    for row in table.itertuples():
        first = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort / row.mask_path)))
        second = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort / row.mask_path_b)))
        a = first == (1 if pd.isna(row.mask_label) else int(row.mask_label))
        b = second == (1 if pd.isna(row.mask_label_b) else int(row.mask_label_b))
        rows.append({"lesion_id": row.lesion_id, "dice": 2 * (a & b).sum() / (a.sum() + b.sum()),
                     "size_mm": truth.at[row.lesion_id, "latent_size_mm"],
                     "irregularity": truth.at[row.lesion_id, "latent_irregularity"]})
    frame = pd.DataFrame(rows)
    small = frame["size_mm"] < frame["size_mm"].median()
    irregular = frame["irregularity"] > frame["irregularity"].median()
    dice = frame["dice"]
    return {"lesions": len(frame), "mean": float(dice.mean()), "sd": float(dice.std()), "min": float(dice.min()),
            "max": float(dice.max()), "p05": float(dice.quantile(0.05)), "p95": float(dice.quantile(0.95)),
            "mean_small_half": float(dice[small].mean()), "mean_large_half": float(dice[~small].mean()),
            "mean_irregular_half": float(dice[irregular].mean()), "mean_regular_half": float(dice[~irregular].mean())}


def main(argv: list[str] | None = None) -> dict:
    """Run the stages; print and return the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/agreement_bench"))
    parser.add_argument("--patients", type=int, default=290)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--model-patients", type=int, default=200)
    parser.add_argument("--model-seed", type=int, default=21)
    parser.add_argument("--stages", default="synth,model,agreement,perturb")
    args = parser.parse_args(argv)
    stages = set(args.stages.split(","))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    cohort, external, model = out / "cohort", out / "model_cohort", out / "model"
    figures_path = out / "agreement_benchmark.json"
    figures: dict = json.loads(figures_path.read_text()) if figures_path.exists() else {}
    figures.update({"patients": args.patients, "seed": args.seed})
    cache = ImageCache(out / "cache")
    experiment = load_experiment(packaged_experiment("synthetic_demo.yaml"))

    if "synth" in stages:
        from fusion_model.synthetic.generate import synthesize_cohort

        if not cohort.exists():
            synthesize_cohort(cohort, SynthConfig(patients=args.patients, seed=args.seed, second_reader=True))
        figures["second_reader_dice"] = second_reader_dice(cohort)
        d = figures["second_reader_dice"]
        print(f"second reader on {d['lesions']} lesions: Dice mean {d['mean']:.3f} (SD {d['sd']:.3f}, range "
              f"{d['min']:.3f}-{d['max']:.3f}); smaller half {d['mean_small_half']:.3f} vs larger "
              f"{d['mean_large_half']:.3f}; more irregular half {d['mean_irregular_half']:.3f} vs "
              f"{d['mean_regular_half']:.3f} (target: mean within 0.02 of 0.92)")

    if "model" in stages and not (model / "manifest.json").exists():
        from fusion_model import pipeline
        from fusion_model.synthetic.generate import synthesize_cohort

        if not external.exists():
            synthesize_cohort(external, SynthConfig(patients=args.model_patients, seed=args.model_seed))
        started = time.perf_counter()
        pipeline.train(experiment, external, model, cache, overwrite=True)
        figures["model_training_minutes"] = (time.perf_counter() - started) / 60

    from fusion_model.agreement.run import AgreementSettings, run_agreement

    for stage, settings in (("agreement", AgreementSettings()), ("perturb", AgreementSettings(perturb=True))):
        if stage not in stages:
            continue
        started = time.perf_counter()
        result = run_agreement(cohort, out / f"report_{stage}", settings,
                               model_dir=model if (model / "manifest.json").exists() else None, overwrite=True)
        seconds = time.perf_counter() - started
        m = result.metrics
        rows = {}
        for block in m["comparisons"]:
            entry = {"dice_mean": block["segmentation"]["dice"]["mean"], "dice_sd": block["segmentation"]["dice"]["sd"],
                     "features_below_0.75": block["features_below_0.75"]}
            for variant, p in block.get("model", {}).items():
                entry[variant] = {"probability_icc": (p["icc"]["icc2_1"] or {}).get("icc"),
                                  "mean_absolute_difference": p["mean_absolute_difference"], "flips": p["flips"],
                                  "auc_a": p.get("auc", {}).get("a"), "auc_b": p.get("auc", {}).get("b"),
                                  "p_value": p.get("auc", {}).get("p_value")}
            rows[block["name"]] = entry
        figures[stage] = {"lesions": m["lesions_compared"], "seconds": seconds, "comparisons": rows,
                          "peak_memory_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}
        print(f"{stage}: {m['lesions_compared']} lesions in {seconds:.1f} s (target < 120 s for the two-reader run)")
        for name, entry in rows.items():
            line = f"  {name}: Dice {entry['dice_mean']:.3f} ± {entry['dice_sd']:.3f}; ICC < 0.75: " \
                   f"{', '.join(entry['features_below_0.75']) or 'none'}"
            for variant in ("imaging", "imaging_radiological", "imaging_clinical", "all"):
                if variant in entry:
                    v = entry[variant]
                    line += (f"\n    {variant}: prob. ICC {v['probability_icc']:.3f}, mean |dp| "
                             f"{v['mean_absolute_difference']:.3f}, flips {v['flips']}, AUC {v['auc_a']:.3f} -> "
                             f"{v['auc_b']:.3f} (p {v['p_value']:.3f})")
            print(line)

    if "augment" in stages:
        from fusion_model import pipeline
        from fusion_model.synthetic.generate import synthesize_cohort

        if not external.exists():
            synthesize_cohort(external, SynthConfig(patients=args.model_patients, seed=args.model_seed))
        results = {}
        for masks in (["a"], ["a", "b"]):
            config = experiment.model_copy(update={"masks": masks})
            started = time.perf_counter()
            run = pipeline.train(config, cohort, out / f"augment_{'_'.join(masks)}", cache, overwrite=True)
            minutes = (time.perf_counter() - started) / 60
            predictions, _ = pipeline.predict(out / f"augment_{'_'.join(masks)}", external,
                                              out / f"augment_{'_'.join(masks)}.csv", cache)
            from fusion_model.stats import nan_safe_auc

            results["+".join(masks)] = {
                "oof_auc": run.model.oof_auc_, "encoder_oof_auc": run.model.encoder_.oof_auc_,
                "external_auc": {v: nan_safe_auc(predictions["label"], predictions[f"p_{v}"])
                                 for v in run.model.variants_}, "minutes": minutes}
            r = results["+".join(masks)]
            print(f"masks {masks}: encoder OOF AUC {r['encoder_oof_auc']:.3f}; OOF " +
                  ", ".join(f"{k} {v:.3f}" for k, v in r["oof_auc"].items()) + "; external " +
                  ", ".join(f"{k} {v:.3f}" for k, v in r["external_auc"].items()) + f"; {minutes:.1f} min")
        figures["augment"] = results

    figures_path.write_text(json.dumps(figures, indent=2, default=float) + "\n")
    print(f"wrote {figures_path}")
    return figures


if __name__ == "__main__":
    main()
