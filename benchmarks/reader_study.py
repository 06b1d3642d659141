"""`fusion-model reader-study`: the statistics checked, the reading application loaded, the chain run.

1. **Worked example**: the Van Dyke et al. (1993) data (tests/data/vandyke_ratings.csv) analysed with jackknife
   covariances, beside the figures OR-DBM MRMC 2.51 printed for it (largest absolute difference), and with
   DeLong covariances.
2. **Size and power by simulation** (Roe & Metz model, 5 readers, 50 + 50 cases): the random-readers
   random-cases test's rejection rate over ``--studies`` null studies per variance structure (target 5% +/-
   1.5%), and over as many studies where the aided modality's AUC is 0.05 higher (power), beside the
   closed-form power of Hillis, Obuchowski & Berbaum (2011) from the OR parameters averaged over the null
   studies.
3. **The chain on a synthetic cohort**: synth (train and an external test cohort), a model trained
   (``--experiment``, default the tiny test configuration), ``reader-study prepare`` (10 readers), the reading
   application served on localhost and read by 10 simulated browsers at once (page + every image of each case;
   per-case seconds, answers lost or duplicated), one case timed in headless Chromium until the viewer is ready
   (when Playwright and Chromium are there), then a simulated panel and the analysis on a copy.

    python benchmarks/reader_study.py --out runs/reader_bench [--studies 2000] [--patients 120] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fusion_model.reader_study.loadtest import ReadingServer, run_readers
from fusion_model.reader_study.mrmc import AUC, analyze_ratings, read_ratings_csv
from fusion_model.reader_study.roemetz import CONFIGS, rejection_rate

ROOT = Path(__file__).resolve().parents[1]
# OR-DBM MRMC 2.51, Van Dyke data, trapezoidal AUC, jackknife (as printed)
PUBLISHED = {"var_R": 0.00153500, "var_TR": 0.00020040, "cov1": 0.00034661, "cov2": 0.00034407, "cov3": 0.00023903,
             "var_error": 0.00080229, "F": 4.46, "ddf": 15.26, "p": 0.0517, "ci_low": -0.08796, "ci_high": 0.00036,
             "auc_1": 0.89703704, "auc_2": 0.94083736, "FRRC_X2": 5.47595, "RRFC_F": 8.70}
TINY = {"name": "tiny", "seed": 0, "preprocess": {"spacing_mm": 4.0, "crop_size_mm": 64},
        "encoder": {"width": 4, "depth": 2, "stem_stride": 2, "embedding_size": 8, "epochs": 3, "tta_views": 1},
        "xgboost": {"n_estimators": 60}, "split": {"folds": 3}}


def fm(*args) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "fusion_model.cli", *map(str, args)], capture_output=True,
                            text=True)
    if result.returncode:
        sys.exit(f"fusion-model {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


def worked_example() -> dict:
    ratings = read_ratings_csv(ROOT / "tests" / "data" / "vandyke_ratings.csv")
    jk = analyze_ratings(ratings, AUC, "jackknife")
    c = jk.covariances
    ours = {"var_R": jk.var_r, "var_TR": jk.var_tr, "cov1": c.cov1, "cov2": c.cov2, "cov3": c.cov3,
            "var_error": c.var, "F": jk.analyses["RRRC"].statistic, "ddf": jk.analyses["RRRC"].df2,
            "p": jk.analyses["RRRC"].p, "ci_low": jk.analyses["RRRC"].differences[0].ci[0],
            "ci_high": jk.analyses["RRRC"].differences[0].ci[1], "auc_1": jk.modality_means[0],
            "auc_2": jk.modality_means[1], "FRRC_X2": jk.analyses["FRRC"].statistic,
            "RRFC_F": jk.analyses["RRFC"].statistic}
    differences = {k: abs(ours[k] - v) for k, v in PUBLISHED.items()}
    dl = analyze_ratings(ratings, AUC, "delong").analyses["RRRC"]
    print("1. Van Dyke worked example (jackknife) against OR-DBM MRMC 2.51:")
    for k in PUBLISHED:
        print(f"   {k:10s} ours {ours[k]: .8f}  published {PUBLISHED[k]: .8f}  |diff| {differences[k]:.1e}")
    print(f"   DeLong covariances: F {dl.statistic:.4f}, ddf {dl.df2:.2f}, p {dl.p:.4f}, "
          f"difference CI {dl.differences[0].ci[0]:.5f} to {dl.differences[0].ci[1]:.5f}")
    return {"ours": ours, "published": PUBLISHED, "abs_differences": differences,
            "delong": {"F": dl.statistic, "ddf": dl.df2, "p": dl.p, "ci": list(dl.differences[0].ci)}}


def simulations(studies: int) -> dict:
    print(f"2. Roe-Metz simulations, {studies} studies each (5 readers, 50 + 50 cases, DeLong):")
    out = {}
    for name, config in CONFIGS.items():
        start = time.perf_counter()
        null = rejection_rate(config, studies, seed=1)
        effect = rejection_rate(config.with_auc_difference(0.05), studies, seed=2)
        closed = null.closed_form_power(0.05)
        out[name] = {"auc": config.expected_auc(0), "null_rejection_rate": null.rejection_rate,
                     "null_rejection_se": null.rejection_rate_se, "power_simulated": effect.rejection_rate,
                     "power_closed_form": closed["power"], "closed_form_ddf": closed["ddf"],
                     "mean_or_parameters": null.mean_or_parameters, "seconds": time.perf_counter() - start}
        print(f"   {name:22s} AUC {config.expected_auc(0):.3f}: size {null.rejection_rate:.4f} "
              f"(SE {null.rejection_rate_se:.4f}; target 0.050 +/- 0.015); power at +0.05: simulated "
              f"{effect.rejection_rate:.3f}, closed form {closed['power']:.3f} ({out[name]['seconds']:.1f} s)")
    return out


def browser_case_seconds(study: Path, token: str, cases: int = 5) -> list[float] | None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        return None
    ready = "() => { const s = document.getElementById('viewer').fmState; return s && (s.ready || s.error); }"
    seconds, stages = [], []
    with ReadingServer(study) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic"])
        page = browser.new_page()
        page.goto(f"{server.url}/")
        page.fill("#code", "R01")
        page.fill("#token", token)
        page.click("#sign-in")
        page.wait_for_function(ready, timeout=60000)
        for _ in range(cases):
            page.fill("#likelihood", "50")
            page.check("input[name=scale5][value='3']")
            page.select_option("#lesion_type", "adenoma")
            page.check("input[name=confidence][value='3']")
            start = time.perf_counter()
            page.click("#submit")
            page.wait_for_function(ready, timeout=60000)
            seconds.append(time.perf_counter() - start)
            timing = page.evaluate("() => { const n = performance.getEntriesByType('navigation')[0];"
                                   " return [n.responseEnd, n.domContentLoadedEventEnd,"
                                   " document.getElementById('viewer').fmState.readyAt]; }")
            stages.append(timing)
        browser.close()
    stages = np.median(np.array(stages), axis=0) / 1000
    print(f"   in the browser (median, from the page's request): page received {stages[0]:.3f} s, scripts parsed "
          f"{stages[1]:.3f} s, viewer ready with every volume {stages[2]:.3f} s (software WebGL)")
    return seconds


def chain(out: Path, patients: int, experiment: Path | None, reuse: bool) -> dict:
    import yaml

    print("3. The chain on a synthetic cohort:")
    work = out / "work"
    if not reuse and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    env_cache = work / "cache"
    timings = {}
    if not (work / "model").exists():
        start = time.perf_counter()
        fm("synth", "--out", work / "train", "--patients", patients, "--seed", 41, "--overwrite")
        fm("synth", "--out", work / "test", "--patients", max(patients // 2, 40), "--seed", 42, "--overwrite")
        config = experiment
        if config is None:
            config = work / "tiny.yaml"
            config.write_text(yaml.safe_dump(TINY))
        fm("train", "--config", config, "--cohort", work / "train", "--out", work / "model", "--cache", env_cache)
        timings["synth_and_train_seconds"] = time.perf_counter() - start
    readers = [f"R{k:02d}" for k in range(1, 11)]
    study = work / "study"
    start = time.perf_counter()
    fm("reader-study", "prepare", "--model", work / "model", "--cohort", work / "test", "--out", study,
       "--readers", ",".join(readers), "--design", "sequential", "--cases", 30, "--seed", 3, "--cache", env_cache,
       "--overwrite")
    timings["prepare_seconds"] = time.perf_counter() - start
    import pandas as pd

    tokens = pd.read_csv(study / "private" / "reader_tokens.csv").set_index("reader")["token"].to_dict()
    simulated = work / "study-simulated"
    if simulated.exists():
        shutil.rmtree(simulated)
    shutil.copytree(study, simulated)
    with ReadingServer(study) as server:
        load = run_readers(server.url, tokens, seed=0)
    from fusion_model.reader_study.store import AnswerStore

    readings = AnswerStore(study / "answers.sqlite").readings()
    expected = 10 * 60
    duplicated = int(readings.duplicated(["reader", "session", "position"]).sum())
    case_seconds = np.array(load["case_seconds"])
    print(f"   prepare: 30 cases, 10 readers, {timings['prepare_seconds']:.1f} s")
    print(f"   10 readers at once over HTTP: {len(readings)} of {expected} answers recorded, {duplicated} duplicated; "
          f"per case (page + every image) median {np.median(case_seconds):.3f} s, 95th percentile "
          f"{np.percentile(case_seconds, 95):.3f} s, max {case_seconds.max():.3f} s; wall {load['wall_seconds']:.1f} s")
    browser = browser_case_seconds(simulated, tokens["R01"])
    if browser:
        print(f"   headless Chromium, answer to the next case's viewer ready: median "
              f"{statistics.median(browser):.3f} s, max {max(browser):.3f} s over {len(browser)} cases")
    shutil.rmtree(simulated)
    shutil.copytree(study, simulated, ignore=shutil.ignore_patterns("answers.sqlite*"))
    fm("reader-study", "simulate", simulated, "--seed", 7)
    fm("reader-study", "analyze", simulated, "--out", out / "report", "--overwrite")
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    auc = metrics["analyses"]["auc"]
    d = auc["analyses"]["RRRC"]["differences"][0]
    print(f"   simulated panel: AUC unaided {auc['modality_means']['unaided']:.3f}, aided "
          f"{auc['modality_means']['aided']:.3f}, model alone {metrics['model_alone']['auc']:.3f}; aided - unaided "
          f"{d['estimate']:+.3f} (95% CI {d['ci'][0]:+.3f} to {d['ci'][1]:+.3f}), p {d['p']:.4f}")
    return {"timings": timings, "answers_recorded": int(len(readings)), "answers_expected": expected,
            "answers_duplicated": duplicated, "case_seconds_median": float(np.median(case_seconds)),
            "case_seconds_p95": float(np.percentile(case_seconds, 95)), "case_seconds_max": float(case_seconds.max()),
            "load_wall_seconds": load["wall_seconds"], "browser_case_seconds": browser,
            "simulated_panel": {"auc": auc["modality_means"], "model_alone": metrics["model_alone"]["auc"],
                                "difference": d}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/reader_bench"))
    parser.add_argument("--studies", type=int, default=2000)
    parser.add_argument("--patients", type=int, default=120)
    parser.add_argument("--experiment", type=Path, default=None, help="experiment YAML of the model (default tiny)")
    parser.add_argument("--reuse", action="store_true", help="keep the synthetic cohorts and the model of a "
                                                             "previous run")
    parser.add_argument("--skip-chain", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    figures = {"worked_example": worked_example(), "simulations": simulations(args.studies)}
    if not args.skip_chain:
        figures["chain"] = chain(args.out, args.patients, args.experiment, args.reuse)
    (args.out / "figures.json").write_text(json.dumps(figures, indent=1, default=str))
    print(f"figures in {args.out / 'figures.json'}")


if __name__ == "__main__":
    main()
