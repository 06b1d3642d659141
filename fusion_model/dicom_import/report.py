"""`import_report.html` and `series.csv`: every series of the export, what the import decided and why, and the
phase evidence (headers against the image). Nothing here names a file of the export or an identifying header
value: studies appear by their pseudonymous token and the patient's pseudonym, dates as days since the patient's
first study."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pandas as pd

from fusion_model import __version__

DECISION_ORDER = ("chosen", "not chosen", "mask", "set aside", "refused", "study not imported")


def series_rows(series: list, studies: dict) -> list[dict]:
    """One plain row per series (the contents of series.csv)."""
    rows = []
    for s in series:
        study = studies.get(s.study_uid)
        rows.append({
            "patient_id": study.patient_id if study else "",
            "study": study.token if study else "",
            "study_day": study.day if study else None,
            "series_number": s.get("SeriesNumber"),
            "description": s.description,
            "modality": s.modality,
            "image_type": "\\".join(s.image_type),
            "kernel": s.kernel,
            "slice_thickness_mm": round(s.thickness_mm, 2) if s.modality == "CT" else None,
            "images": len(s.headers),
            "decision": s.decision,
            "reason": s.reason,
            "repairs": "; ".join(s.repairs),
            "header_phase": s.header_phase or "",
            "header_evidence": s.header_evidence if s.modality == "CT" else "",
            "aorta_hu": None if s.aorta_hu is None else round(s.aorta_hu, 1),
            "ivc_hu": None if s.ivc_hu is None else round(s.ivc_hu, 1),
            "image_phase": s.image_phase or "",
            "phase": s.phase or "",
            "phase_source": s.phase_source,
            "output": s.output,
        })
    return rows


def render_report(rows: list[dict], studies: list, scan, table: pd.DataFrame, phases: list[str], notes,
                  clinical) -> str:
    """The import report as one self-contained HTML page."""
    from fusion_model.report.html import render

    decisions = Counter(r["decision"] for r in rows)
    disagreements = [r for r in rows if r["phase_source"].startswith(("image (the headers said", "headers (the image"))]
    by_study: dict[str, list[dict]] = {}
    for row in rows:
        by_study.setdefault(row["study"], []).append(row)
    study_rows = [{"token": s.token, "patient_id": s.patient_id, "day": s.day, "imported": s.imported,
                   "reason": s.reason, "phases": ", ".join(sorted(s.chosen, key=["unenhanced", "arterial", "venous",
                                                                                  "delayed"].index)),
                   "masks": len(s.masks), "series": by_study.get(s.token, [])}
                  for s in sorted(studies, key=lambda s: (s.patient_id, s.day or 0, s.token))]
    without_mask = int(table["mask_path"].isna().sum())
    return render(
        "import.html.j2", rows=rows, studies=study_rows, decisions=[(d, decisions[d]) for d in DECISION_ORDER
                                                                    if decisions[d]],
        scan={"files": scan.files, "dicom": len(scan.headers), "not_dicom": len(scan.not_dicom),
              "unreadable": len(scan.unreadable)},
        disagreements=disagreements, phases=phases, lesions=len(table), patients=table["patient_id"].nunique(),
        without_mask=without_mask, notes=notes.public, clinical=clinical,
        imported=sum(1 for s in studies if s.imported), package_version=__version__,
        created_utc=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
