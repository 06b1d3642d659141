"""Benchmark: explaining new lesions and a whole case review.

    python benchmarks/explain_speed.py --model runs/NAME --cohort DIR [--lesions 20]

1. One new lesion at a time, from its image files (empty cache: NIfTI read, resample, crop,
   radiological features) to the calibrated probability, its SHAP values and the Grad-CAM
   saliency, after the model is loaded. Target: under 1 s per lesion on 2 cores.
   The case card (two figures and the HTML) is timed separately.
2. The whole case review (`explain_cohort`) of the cohort, with an empty image cache and again
   with a warm one. Target: 300 lesions in under 2 minutes.

Prints the figures and peak RSS. `fusion-model demo` writes a model and cohorts to try it on.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--cohort", type=Path, required=True)
    parser.add_argument("--lesions", type=int, default=20, help="new lesions timed one by one")
    parser.add_argument("--skip-review", action="store_true", help="time single lesions only")
    args = parser.parse_args()

    import torch

    from fusion_model.artifact import load_model
    from fusion_model.cohort import load_cohort
    from fusion_model.explain.run import CaseExplainer, case_context, explain_cohort, render_case
    from fusion_model.imaging.cache import ImageCache
    from fusion_model.pipeline import lesion_data

    print(f"torch threads: {torch.get_num_threads()}")
    start = time.perf_counter()
    model = load_model(args.model)
    explainer = CaseExplainer(model)
    print(f"model loaded in {time.perf_counter() - start:.2f} s (not counted below); variant {explainer.variant}")
    cohort = load_cohort(args.cohort)
    ids = cohort.table["lesion_id"].tolist()[: args.lesions]
    channels = model.manifest_["cohort"]["channels"]
    compute, render = [], []
    with tempfile.TemporaryDirectory() as cache_dir:
        for lesion_id in ids:
            cache = ImageCache(Path(cache_dir) / lesion_id)  # empty: the lesion is new
            t0 = time.perf_counter()
            data, errors, _ = lesion_data(cohort.subset([lesion_id]), model.config, cache, progress=False)
            explained = explainer.explain(data)
            t1 = time.perf_counter()
            c = explained.contributions
            context = case_context(lesion_id, data.table.iloc[0], explained.predictions.iloc[0], c, 0, model,
                                   explainer.variant)
            render_case(context, data.crops[0], explained.lesions[0].saliency, channels, c.values.iloc[0],
                        c.shap.iloc[0], c.base, "now")
            t2 = time.perf_counter()
            compute.append(t1 - t0)
            render.append(t2 - t1)
    print(f"first new lesion (includes one-time warm-up of torch and the explainers): {compute[0]:.3f} s")
    rest = compute[1:] or compute
    print(f"one new lesion, image files -> probability + SHAP + saliency (next {len(rest)} lesions): "
          f"median {statistics.median(rest):.3f} s, max {max(rest):.3f} s (target < 1 s)")
    print(f"  + its case card (waterfall, CT slices, HTML): median {statistics.median(render):.3f} s")

    if not args.skip_review:
        with tempfile.TemporaryDirectory() as tmp:
            for label, cache in (("empty cache", Path(tmp) / "cache"), ("warm cache", Path(tmp) / "cache")):
                start = time.perf_counter()
                result = explain_cohort(args.model, args.cohort, Path(tmp) / f"out-{label}", ImageCache(cache),
                                        progress=False)
                elapsed = time.perf_counter() - start
                t = result.timings
                print(f"case review of {len(result.lesion_ids)} lesions, {label}: {elapsed:.1f} s "
                      f"(read {t['read_seconds']:.1f}, SHAP {t['shap_seconds']:.2f}, saliency "
                      f"{t['saliency_seconds']:.1f}, cards {t['render_seconds']:.1f}, global + write "
                      f"{t['global_and_write_seconds']:.1f}) (target: 300 lesions < 120 s)")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print(f"command: python benchmarks/explain_speed.py --model {args.model} --cohort {args.cohort} "
          f"--lesions {args.lesions}")


if __name__ == "__main__":
    main()
