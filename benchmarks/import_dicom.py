"""`fusion-model import-dicom` on a generated PACS export: correctness, speed, and the model trained on it.

Stages:

1. ``fusion-model synth`` (default 100 patients, seed 5, all four phases) and its PACS export
   (:mod:`fusion_model.synthetic.dicom_export`: two reconstructions per phase, a sharp kernel, localizers, dose
   reports, coronal reformats, bolus tracking, secondary captures, presentation states, prior studies, SEGs,
   duplicated files, missing slices, descriptions in five languages, 10% naming the wrong phase).
2. The header scan alone, timed (files per second, 2 processes), then the whole import, timed (wall and CPU
   seconds, per stage), with gzipped NIfTI volumes (the default) and with --no-compress.
3. Every series' decision and every kept series' phase against the generator's truth; the cohort validated;
   every imported volume and mask compared voxel by voxel with the cohort synth wrote directly.
4. The demo experiment (experiments/synthetic_demo.yaml, centre_c held out) trained and evaluated on the imported
   cohort and on the directly written one, whose patient and lesion ids are first replaced by the import's
   pseudonyms (the ids decide the cross-validation folds; everything else is the generator's): each variant's
   external AUC side by side. ``--skip-training`` leaves this stage out.

``--cold-cache`` (root only) adds a --no-compress import right after emptying the page cache.

    python benchmarks/import_dicom.py --out runs/import_bench [--patients 100] [--seed 5] [--skip-training]
        [--reuse] [--cold-cache]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from fusion_model.config import SynthConfig
from fusion_model.synthetic.dicom_export import check_import, write_dicom_export
from fusion_model.synthetic.generate import synthesize_cohort

PHASES = ["unenhanced", "arterial", "venous", "delayed"]


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cold_import(out: Path) -> dict:
    """The --no-compress import right after emptying the page cache: wall and CPU seconds, how busy the cores were."""
    import os
    import subprocess

    from fusion_model.dicom_import.build import ImportOptions, import_dicom

    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as err:
        return {"skipped": f"cannot empty the page cache ({err}); run as root"}
    target = out / "imported_cold"
    if target.exists():
        shutil.rmtree(target)
    t, cpu = time.perf_counter(), time.process_time() + _children_cpu()
    result = import_dicom(out / "export" / "dicom", target, out / "imported.key", options=ImportOptions(compress=False),
                          clinical=out / "export" / "hospital_table.csv", progress=False)
    wall, cpu = time.perf_counter() - t, time.process_time() + _children_cpu() - cpu
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "cores_busy": round(cpu / (wall * (os.cpu_count() or 1)), 2),
            "stage_s": {k: round(v, 1) for k, v in result.seconds.items()}}


def compare_with_synth(imported: Path, direct: Path, mapping: Path, identifiers: Path) -> dict:
    """Each imported lesion against the synth lesion it came from: volumes and masks voxel by voxel, labels."""
    table = pd.read_csv(imported / "clinical.csv")
    synth = pd.read_csv(direct / "clinical.csv")
    to_source = dict(pd.read_csv(mapping, dtype=str)[["patient_id", "PatientID"]].values)
    to_synth = dict(pd.read_csv(identifiers, dtype=str)[["PatientID", "synth_patient_id"]].values)
    volumes_equal = masks_equal = labels_equal = lesions = 0
    pairs = {}
    for row in table.itertuples():
        source = synth[(synth.patient_id == to_synth[to_source[row.patient_id]]) & (synth.side == row.side)]
        phases = [p for p in PHASES if f"{p}_path" in table.columns]
        if len(source) != 1:
            continue
        source = source.iloc[0]
        lesions += 1
        pairs[source.lesion_id] = (row.patient_id, row.lesion_id)
        labels_equal += int(row.label == source.label and row.lesion_type == source.lesion_type)
        volumes_equal += int(all(np.array_equal(
            sitk.GetArrayFromImage(sitk.ReadImage(str(imported / getattr(row, f"{p}_path")))),
            sitk.GetArrayFromImage(sitk.ReadImage(str(direct / source[f"{p}_path"])))) for p in phases))
        if isinstance(row.mask_path, str) and isinstance(source.mask_path, str):
            a = sitk.GetArrayFromImage(sitk.ReadImage(str(imported / row.mask_path))) == row.mask_label
            b = sitk.GetArrayFromImage(sitk.ReadImage(str(direct / source.mask_path)))
            masks_equal += int(np.array_equal(a, b == (1 if pd.isna(source.mask_label) else int(source.mask_label))))
    return {"imported_lesions": len(table), "synth_lesions": len(synth), "matched": lesions,
            "labels_equal": labels_equal, "volumes_equal": volumes_equal, "masks_equal": masks_equal, "pairs": pairs}


def relabelled_copy(direct: Path, pairs: dict, target: Path) -> Path:
    """The synth cohort with the import's pseudonymous ids, rows in the import's order."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(direct, target)
    table = pd.read_csv(target / "clinical.csv")
    table["patient_id"] = [pairs[i][0] for i in table.lesion_id]
    table["lesion_id"] = [pairs[i][1] for i in table.lesion_id]
    table = table.sort_values("lesion_id", kind="stable")
    table.to_csv(target / "clinical.csv", index=False)
    return target


def train_and_evaluate(cohort: Path, out: Path) -> dict:
    from fusion_model import pipeline
    from fusion_model.config import load_experiment, packaged_experiment
    from fusion_model.evaluate.metrics import EvaluationSettings
    from fusion_model.evaluate.run import evaluate_model
    from fusion_model.imaging.cache import ImageCache

    experiment = load_experiment(packaged_experiment("synthetic_demo.yaml"))
    cache = ImageCache(out / "cache")
    pipeline.train(experiment, cohort, out / "model", cache, test_centre="centre_c", overwrite=True, progress=False)
    evaluation = evaluate_model(out / "model", cohort, out / "evaluation", cache, EvaluationSettings(),
                                overwrite=True, progress=False, centre="centre_c")
    return {name: m["auc"]["value"] for name, m in evaluation.metrics["models"].items() if m.get("auc")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--reuse", action="store_true", help="keep an export written by an earlier run")
    parser.add_argument("--cold-cache", action="store_true",
                        help="also import once more with --no-compress after emptying the page cache (needs root)")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    figures: dict = {"patients": args.patients, "seed": args.seed}
    t = time.perf_counter()
    if not (args.reuse and (out / "export" / "truth_series.csv").is_file()):
        synthesize_cohort(out / "direct", SynthConfig(patients=args.patients, seed=args.seed, phases=PHASES),
                          overwrite=True, progress=False)
        write_dicom_export(out / "direct", out / "export", seed=args.seed, overwrite=True, progress=False)
        figures["generate_s"] = round(time.perf_counter() - t, 1)

    from fusion_model.cohort import validate_cohort
    from fusion_model.dicom_import.build import import_dicom
    from fusion_model.dicom_import.scan import scan_export

    t = time.perf_counter()
    scan = scan_export(out / "export" / "dicom", workers=2, progress=False)
    seconds = time.perf_counter() - t
    figures["files"] = scan.files
    figures["header_scan_files_per_s"] = round(scan.files / seconds)
    for stale in (out / "imported", out / "imported.key", out / "mapping.csv"):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    t = time.perf_counter()
    cpu = time.process_time() + _children_cpu()
    result = import_dicom(out / "export" / "dicom", out / "imported", out / "imported.key", new_key=True,
                          clinical=out / "export" / "hospital_table.csv", mapping_file=out / "mapping.csv",
                          progress=False)
    figures["import_s"] = round(time.perf_counter() - t, 1)
    figures["import_cpu_s"] = round(time.process_time() + _children_cpu() - cpu, 1)
    figures["import_stage_s"] = {k: round(v, 1) for k, v in result.seconds.items()}
    figures["export_gb"] = round(sum(p.stat().st_size for p in (out / "export" / "dicom").rglob("*")
                                     if p.is_file()) / 1e9, 2)
    figures["import_files_per_s"] = round(scan.files / figures["import_s"])
    from fusion_model.dicom_import.build import ImportOptions

    if (out / "imported_uncompressed").exists():
        shutil.rmtree(out / "imported_uncompressed")
    t = time.perf_counter()
    cpu = time.process_time() + _children_cpu()
    uncompressed = import_dicom(out / "export" / "dicom", out / "imported_uncompressed", out / "imported.key",
                                options=ImportOptions(compress=False),
                                clinical=out / "export" / "hospital_table.csv", progress=False)
    figures["import_uncompressed_s"] = round(time.perf_counter() - t, 1)
    figures["import_uncompressed_cpu_s"] = round(time.process_time() + _children_cpu() - cpu, 1)
    figures["import_uncompressed_stage_s"] = {k: round(v, 1) for k, v in uncompressed.seconds.items()}
    if args.cold_cache:
        figures["cold_cache_uncompressed"] = cold_import(out)
    check = check_import(out / "export", out / "imported", out / "mapping.csv")
    figures["check"] = {k: v for k, v in check.items() if not k.endswith("errors")}
    figures["check"]["decision_errors"] = check["decision_errors"][:10]
    figures["check"]["phase_errors"] = check["phase_errors"][:10]
    report = validate_cohort(out / "imported", require_label=True, progress=False)
    figures["validates"] = report.ok
    comparison = compare_with_synth(out / "imported", out / "direct", out / "mapping.csv",
                                    out / "export" / "identifiers.csv")
    pairs = comparison.pop("pairs")
    figures["against_synth"] = comparison
    if not args.skip_training:
        t = time.perf_counter()
        imported_auc = train_and_evaluate(out / "imported", out / "run_imported")
        direct_auc = train_and_evaluate(relabelled_copy(out / "direct", pairs, out / "direct_relabelled"),
                                        out / "run_direct")
        figures["external_auc"] = {name: {"imported": round(imported_auc[name], 4),
                                          "direct": round(direct_auc.get(name, float("nan")), 4)}
                                   for name in imported_auc}
        figures["max_auc_difference"] = round(max(abs(imported_auc[n] - direct_auc[n]) for n in imported_auc), 4)
        figures["training_s"] = round(time.perf_counter() - t, 1)
    (out / "figures.json").write_text(json.dumps(figures, indent=2, default=str))
    print(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
