"""Lesion-type heads against the generator's exact type posterior, on a three-phase synthetic cohort.

``fusion-model synth --patients 1000 --seed 21 --phases unenhanced,arterial,venous``, then the demo experiment
(experiments/synthetic_demo.yaml, which includes ``targets: [malignancy, lesion_type]``) trained with 5-fold
cross-validation on every lesion, once per phase set given (default: all three phases together; e.g.
``--phase-sets unenhanced arterial venous unenhanced,arterial,venous`` for the per-phase comparison). For each:
the out-of-fold one-vs-rest AUC per type and macro of every variant's subtype head, beside the oracle
(truth.csv's ``oracle_type_*``, the exact posterior given what that phase set shows) on the same lesions, with
DeLong CIs and DeLong's paired test per type against the all-phase model; the time the subtype heads took and
its share of the training time.

Targets: the ``all`` variant's macro AUC within 0.05 of the oracle's, each type within 0.08; subtype heads
< 20% of training time; adding phases never lowers the macro AUC beyond its CI.

    python benchmarks/subtype.py --out runs/subtype_bench [--patients 1000 --seed 21]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fusion_model import stats
from fusion_model.config import SynthConfig, load_experiment, packaged_experiment
from fusion_model.evaluate.subtype import oracle_probabilities
from fusion_model.heads.subtype import SubtypeClasses
from fusion_model.imaging.cache import ImageCache

ALL_PHASES = "unenhanced,arterial,venous"


def _cohorts(out: Path, patients: int, seed: int, phases: list[str]) -> Path:
    """The three-phase cohort, or a view of it with fewer phases: the same lesions, images and table, with the
    other phases' columns dropped and truth.csv's type posterior recomputed for what those phases show."""
    from clinical_schema import LAB_COLUMNS, PATH_COLUMNS
    from fusion_model.synthetic.generate import observed_variables, synthesize_cohort
    from fusion_model.synthetic.profiles import oracle_risk, oracle_type_posterior

    full = out / "cohort"
    if not full.exists():
        synthesize_cohort(full, SynthConfig(patients=patients, seed=seed, phases=ALL_PHASES.split(",")))
    if phases == ALL_PHASES.split(","):
        return full
    view = out / f"cohort_{'+'.join(phases)}"
    if view.exists():
        return view
    view.mkdir()
    for folder in ("images", "masks"):  # hard links: the files stay inside the view (symlinks out are refused)
        (view / folder).mkdir()
        for file in (full / folder).iterdir():
            os.link(file, view / folder / file.name)
    table = pd.read_csv(full / "clinical.csv", dtype=str, keep_default_na=False)
    table = table.drop(columns=[PATH_COLUMNS[p] for p in ALL_PHASES.split(",") if p not in phases])
    if "unenhanced" not in phases:
        table["unenhanced_hu"] = ""
    table.to_csv(view / "clinical.csv", index=False)
    spec = json.loads((full / "cohort.json").read_text())
    (view / "cohort.json").write_text(json.dumps({**spec, "phases": phases}))
    truth = pd.read_csv(full / "truth.csv")
    labs = table.set_index("lesion_id")[list(LAB_COLUMNS)]
    rows = []
    for row in truth.to_dict("records"):
        latents = {k[len("latent_"):]: v for k, v in row.items() if k.startswith("latent_")}
        observed = observed_variables(phases, [c for c in LAB_COLUMNS if labs.at[row["lesion_id"], c] != ""])
        rows.append({**row, "oracle_risk": oracle_risk(latents, observed),
                     **{f"oracle_type_{t}": v for t, v in oracle_type_posterior(latents, observed).items()}})
    pd.DataFrame(rows).to_csv(view / "truth.csv", index=False)
    return view


def per_type(y: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> dict:
    out = {}
    for k, c in enumerate(classes):
        d = stats.delong((y == k).astype(int), probabilities[:, k])
        out[c] = {"auc": float(d.aucs[0]), "ci95": list(d.ci(0)), "lesions": int((y == k).sum())}
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print and return its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/subtype_bench"))
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--phase-sets", nargs="+", default=[ALL_PHASES])
    args = parser.parse_args(argv)
    from fusion_model import pipeline

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    figures_path = out / "subtype_benchmark.json"
    figures = json.loads(figures_path.read_text()) if figures_path.exists() else {}
    figures.update({"patients": args.patients, "seed": args.seed})
    experiment = load_experiment(packaged_experiment("synthetic_demo.yaml"))
    reference = None
    for phase_set in args.phase_sets:
        phases = phase_set.split(",")
        name = "+".join(phases)
        cohort = _cohorts(out, args.patients, args.seed, phases)
        model_dir = out / f"model_{name}"
        if (model_dir / "manifest.json").exists() and name in figures:  # trained by an earlier run: reuse it
            from fusion_model.artifact import load_model

            model = load_model(model_dir)
            minutes = figures[name]["training_minutes"]
        else:
            started = time.perf_counter()
            model = pipeline.train(experiment, cohort, model_dir, ImageCache(out / "cache"), overwrite=True).model
            minutes = (time.perf_counter() - started) / 60
        info = model.subtype_info_
        classes, merged = info.classes, info.lesion_types.merged
        oof = model.oof_
        truth = pd.read_csv(cohort / "truth.csv").set_index("lesion_id").loc[oof.index]
        codes = pd.Series(SubtypeClasses(classes, merged).encode(oof["lesion_type"]), index=oof.index)
        kept = (codes >= 0).to_numpy()
        y = codes[kept].to_numpy()
        model_p = oof.loc[kept, [f"p_type_{c}" for c in classes]].to_numpy(float)
        oracle = oracle_probabilities(cohort, oof.index[kept], classes, merged)
        model_types, oracle_types = per_type(y, model_p, classes), per_type(y, oracle, classes)
        block = {
            "phases": phases, "lesions": int(kept.sum()), "classes": classes, "merged_into_rare": merged,
            "training_minutes": minutes, "subtype_seconds": info.fit_seconds,
            "subtype_share_of_training": info.fit_seconds / (minutes * 60),
            "oof_macro_auc": {v: a["macro"] for v, a in info.oof_auc.items()},
            "oof_macro_auc_ci95": {v: a["macro_ci95"] for v, a in info.oof_auc.items()},
            "small_classes": info.oof_auc["all"]["small_classes"],
            "all_per_type": model_types, "oracle_per_type": oracle_types,
            "oracle_macro_auc": float(np.mean([b["auc"] for b in oracle_types.values()])),
            "malignancy_oof_auc": model.oof_auc_,
            "malignancy_oracle_auc": stats.nan_safe_auc(truth["label"], truth["oracle_risk"]),
        }
        block["macro_gap"] = block["oracle_macro_auc"] - block["oof_macro_auc"]["all"]
        block["type_gaps"] = {c: oracle_types[c]["auc"] - model_types[c]["auc"] for c in classes}
        if reference is not None and reference["name"] != name:
            common = [c for c in classes if c in reference["classes"]]
            block["versus_" + reference["name"]] = {}
            ids = oof.index[kept]
            ref_ids = [i for i in ids if i in reference["p"].index]
            for c in common:
                labels = (codes.loc[ref_ids] == classes.index(c)).astype(int).to_numpy()
                test = stats.delong_paired_test(labels, oof.loc[ref_ids, f"p_type_{c}"].to_numpy(float),
                                                reference["p"].loc[ref_ids, f"p_type_{c}"].to_numpy(float))
                block["versus_" + reference["name"]][c] = {"difference": test.difference, "p_value": test.p_value}
        if phase_set == ALL_PHASES:
            reference = {"name": name, "classes": classes, "p": oof}
        figures[name] = block
        print(f"{name}: {block['lesions']} lesions of {len(classes)} classes; training {minutes:.1f} min, subtype "
              f"heads {info['fit_seconds']:.0f} s ({100 * block['subtype_share_of_training']:.0f}% of it)")
        print("  OOF macro AUC (95% CI): " + ", ".join(
            f"{v} {a:.3f} ({block['oof_macro_auc_ci95'][v][0]:.3f}-{block['oof_macro_auc_ci95'][v][1]:.3f})"
            for v, a in block["oof_macro_auc"].items())
              + f"; oracle {block['oracle_macro_auc']:.3f} (gap of all {block['macro_gap']:+.3f}; target <= 0.05)")
        for c in classes:
            print(f"  {c}: all {model_types[c]['auc']:.3f} ({model_types[c]['ci95'][0]:.3f}-"
                  f"{model_types[c]['ci95'][1]:.3f}), oracle {oracle_types[c]['auc']:.3f}, gap "
                  f"{block['type_gaps'][c]:+.3f} (target <= 0.08); {model_types[c]['lesions']} lesions"
                  + (" (small: one lesion moves its AUC)" if c in block["small_classes"] else ""))
    figures_path.write_text(json.dumps(figures, indent=2, default=float) + "\n")
    print(f"wrote {figures_path}")
    return figures


if __name__ == "__main__":
    main()
