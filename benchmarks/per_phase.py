"""The per-phase table of `evaluate` on an external centre (``compare_phases: true``).

``fusion-model synth --patients N --seed S --phases unenhanced,arterial,venous``; the demo experiment
(experiments/synthetic_demo.yaml: malignancy and lesion-type heads) with ``compare_phases: true`` trained on
centres A and B (``--test-centre centre_c``), i.e. on all three phases and on each phase alone with the same
lesions and folds; then ``fusion-model evaluate --centre centre_c``. Prints the per-phase table of metrics.json
(``phase_comparison``) and the training time of the four models.

    python benchmarks/per_phase.py --out runs/per_phase [--patients 400 --seed 21]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from fusion_model.config import packaged_experiment


def _cli(*args) -> None:
    command = [sys.executable, "-m", "fusion_model.cli", *map(str, args)]
    print("$ fusion-model " + " ".join(map(str, args)), flush=True)
    subprocess.run(command, check=True)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print and return the per-phase table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/per_phase"))
    parser.add_argument("--patients", type=int, default=400)
    parser.add_argument("--seed", type=int, default=21)
    args = parser.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    cohort, model, report = out / "cohort", out / "model", out / "evaluation"
    if not (cohort / "cohort.json").exists():
        _cli("synth", "--out", cohort, "--patients", args.patients, "--seed", args.seed,
             "--phases", "unenhanced,arterial,venous")
    experiment = yaml.safe_load(packaged_experiment("synthetic_demo.yaml").read_text())
    experiment["compare_phases"] = True
    config = out / "per_phase.yaml"
    config.write_text(yaml.safe_dump(experiment, sort_keys=False))
    started = time.perf_counter()
    _cli("train", "--config", config, "--cohort", cohort, "--out", model, "--test-centre", "centre_c",
         "--overwrite")
    minutes = (time.perf_counter() - started) / 60
    _cli("evaluate", "--model", model, "--cohort", cohort, "--centre", "centre_c", "--out", report, "--overwrite")
    table = json.loads((report / "metrics.json").read_text())["phase_comparison"]
    print(f"\ntraining (all phases + each phase alone): {minutes:.1f} min; {table['lesions']} lesions of centre_c, "
          f"{table.get('subtype_lesions')} of the model's types; variant {table['variant']}")
    for row in table["sets"]:
        m = row["malignancy"]
        line = f"{'+'.join(row['phases']):>28}: malignancy AUC {m['auc']:.3f} ({m['auc_ci95'][0]:.3f}-" \
               f"{m['auc_ci95'][1]:.3f})"
        if m["vs_reference"]:
            line += f" diff {m['vs_reference']['difference']:+.3f} p {m['vs_reference']['p_value']:.3f}"
        if row.get("subtype"):
            s = row["subtype"]
            line += f"; type macro AUC {s['macro_auc']:.3f} ({s['macro_auc_ci95'][0]:.3f}-{s['macro_auc_ci95'][1]:.3f})"
            if s["macro_vs_reference"]:
                d = s["macro_vs_reference"]
                line += f" diff {d['difference']:+.3f} ({d['difference_ci95'][0]:+.3f} to {d['difference_ci95'][1]:+.3f})"
            line += "\n" + " " * 30 + ", ".join(
                f"{c} {b['auc']:.3f}" + (f" (p {b['vs_reference']['p_value']:.3f})" if b["vs_reference"]
                                         and b["vs_reference"]["p_value"] is not None else "")
                for c, b in s["per_class"].items() if b["auc"] is not None)
        print(line)
    (out / "per_phase.json").write_text(json.dumps({"training_minutes": minutes, **table}, indent=2) + "\n")
    return table


if __name__ == "__main__":
    main()
