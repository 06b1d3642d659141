"""Benchmark: the lesion-extraction pass (read + resample + crop + radiological features) on a Dask cluster.

    python benchmarks/distributed_extraction.py --out runs/distributed [--patients 1000 --workers 2 --studies 6]

1. ``fusion-model synth`` writes a cohort of ``--patients`` (reused when OUT/cohort exists).
2. The pass in this process, into an empty cache: seconds and lesions per second (after a pass over a few
   lesions into a scratch cache, so that the process's first imports are not timed).
3. The same on a local cluster of ``--workers`` processes (``--workers N`` of the commands), into another empty
   cache: cluster start (with the workers' first imports, a pass over a few lesions), pass seconds, lesions per
   second and the speed-up over one process, without and with the start; the two caches
   compared file by file (byte-identical) and the crops and features compared.
4. Again with one worker process killed (SIGKILL) once half the lesions are in the cache: the pass completes and
   its cache and results are compared with the single-process ones.
5. Scheduler overhead per lesion: the pass over a warm cache (every task a cache hit: a few ms of work) on one
   worker (after a first pass, so the worker has imported its modules) against this process, and a no-op task's
   round trip.
6. Cost model: ``--studies`` real-size CT studies (two phases of 512 x 512 x 300 voxels at 0.7 x 0.7 x 1.0 mm,
   gzip NIfTI, soft-tissue noise everywhere, a phantom's abdomen and lesion in the middle) are generated. Seconds
   per study in one process (the default path), and on one worker process (one thread, as every worker runs:
   two studies timed after a warm-up one) give the model ``hours(N studies, K workers) = ceil(N / K) * w / 3600``
   with ``w`` the seconds per study on a worker; its prediction for the studies on ``--workers`` workers is
   checked against the measured run.

With ``--repeats R``, R - 1 more pairs of passes (one process, then a cluster kept warm between them) after step 3:
each pair's speed-up and their median (a single pair varies with the machine's load).

Every figure is printed and written to OUT/distributed_extraction.json. Targets: speed-up >= 1.7 with 2 workers on
2 cores, identical output with a worker killed halfway, scheduler overhead < 5 ms per lesion.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from fusion_model.cohort import load_cohort
from fusion_model.config import PreprocessConfig, SynthConfig
from fusion_model.engine import Engine, EngineSettings
from fusion_model.imaging.cache import ImageCache

CONFIG = PreprocessConfig()  # the product's crops: 64 mm at 1 mm, every phase and the mask


def cache_digest(root: Path) -> tuple[int, str]:
    """How many files a cache holds and one SHA-256 over their names and contents."""
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return len(files), digest.hexdigest()


def run_pass(cohort_dir: Path, cache_dir: Path, engine: Engine, progress: bool = True, only: int | None = None):
    """One extraction pass (of the first ``only`` lesions, or all); its result and seconds."""
    cohort = load_cohort(cohort_dir)
    if only is not None:
        cohort = cohort.subset(cohort.table["lesion_id"].head(only))
    started = time.perf_counter()
    images = cohort.images(CONFIG, ImageCache(cache_dir), progress=progress, engine=engine)
    return images, time.perf_counter() - started


def same_results(a, b) -> bool:
    """The same lesions, crops, features and errors."""
    return (a.lesion_ids == b.lesion_ids and np.array_equal(a.crops, b.crops) and a.features.equals(b.features)
            and [e.__dict__ for e in a.errors] == [e.__dict__ for e in b.errors])


def kill_one_worker_halfway(engine: Engine, cache_dir: Path, lesions: int, record: dict) -> threading.Thread:
    """A thread that SIGKILLs one worker process once half the lesions' crops are in the cache."""
    victim = sorted(engine.client.run(os.getpid).values())[0]
    entries = cache_dir / "images"

    def watch() -> None:
        while True:
            done = len(list(entries.rglob("*.npy"))) if entries.exists() else 0
            if done >= lesions // 2:
                os.kill(victim, signal.SIGKILL)
                record.update(killed_pid=victim, crops_in_cache_at_kill=done)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def warm_up(cohort_dir: Path, out: Path, engine: Engine) -> None:
    """A pass over a few lesions into a scratch cache, so that the timed pass does not include the first imports of
    the process or of the workers (they count in the cluster's start)."""
    run_pass(cohort_dir, out / "cache-warm-up", engine, progress=False, only=2 * engine.workers)
    shutil.rmtree(out / "cache-warm-up")


def _noop(x):
    return x


def full_size_studies(cohort_dir: Path, out: Path, count: int, seed: int, skip: int = 0) -> Path:
    """A cohort of ``count`` real-size studies (of the patients after the first ``skip``): each phase 512 x 512 x
    300 voxels at 0.7 x 0.7 x 1.0 mm, soft-tissue noise everywhere and the synthetic patient's abdomen (and
    lesion) resampled into the middle."""
    import pandas as pd
    import SimpleITK as sitk
    from scipy import ndimage

    if (out / "clinical.csv").exists():
        return out
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "images").mkdir(parents=True)
    (staging / "masks").mkdir()
    shutil.copy(cohort_dir / "cohort.json", staging / "cohort.json")
    table = pd.read_csv(cohort_dir / "clinical.csv")
    patients = table.drop_duplicates("patient_id")["patient_id"].iloc[skip:skip + count]
    rows = table[table["patient_id"].isin(patients)].copy()
    rng = np.random.default_rng(seed)
    size, spacing = (512, 512, 300), (0.7, 0.7, 1.0)
    for patient in patients:
        first = rows[rows["patient_id"] == patient].iloc[0]
        mask = sitk.ReadImage(str(cohort_dir / first["mask_path"]))
        centre = np.array(mask.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in mask.GetSize()]))
        origin = centre - (np.array(size) - 1) / 2 * np.array(spacing)
        reference = sitk.Image(size, sitk.sitkInt16)
        reference.SetSpacing(spacing)
        reference.SetOrigin(origin.tolist())
        reference.SetDirection(mask.GetDirection())
        coarse = rng.standard_normal((10, 16, 16)).astype(np.float32)
        tissue = ndimage.zoom(coarse, (size[2] / 10, size[1] / 16, size[0] / 16), order=1)  # (z, y, x)
        tissue = np.clip(-20 + 60 * tissue, -110, 70)
        for column in [c for c in rows.columns if c.endswith("_path") and c != "mask_path"]:
            phase = sitk.ReadImage(str(cohort_dir / first[column]))
            inside = sitk.Resample(phase, reference, sitk.Transform(), sitk.sitkLinear, -5000, sitk.sitkInt16)
            array = sitk.GetArrayFromImage(inside).astype(np.float32)
            noise = 12 * rng.standard_normal(array.shape, dtype=np.float32)
            array = np.where(array <= -4000, tissue, array) + noise
            image = sitk.GetImageFromArray(np.clip(np.rint(array), -1024, 3071).astype(np.int16))
            image.CopyInformation(reference)
            sitk.WriteImage(image, str(staging / first[column]), useCompression=True)
        resampled = sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())
        sitk.WriteImage(resampled, str(staging / first["mask_path"]), useCompression=True)
    rows.to_csv(staging / "clinical.csv", index=False)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print and return its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/distributed"))
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--studies", type=int, default=6, help="real-size studies of the cost model (0: skip)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="pairs of passes (one process, then the cluster) for the speed-up; more than one: each "
                             "pair's speed-up and their median (this machine's timings vary between runs)")
    parser.add_argument("--steps", default="passes,cost",
                        help="passes (steps 2-5) and/or cost (step 6); the figures of a step not run are kept from OUT")
    args = parser.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    cohort_dir = out / "cohort"
    steps = set(args.steps.split(","))
    result_file = out / "distributed_extraction.json"
    figures: dict = json.loads(result_file.read_text()) if result_file.exists() else {}
    figures.update({"command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
                    "patients": args.patients, "workers": args.workers, "cpu_cores": os.cpu_count()})
    if not cohort_dir.exists():
        from fusion_model.synthetic.generate import synthesize_cohort

        synthesize_cohort(cohort_dir, SynthConfig(patients=args.patients, seed=args.seed))
    if "passes" in steps:
        run_passes(cohort_dir, out, args.workers, figures)
        if args.repeats > 1:
            repeat_pairs(cohort_dir, out, args.workers, args.repeats - 1, figures)
    if "cost" in steps and args.studies:
        cost_model(cohort_dir, out, args.workers, args.studies, args.seed, figures)
    result_file.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def run_passes(cohort_dir: Path, out: Path, workers: int, figures: dict) -> None:
    """Steps 2-5: one process, the local cluster, a worker killed, the scheduler's overhead."""
    for name in ("cache-serial", "cache-workers", "cache-killed"):
        shutil.rmtree(out / name, ignore_errors=True)

    warm_up(cohort_dir, out, Engine())
    serial, serial_s = run_pass(cohort_dir, out / "cache-serial", Engine())
    lesions = len(serial.lesion_ids) + len(serial.errors)
    figures["lesions"] = lesions
    figures["single_process"] = {"seconds": serial_s, "lesions_per_s": lesions / serial_s}
    print(f"one process: {lesions} lesions in {serial_s:.1f} s ({lesions / serial_s:.2f} lesions/s)", flush=True)

    started = time.perf_counter()
    with Engine(EngineSettings(workers=workers)) as engine:
        warm_up(cohort_dir, out, engine)
        start_s = time.perf_counter() - started
        parallel, parallel_s = run_pass(cohort_dir, out / "cache-workers", engine)
    speedup = serial_s / parallel_s
    identical = cache_digest(out / "cache-serial") == cache_digest(out / "cache-workers")
    figures["local_cluster"] = {
        "cluster_start_s": start_s, "seconds": parallel_s, "lesions_per_s": lesions / parallel_s,
        "speedup": speedup, "speedup_with_start": serial_s / (parallel_s + start_s),
        "parallel_efficiency": speedup / workers, "cache_byte_identical": identical,
        "results_identical": same_results(serial, parallel), "cache_files": cache_digest(out / "cache-serial")[0]}
    print(f"{workers} workers: {parallel_s:.1f} s ({lesions / parallel_s:.2f} lesions/s), speed-up "
          f"{speedup:.2f}x ({serial_s / (parallel_s + start_s):.2f}x counting the cluster's {start_s:.1f} s start and "
          "first imports); "
          f"cache byte-identical: {identical}", flush=True)

    killed: dict = {}
    with Engine(EngineSettings(workers=workers)) as engine:
        watcher = kill_one_worker_halfway(engine, out / "cache-killed", lesions, killed)
        after_kill, killed_s = run_pass(cohort_dir, out / "cache-killed", engine)
        watcher.join(timeout=1)
    figures["worker_killed"] = {
        **killed, "seconds": killed_s, "completed": len(after_kill.lesion_ids) + len(after_kill.errors) == lesions,
        "cache_byte_identical": cache_digest(out / "cache-serial") == cache_digest(out / "cache-killed"),
        "results_identical": same_results(serial, after_kill)}
    print(f"one worker killed after {killed.get('crops_in_cache_at_kill')} crops: {killed_s:.1f} s, results "
          f"identical: {figures['worker_killed']['results_identical']}, cache identical: "
          f"{figures['worker_killed']['cache_byte_identical']}", flush=True)

    _, warm_serial_s = run_pass(cohort_dir, out / "cache-serial", Engine(), progress=False)
    with Engine(EngineSettings(workers=1)) as engine:
        run_pass(cohort_dir, out / "cache-serial", engine, progress=False)  # the worker imports its modules once
        _, warm_one_s = run_pass(cohort_dir, out / "cache-serial", engine, progress=False)
        tasks = 2000
        started = time.perf_counter()
        list(engine.map(_noop, list(range(tasks)), "no-op tasks", progress=False))
        noop_ms = (time.perf_counter() - started) / tasks * 1000
    overhead_ms = (warm_one_s - warm_serial_s) / lesions * 1000
    figures["scheduler_overhead"] = {"warm_cache_serial_ms_per_lesion": warm_serial_s / lesions * 1000,
                                     "warm_cache_one_worker_ms_per_lesion": warm_one_s / lesions * 1000,
                                     "overhead_ms_per_lesion": overhead_ms, "noop_task_ms": noop_ms}
    print(f"scheduler overhead: {overhead_ms:.2f} ms per lesion (warm cache: {warm_serial_s / lesions * 1000:.2f} ms "
          f"in this process, {warm_one_s / lesions * 1000:.2f} ms on one worker); a no-op task {noop_ms:.2f} ms",
          flush=True)


def repeat_pairs(cohort_dir: Path, out: Path, workers: int, pairs: int, figures: dict) -> None:
    """``pairs`` more pairs of timed passes (one process, then the same cluster, each into an empty cache); every
    pair's speed-up, the first pair's included, and their median."""
    import statistics

    speedups = [figures["local_cluster"]["speedup"]]
    with Engine(EngineSettings(workers=workers)) as engine:
        warm_up(cohort_dir, out, engine)
        for pair in range(pairs):
            for name in ("cache-serial-again", "cache-workers-again"):
                shutil.rmtree(out / name, ignore_errors=True)
            _, serial_s = run_pass(cohort_dir, out / "cache-serial-again", Engine(), progress=False)
            _, parallel_s = run_pass(cohort_dir, out / "cache-workers-again", engine, progress=False)
            speedups.append(serial_s / parallel_s)
            print(f"pair {pair + 2}: one process {serial_s:.1f} s, {workers} workers {parallel_s:.1f} s, speed-up "
                  f"{speedups[-1]:.2f}x", flush=True)
    for name in ("cache-serial-again", "cache-workers-again"):
        shutil.rmtree(out / name, ignore_errors=True)
    figures["local_cluster"]["speedup_each_pair"] = speedups
    figures["local_cluster"]["speedup_median"] = statistics.median(speedups)
    print(f"speed-up over {len(speedups)} pairs: median {statistics.median(speedups):.2f}x "
          f"(from {min(speedups):.2f}x to {max(speedups):.2f}x)", flush=True)


def cost_model(cohort_dir: Path, out: Path, workers: int, count: int, seed: int, figures: dict) -> None:
    """Step 6: seconds per real-size study in one process and on one worker; the prediction for ``count`` studies
    on ``workers`` workers against the measured run."""
    studies = full_size_studies(cohort_dir, out / "full-size", count, seed)
    for name in ("cache-studies-serial", "cache-studies-one", "cache-studies-workers"):
        shutil.rmtree(out / name, ignore_errors=True)
    one, one_s = run_pass(studies, out / "cache-studies-serial", Engine())
    per_study = one_s / count
    calibration = full_size_studies(cohort_dir, out / "calibration", 3, seed + 1, skip=count)
    with Engine(EngineSettings(workers=1)) as engine:
        run_pass(calibration, out / "cache-studies-one", engine, progress=False, only=1)  # warm-up: imports
        _, calibration_s = run_pass(calibration, out / "cache-studies-one", engine, progress=False)
    per_worker_study = calibration_s / 2  # the two studies the warm-up did not read
    predicted = math.ceil(count / workers) * per_worker_study
    with Engine(EngineSettings(workers=workers)) as engine:
        many, many_s = run_pass(studies, out / "cache-studies-workers", engine)
    figures["cost_model"] = {
        "study": "2 phases of 512 x 512 x 300 int16 at 0.7 x 0.7 x 1.0 mm, gzip NIfTI, one lesion",
        "studies": count, "seconds_per_study_one_process": per_study,
        "seconds_per_study_one_worker": per_worker_study,
        "predicted_s_on_workers": predicted, "measured_s_on_workers": many_s,
        "prediction_error": predicted / many_s - 1, "results_identical": same_results(one, many),
        "hours_10000_studies": {k: math.ceil(10000 / k) * per_worker_study / 3600 for k in (1, 2, 8, 32, 128)}}
    print(f"cost model: {per_study:.1f} s per real-size study in one process, {per_worker_study:.1f} s on one "
          f"worker; {count} studies on {workers} workers predicted {predicted:.1f} s, measured {many_s:.1f} s "
          f"({100 * (predicted / many_s - 1):+.0f}%); 10,000 studies: " + ", ".join(
              f"{k} workers {h:.1f} h" for k, h in figures["cost_model"]["hours_10000_studies"].items()),
          flush=True)


if __name__ == "__main__":
    main()
