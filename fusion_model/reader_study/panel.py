"""`fusion-model reader-study simulate`: a simulated reader panel, so the whole chain runs without humans.

On a study prepared from a synthetic cohort (the key holds each lesion's true risk), reader ``j`` forms an
impression of case ``k`` on the scale of the standardised logit ``z`` (mean 0, SD 1 over the study's cases)::

    impression_jk = a_j * z(true_risk_k) + b_j + u_jk,      u_jk ~ N(0, sigma_j^2)

(``u`` is the reader's own view of that case, the same in both arms), rates it unaided as
``impression_jk + e``, and aided as ``(1 - w_j) * impression_jk + w_j * z(model_probability_k) + e``
(``w_j`` is the reader's trust in the model; ``e`` small per-reading noise). The likelihood is
``100 * sigmoid(1.5 rating)``, the 5-point score cuts it at 20/40/60/80; the lesion type is right with a
reader-specific probability and, aided, follows the model's most likely type with probability ``w_j``; reading
times are log-normal. Answers go through the same store and the same design order as the reading
application's, with timestamps on a simulated clock that honours the washout.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusion_model.errors import UserInputError
from fusion_model.reader_study.design import ANSWERS_FILE, load_key, load_study
from fusion_model.reader_study.store import Answer, AnswerStore


@dataclass(frozen=True)
class SimulatedReader:
    """One simulated reader's parameters."""

    code: str
    slope: float          # a_j: how strongly the impression follows the true risk
    bias: float           # b_j: leaning toward malignant (> 0) or benign
    sigma: float          # the reader's own case-to-case error
    trust: float          # w_j: weight on the model in the aided arm
    type_accuracy: float  # chance of naming the true lesion type unaided
    median_seconds: float


def draw_readers(codes: list[str], rng: np.random.Generator) -> list[SimulatedReader]:
    """Reader-specific parameters: a panel of varied skill and trust. The case-to-case error (sigma 0.9-1.5 in
    units of the standardised true-risk logit) puts a reader's AUC where radiologists are on adrenal masses
    (about 0.8-0.9), below the true risk's own (about 0.97 on the synthetic cohorts)."""
    return [SimulatedReader(code, float(rng.uniform(0.6, 1.0)), float(rng.normal(0, 0.3)),
                            float(rng.uniform(0.9, 1.5)), float(rng.uniform(0.25, 0.6)),
                            float(rng.uniform(0.45, 0.75)), float(rng.uniform(40, 90))) for code in codes]


def _standard_logit(p):
    """The logit of a probability, standardised over the study's cases (mean 0, SD 1)."""
    p = np.clip(np.asarray(p, float), 1e-4, 1 - 1e-4)
    logit = np.log(p / (1 - p))
    return (logit - logit.mean()) / (logit.std() or 1.0)


def simulate_panel(study_dir: Path, readers: list[str] | None = None, seed: int = 0) -> dict:
    """Answer every remaining reading of the given readers (default all) of a study; returns counts."""
    study_dir = Path(study_dir)
    study = load_study(study_dir)
    key = load_key(study_dir, study)
    if "true_risk" not in key or key["true_risk"].isna().any():
        raise UserInputError(f"{study_dir / 'private' / 'key.csv'}: no true risk per case; simulated readers need a "
                             "study prepared from a synthetic cohort (fusion-model synth writes truth.csv)")
    codes = readers or [r.code for r in study.readers]
    unknown = [c for c in codes if study.reader(c) is None]
    if unknown:
        raise UserInputError(f"--readers: {unknown[0]} is not a reader of this study "
                             f"({', '.join(r.code for r in study.readers)})")
    rng = np.random.default_rng(seed)
    panel = draw_readers(codes, rng)
    store = AnswerStore(study_dir / ANSWERS_FILE)
    case_index = {c.code: k for k, c in enumerate(study.cases)}
    true_logit = _standard_logit(key.loc[[c.code for c in study.cases], "true_risk"].to_numpy())
    model_logit = _standard_logit(key.loc[[c.code for c in study.cases], "model_probability"].to_numpy())
    true_types = key.loc[[c.code for c in study.cases], "lesion_type"].fillna("").astype(str).to_numpy()
    model_types = []
    for case in study.cases:
        panel_json = json.loads((study_dir / "cases" / case.code / "panel.json").read_text(encoding="utf-8"))
        types = panel_json.get("lesion_types") or []
        model_types.append(types[0]["type"].replace(" ", "_") if types else "")
    types = study.lesion_types
    start = dt.datetime(2026, 1, 5, 8, 0, tzinfo=dt.timezone.utc)
    written = 0
    for reader in panel:
        impression = reader.slope * true_logit + reader.bias + rng.normal(0, reader.sigma, len(true_logit))
        answered = store.answered(reader.code)
        clock = start
        for s, items in enumerate(study.sessions[reader.code], start=1):
            if s > 1:
                clock += dt.timedelta(days=study.washout_days, hours=1)
            for p, item in enumerate(items, start=1):
                seconds = float(rng.lognormal(np.log(reader.median_seconds * (0.8 if item.arm == "aided" else 1.0)),
                                              0.35))
                shown, clock = clock, clock + dt.timedelta(seconds=seconds)
                k = case_index[item.case]
                rating = impression[k] + rng.normal(0, 0.25)
                if item.arm == "aided":
                    rating = (1 - reader.trust) * impression[k] + reader.trust * model_logit[k] + rng.normal(0, 0.25)
                likelihood = int(np.clip(np.rint(100 / (1 + np.exp(-1.5 * rating))), 0, 100))
                scale5 = int(np.clip(likelihood // 20 + 1, 1, 5))
                if item.arm == "aided" and model_types[k] in types and rng.random() < reader.trust:
                    lesion_type = model_types[k]
                elif true_types[k] in types and rng.random() < reader.type_accuracy:
                    lesion_type = true_types[k]
                else:
                    lesion_type = str(rng.choice(types))
                confidence = int(np.clip(np.rint(1 + 4 * abs(likelihood - 50) / 50), 1, 5))
                if (s, p) in answered:
                    continue
                store.record(reader.code, s, p, item.case, item.arm,
                             Answer(likelihood, scale5, lesion_type, confidence), source="simulated",
                             shown_utc=shown.isoformat(), answered_utc=clock.isoformat())
                written += 1
    return {"readers": [r.__dict__ for r in panel], "readings_written": written}
