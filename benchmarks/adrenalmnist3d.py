"""Benchmark: AdrenalMNIST3D (real adrenal masks from CT), imaging-only and fused models.

    python benchmarks/adrenalmnist3d.py ../shared/data/adrenalmnist3d/adrenalmnist3d_64_trainval.npz \
        [--eval-npz OTHER.npz] [--config experiments/adrenalmnist3d.yaml] [--out reports/adrenalmnist3d] \
        [--repeats K] [--set encoder.width=24 ...] [--device cpu|cuda|auto]

Imports the npz (any of train / val / test) as a cohort, trains the imaging-only and the fused
(imaging + the mask's shape features) models on `train`, and evaluates them on every other split
of the same npz, and on every split of --eval-npz if given (e.g. a test split kept elsewhere).
Prints, per variant, the out-of-fold AUC on the training glands with its DeLong 95% CI (1188
glands: SE about 0.015, the development target to judge changes on, together with val) and, per
split, AUC (95% CI, DeLong) and accuracy (p >= 0.5, as MedMNIST reports it; 95% Wilson CI); wall
time and peak memory; the usual evaluation report per split. With an encoder trained with
``encoder.inference: final`` the val AUC is also given for the fold ensemble of the same run (both
inference modes on the same networks). ``--repeats K`` reruns with seeds S, S+1, ... and prints
each figure's mean and SD; ``--set KEY=VALUE`` (YAML value) changes one setting, for ablations.
Target: fused OOF-train AUC >= 0.875 and, on ../shared's val split, fused AUC >= 0.90 and accuracy
>= 0.86, in under 15 minutes on 2 cores.
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


def _parse_sets(items: list[str]) -> dict:
    import yaml

    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: write KEY=VALUE, e.g. encoder.width=24")
        params[key.strip()] = yaml.safe_load(value)
    return params


def _auc_ci(labels, scores) -> tuple[float, float, float]:
    from fusion_model import stats

    d = stats.delong(labels, scores)
    low, high = d.ci(0)
    return float(d.aucs[0]), float(low), float(high)


def run_once(args, config, seed: int, tmp: Path) -> dict:
    """One training run (and its evaluations) with this seed; its figures."""
    from fusion_model import pipeline
    from fusion_model.artifact import load_model
    from fusion_model.cohort import load_cohort
    from fusion_model.datasets.medmnist import import_medmnist, load_medmnist_npz
    from fusion_model.evaluate.metrics import EvaluationSettings
    from fusion_model.evaluate.run import evaluate_model
    from fusion_model.imaging.cache import ImageCache

    config = config.model_copy(update={"seed": seed})
    cache = ImageCache(tmp / "cache")
    cohort = tmp / "cohort"
    if not (cohort / "cohort.json").exists():
        import_medmnist(args.npz, cohort, progress=False)
    splits = sorted(load_medmnist_npz(args.npz))
    model_dir = tmp / f"model_seed{seed}"
    t = time.perf_counter()
    run = pipeline.train(config, cohort, model_dir, cache, progress=False, overwrite=True, device=args.device)
    figures = {"seed": seed, "training_seconds": time.perf_counter() - t, "oof": {}, "splits": {}}
    print(f"seed {seed}: trained on 'train' in {figures['training_seconds']:.0f} s; out-of-fold on the training "
          "glands:")
    oof = run.model.oof_
    labels = oof["label"].to_numpy(int)
    for variant, fit in run.model.variants_.items():
        auc, low, high = _auc_ci(labels, oof[f"p_{variant}"].to_numpy(float))
        figures["oof"][variant] = {"auc": auc, "ci95": [low, high], "method": fit.method, "learner": fit.learner,
                                   "candidates": {k: v for k, v in fit.oof_auc.items() if v is not None}}
        print(f"  {variant:22s} AUC {auc:.3f} (95% CI {low:.3f}-{high:.3f}); "
              + ", ".join(f"{k} {v:.3f}" for k, v in fit.oof_auc.items() if v is not None)
              + f" (used: {fit.method}{f' / {fit.learner}' if fit.learner else ''})")
    figures["oof"]["encoder_logit"] = {"auc": run.model.encoder_.oof_auc_}
    targets = [(cohort, s) for s in splits if s != "train"]
    if args.eval_npz:
        other = tmp / "eval_cohort"
        if not (other / "cohort.json").exists():
            import_medmnist(args.eval_npz, other, progress=False)
        targets += [(other, s) for s in sorted(load_medmnist_npz(args.eval_npz))]
    settings = EvaluationSettings(bootstrap_resamples=args.bootstrap)
    for cohort_dir, split in targets:
        name = f"{'eval-' if cohort_dir != cohort else ''}{split}"
        result = evaluate_model(model_dir, cohort_dir, args.out / f"seed{seed}" / name, cache, settings,
                                overwrite=True, progress=False, split=split)
        m = result.metrics
        print(f"  {name}: {m['cohort']['lesions']} glands, {m['cohort']['malignant']} label 1")
        block = {}
        for variant, r in m["models"].items():
            auc = r["auc"]
            acc = next(p for p in r["operating_points"] if p.get("key") == "p_0.5")["accuracy"]
            block[variant] = {"auc": auc["value"], "ci95": auc["delong_ci"], "accuracy": acc["value"],
                              "accuracy_ci95": acc["ci"]}
            print(f"    {variant:22s} AUC {auc['value']:.3f} (95% CI {auc['delong_ci'][0]:.3f}-"
                  f"{auc['delong_ci'][1]:.3f})  accuracy {acc['value']:.3f} "
                  f"({acc['ci'][0]:.3f}-{acc['ci'][1]:.3f}) at p >= 0.5")
        model = load_model(model_dir)
        if hasattr(model.encoder_, "model_"):  # a final network too: the fold ensemble on the same lesions
            data, _, _ = pipeline.lesion_data(load_cohort(cohort_dir).select(split=split), model.config, cache,
                                              progress=False)
            y = data.table["label"].astype(int).to_numpy()
            final = model.predict_variants(data)
            model.encoder_.inference_ = "fold_ensemble"
            ensemble = model.predict_variants(data)
            block["inference"] = {v: {"final": _auc_ci(y, final[f"p_{v}"].to_numpy())[0],
                                      "fold_ensemble": _auc_ci(y, ensemble[f"p_{v}"].to_numpy())[0]}
                                  for v in model.variants_}
            print("    inference: " + "; ".join(f"{v} final {a['final']:.3f}, fold ensemble {a['fold_ensemble']:.3f}"
                                                 for v, a in block["inference"].items()))
        figures["splits"][name] = block
    return figures


def _summary(runs: list[dict]) -> dict:
    """Mean and SD over repeats of every AUC."""
    import numpy as np

    out: dict = {"oof": {}, "splits": {}}
    for variant in runs[0]["oof"]:
        values = [r["oof"][variant]["auc"] for r in runs]
        out["oof"][variant] = {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1
                               else None}
    for split, block in runs[0]["splits"].items():
        out["splits"][split] = {}
        for variant in block:
            if variant == "inference":
                continue
            for key in ("auc", "accuracy"):
                values = [r["splits"][split][variant][key] for r in runs]
                out["splits"][split][f"{variant} {key}"] = {
                    "mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None}
    return out


def main() -> None:
    """Run the benchmark and print its figures."""
    import json

    parser = argparse.ArgumentParser()
    parser.add_argument("npz", type=Path)
    parser.add_argument("--eval-npz", type=Path, default=None)
    parser.add_argument("--config", type=Path, default=Path(__file__).parents[1] / "experiments" / "adrenalmnist3d.yaml")
    parser.add_argument("--out", type=Path, default=Path("reports/adrenalmnist3d"))
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=1, help="runs with seeds S, S+1, ...: mean and SD")
    parser.add_argument("--seed", type=int, default=None, help="first seed (default: the config's)")
    parser.add_argument("--device", default="cpu", help="where the encoder trains: cpu (the target's), cuda or auto")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="change one setting of the config (dotted key, YAML value); repeatable")
    args = parser.parse_args()

    from fusion_model.config import load_experiment, with_params

    config = load_experiment(args.config)
    params = _parse_sets(args.sets)
    if params:
        config = with_params(config, params)
    first_seed = config.seed if args.seed is None else args.seed
    start = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            runs.append(run_once(args, config, first_seed + r, Path(tmp)))
    figures = {"npz": str(args.npz), "config": str(args.config), "set": params, "device": args.device, "runs": runs,
               "wall_seconds": time.perf_counter() - start, "peak_rss_mb": _peak_rss_mb()}
    if args.repeats > 1:
        figures["summary"] = _summary(runs)
        print(f"\nover {args.repeats} seeds (mean, SD):")
        for variant, v in figures["summary"]["oof"].items():
            print(f"  OOF {variant:22s} {v['mean']:.3f} ({v['sd']:.3f})")
        for split, block in figures["summary"]["splits"].items():
            for key, v in block.items():
                print(f"  {split} {key:30s} {v['mean']:.3f} ({v['sd']:.3f})")
    print()
    for line in MEDMNIST_V2_BASELINES:
        print(line)
    wall = figures["wall_seconds"] / args.repeats
    print(f"\nwall time {wall:.0f} s per run (target < 900 s); peak RSS {figures['peak_rss_mb']:.0f} MB")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark.json").write_text(json.dumps(figures, indent=2, default=float) + "\n")
    print(f"command: python benchmarks/adrenalmnist3d.py {args.npz} --config {args.config}"
          + (f" --eval-npz {args.eval_npz}" if args.eval_npz else "")
          + (f" --seed {args.seed}" if args.seed is not None else "")
          + (f" --repeats {args.repeats}" if args.repeats > 1 else "")
          + "".join(f" --set {s}" for s in args.sets)
          + (f" --device {args.device}" if args.device != "cpu" else "")
          + f"; figures in {args.out / 'benchmark.json'}")


if __name__ == "__main__":
    main()
