"""Benchmark: head-only hyperparameter search speed, with 1 and 2 worker processes on one study.

    python benchmarks/tune_speed.py [--patients 280] [--seconds 60]

Synthesises a cohort of about 300 lesions (or takes --cohort), trains the encoder once (the
first trial; its out-of-fold outputs are cached in the run folder), then runs the head-only
search of experiments/tune_demo.yaml for --seconds with one worker, with two worker processes
of one command (--jobs 2), and with two separate `fusion-model tune` commands on the same run
folder, all sharing one journal-file study. Prints trials per minute for each. Each worker sizes
its threads to its share of the cores, however it was started.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=280)
    parser.add_argument("--cohort", type=Path, default=None)
    parser.add_argument("--config", type=Path, default=Path(__file__).parents[1] / "experiments" / "tune_demo.yaml")
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()

    import optuna
    from optuna.trial import TrialState

    from fusion_model.config import SynthConfig
    from fusion_model.synthetic.generate import synthesize_cohort
    from fusion_model.tune.run import TuneRequest, tune
    from fusion_model.tune.storage import open_storage

    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cohort = args.cohort
        if cohort is None:
            start = time.perf_counter()
            cohort = synthesize_cohort(tmp / "cohort", SynthConfig(patients=args.patients, seed=5), progress=False)
            print(f"synthesised {args.patients} patients in {time.perf_counter() - start:.0f} s")
        out = tmp / "run"
        start = time.perf_counter()
        first = tune(TuneRequest(args.config, cohort, out, 1, cache=tmp / "cache"), progress=False,
                     write_outputs=False)
        lesions = first.study.trials[0].user_attrs.get("lesions")
        print(f"{lesions} training lesions; crops + encoder outputs (first trial) in "
              f"{time.perf_counter() - start:.0f} s")
        for jobs in (1, 2):
            before = len(first.study.get_trials(states=finished))
            start = time.perf_counter()
            result = tune(TuneRequest(args.config, cohort, out, 100_000, timeout_s=args.seconds, jobs=jobs,
                                      cache=tmp / "cache"), progress=False, write_outputs=False)
            elapsed = time.perf_counter() - start
            done = len(result.study.get_trials(states=finished)) - before
            pruned = len([t for t in result.study.get_trials(states=(TrialState.PRUNED,))])
            print(f"{jobs} worker process(es) of one command: {done} head-only trials in {elapsed:.0f} s = "
                  f"{60 * done / elapsed:.0f} trials/min (study now {before + done} trials, {pruned} pruned in all)")
        before = len(result.study.get_trials(states=finished))
        command = [sys.executable, "-m", "fusion_model.cli", "tune", "--config", str(args.config), "--cohort",
                   str(cohort), "--out", str(out), "--trials", "100000", "--timeout", f"{args.seconds:g}",
                   "--cache", str(tmp / "cache")]
        start = time.perf_counter()
        processes = [subprocess.Popen([*command, "--worker", str(10 + k)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True, encoding="utf-8")
                     for k in range(2)]
        for process in processes:
            _, stderr = process.communicate()
            if process.returncode:
                sys.exit(f"a tune command failed: {stderr.strip()}")
        elapsed = time.perf_counter() - start
        study = optuna.load_study(study_name=result.study.study_name, storage=open_storage(None, out))
        done = len(study.get_trials(states=finished)) - before
        print(f"2 separate tune commands on one run folder: {done} head-only trials in {elapsed:.0f} s = "
              f"{60 * done / elapsed:.0f} trials/min (each command's start-up, about 10 s, included)")
    print(f"peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print(f"command: python benchmarks/tune_speed.py --patients {args.patients} --seconds {args.seconds:g}")


if __name__ == "__main__":
    main()
