"""Benchmark: AdrenalMNIST3D (real adrenal masks from CT), imaging-only and fused models.

    python benchmarks/adrenalmnist3d.py ../shared/data/adrenalmnist3d/adrenalmnist3d_64_trainval.npz \
        [--eval-npz OTHER.npz] [--config experiments/adrenalmnist3d.yaml] [--out reports/adrenalmnist3d]

Imports the npz (any of train / val / test) as a cohort, trains the imaging-only and the fused
(imaging + the mask's shape features) models on `train`, and evaluates them on every other split
of the same npz, and on every split of --eval-npz if given (e.g. a test split kept elsewhere).
Prints AUC (95% CI, DeLong) and accuracy (p >= 0.5, as MedMNIST reports it; 95% Wilson CI) per
split, wall time and peak memory, and writes the usual evaluation report per split.
Target: on ../shared's val split, fused AUC >= 0.90 and accuracy >= 0.86, in under
15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

MEDMNIST_V2_BASELINES = (
    "Published MedMNIST v2 baselines for AdrenalMNIST3D (Yang et al. 2023, Scientific Data 10:41), test split, 28^3:",
    "  best AUC 0.839 (ResNet-18 + ACS); best ACC 0.802 (auto-sklearn).",
    "  They are on the test split, these figures on val: comparable in kind, not a like-for-like ranking.",
)


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("npz", type=Path)
    parser.add_argument("--eval-npz", type=Path, default=None)
    parser.add_argument("--config", type=Path, default=Path(__file__).parents[1] / "experiments" / "adrenalmnist3d.yaml")
    parser.add_argument("--out", type=Path, default=Path("reports/adrenalmnist3d"))
    parser.add_argument("--bootstrap", type=int, default=2000)
    args = parser.parse_args()

    from fusion_model import pipeline
    from fusion_model.config import load_experiment
    from fusion_model.datasets.medmnist import import_medmnist, load_medmnist_npz
    from fusion_model.evaluate.metrics import EvaluationSettings
    from fusion_model.evaluate.run import evaluate_model
    from fusion_model.imaging.cache import ImageCache

    config = load_experiment(args.config)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = ImageCache(tmp / "cache")
        cohort = import_medmnist(args.npz, tmp / "cohort", progress=False)
        splits = sorted(load_medmnist_npz(args.npz))
        print(f"imported {args.npz.name}: splits {splits} "
              f"({time.perf_counter() - start:.0f} s)")
        t = time.perf_counter()
        run = pipeline.train(config, cohort, tmp / "model", cache, progress=False)
        print(f"trained on 'train' in {time.perf_counter() - t:.0f} s; out-of-fold AUC on train:")
        for variant, fit in run.model.variants_.items():
            print(f"  {variant:22s} " + ", ".join(f"{k} {v:.3f}" for k, v in fit.oof_auc.items() if v is not None)
                  + f" (used: {fit.method})")
        targets = [(cohort, s) for s in splits if s != "train"]
        if args.eval_npz:
            other = import_medmnist(args.eval_npz, tmp / "eval_cohort", progress=False)
            targets += [(other, s) for s in sorted(load_medmnist_npz(args.eval_npz))]
        settings = EvaluationSettings(bootstrap_resamples=args.bootstrap)
        for cohort_dir, split in targets:
            name = f"{'eval-' if cohort_dir != cohort else ''}{split}"
            result = evaluate_model(tmp / "model", cohort_dir, args.out / name, cache, settings, overwrite=True,
                                    progress=False, split=split)
            m = result.metrics
            print(f"\n{name}: {m['cohort']['lesions']} glands, {m['cohort']['malignant']} label 1 "
                  f"(report: {args.out / name / 'report.html'})")
            for variant, r in m["models"].items():
                auc = r["auc"]
                point = next(p for p in r["operating_points"] if p.get("key") == "p_0.5")
                acc = point["accuracy"]
                print(f"  {variant:22s} AUC {auc['value']:.3f} (95% CI {auc['delong_ci'][0]:.3f}-"
                      f"{auc['delong_ci'][1]:.3f}; bootstrap {auc['bootstrap_ci'][0]:.3f}-"
                      f"{auc['bootstrap_ci'][1]:.3f})  accuracy {acc['value']:.3f} "
                      f"({acc['ci'][0]:.3f}-{acc['ci'][1]:.3f}) at p >= 0.5")
    print()
    for line in MEDMNIST_V2_BASELINES:
        print(line)
    print(f"\nwall time {time.perf_counter() - start:.0f} s (target < 900 s); peak RSS {_peak_rss_mb():.0f} MB")
    print(f"command: python benchmarks/adrenalmnist3d.py {args.npz} --config {args.config}"
          + (f" --eval-npz {args.eval_npz}" if args.eval_npz else ""))


if __name__ == "__main__":
    main()
