"""Benchmark: synthetic cohort generation and first/second preprocessing pass.

    python benchmarks/synth_throughput.py --patients 200

Prints wall time, lesions per second, disk size and peak RSS. Target: 200 lesions
at default size in under 60 s on 2 cores.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=190, help="about 8%% of patients get a second lesion")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()

    from fusion_model.cohort import load_cohort
    from fusion_model.config import PreprocessConfig, SynthConfig
    from fusion_model.imaging.cache import ImageCache
    from fusion_model.synthetic.generate import synthesize_cohort

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cohort"
        start = time.perf_counter()
        synthesize_cohort(out, SynthConfig(patients=args.patients, seed=args.seed, workers=args.workers),
                          progress=False)
        synth_s = time.perf_counter() - start
        cohort = load_cohort(out)
        lesions = len(cohort.table)
        size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
        cache = ImageCache(Path(tmp) / "cache")
        timings = []
        for _ in range(2):
            start = time.perf_counter()
            images = cohort.images(PreprocessConfig(), cache, progress=False)
            timings.append(time.perf_counter() - start)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        children_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"command: {' '.join([sys.executable.split('/')[-1], *sys.argv])}")
    print(f"synth: {lesions} lesions ({args.patients} patients) in {synth_s:.1f} s = {lesions / synth_s:.1f} lesions/s, "
          f"{size_mb:.0f} MB on disk (target: 200 lesions < 60 s)")
    print(f"crops + features, first pass: {timings[0]:.1f} s ({lesions / timings[0]:.1f} lesions/s); "
          f"second pass from cache: {timings[1]:.1f} s; crops {tuple(images.crops.shape)}")
    print(f"peak RSS: main {peak_mb:.0f} MB, largest worker {children_mb:.0f} MB")


if __name__ == "__main__":
    main()
