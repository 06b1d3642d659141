"""`fusion-model explain`: case cards (probability, waterfall, top factors, CT slices with saliency)
for each lesion, global SHAP figures, and a case review page listing every lesion by risk.

Output folder:

    index.html           case review page: lesions by risk, filters, global explanations
    cases/ID.html        one case card per lesion (figures and volumes embedded)
    assets/              the cards' CT viewer: NiiVue (vendored, BSD-2-Clause) and viewer.js
    global/*.png         beeswarm, mean |SHAP| and feature-group figures
    shap_values.csv      per lesion: variant, base, margin, probability, value and SHAP of each feature
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fusion_model import __version__
from fusion_model.catalogue import (
    FEATURE_GROUPS,
    GUIDELINE_RULES,
    MASK_SOURCE_WORDS,
    rule_description,
    variant_description,
)
from fusion_model.errors import UserInputError
from fusion_model.fileio import check_output_dir
from fusion_model.explain import plots
from fusion_model.explain.contributions import (
    Contributions,
    SubtypeExplainer,
    TypeContributions,
    VariantExplainer,
)
from fusion_model.explain.names import factor_sentence, format_value, label_with_unit, type_factor_sentence
from fusion_model.explain.saliency import GradCAM
from fusion_model.model import FusionModel, LesionData
from fusion_model.progress import track
from fusion_model.report import data_uri, render, write_report_dir
from fusion_model.report.viewer import NIIVUE, VIEWER, array_image, contour, embedded_spec, nifti_bytes

TOP_FACTORS = 5
GLOBAL_MIN_LESIONS = 10


@dataclass
class LesionExplanation:
    """One lesion's probability, margin, saliency volume and how long it took."""

    lesion_id: str
    probability: float
    margin: float
    saliency: np.ndarray
    saliency_logit: float
    seconds: float


@dataclass
class ExplainResult:
    """Where the explanations were written, for which lesions, timings and unreadable lesions."""

    out: Path
    lesion_ids: list[str]
    files: list[str]
    timings: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)


def check_lesion_ids(requested: list[str], available: list[str], where: str) -> None:
    """Refuse unknown lesion ids, suggesting close matches."""
    unknown = [i for i in requested if i not in set(available)]
    if unknown:
        hints = []
        for lesion in unknown[:5]:
            close = difflib.get_close_matches(lesion, available, n=3)
            hints.append(f"{lesion!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
        raise UserInputError(f"unknown lesion id(s) {', '.join(hints)}: not in {where}; use the lesion_id column's "
                             "values")


def safe_name(lesion_id: str, taken: set[str]) -> str:
    """A file name for a lesion id, unique among ``taken`` (case-insensitively)."""
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", lesion_id)[:80] or "lesion"
    name, k = base, 1
    while name.lower() in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name.lower())
    return name


class CaseExplainer:
    """Everything needed to explain lesions of one model, built once (the fast path for new lesions)."""

    def __init__(self, model: FusionModel, variant: str | None = None):
        self.model = model
        self.variant = variant or model.primary_variant
        if self.variant not in model.variants_:
            raise UserInputError(f"variant {self.variant!r} is not in the model; it has {list(model.variants_)}")
        self.explainer = VariantExplainer(model, self.variant)
        self.type_explainer = SubtypeExplainer(model, self.variant) if self.variant in model.subtypes_ else None
        self.gradcam = GradCAM(model.encoder_)

    def explain(self, data: LesionData, saliency: bool = True) -> "Explained":
        """Probabilities of every variant and rule, SHAP contributions and saliency of each lesion."""
        start = time.perf_counter()
        frames = self.model.feature_frames(data)
        predictions = self.model.predict_variants(data, frames)
        contributions = self.explainer(*frames)
        types = self.type_explainer(*frames) if self.type_explainer is not None else None
        shap_seconds = time.perf_counter() - start
        lesions = []
        for i, lesion_id in enumerate(data.lesion_ids):
            start = time.perf_counter()
            volume, logit = self.gradcam(data.crops[i]) if saliency else (None, float("nan"))
            lesions.append(LesionExplanation(lesion_id, float(contributions.probability[i]),
                                             float(contributions.margin[i]), volume, logit,
                                             time.perf_counter() - start))
        return Explained(frames, predictions, contributions, lesions, shap_seconds, types)


@dataclass
class Explained:
    """Predictions, SHAP contributions and saliency of a set of lesions."""

    frames: tuple[pd.DataFrame, pd.DataFrame]  # the heads' inputs: imaging and tabular features
    predictions: pd.DataFrame                  # p_VARIANT and rule_RULE per lesion
    contributions: Contributions
    lesions: list[LesionExplanation]
    shap_seconds: float                        # encoder pass, heads and SHAP for all lesions
    types: TypeContributions | None = None     # lesion-type probabilities and SHAP (models with subtype heads)

    @property
    def saliency_seconds(self) -> float:
        """Time spent on Grad-CAM, all lesions together."""
        return sum(lesion.seconds for lesion in self.lesions)


# ------------------------------------------------------------------------------ one lesion
def _risk_class(probability: float, thresholds: dict) -> str:
    if probability >= thresholds.get("youden", 0.5):
        return "high"
    if probability >= thresholds.get("sensitivity_95", 0.0):
        return "mid"
    return "low"


def _rule_call(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "not applicable (input missing)"
    return "suspicious" if value >= 0.5 else "benign"


def type_context(types: TypeContributions, i: int) -> dict:
    """The lesion-type part of a case card: every type's probability, and why the most likely one."""
    probabilities = types.probabilities[i]
    order = np.argsort(-probabilities)
    best = types.classes[int(order[0])]
    shap_row = types.shap[best].iloc[i]
    values = types.values.iloc[i]
    ranked = shap_row.abs().sort_values(ascending=False).index
    return {"variant": types.variant,
            "types": [{"type": types.classes[int(k)].replace("_", " "), "probability": float(probabilities[k])}
                      for k in order],
            "most_likely": best.replace("_", " "), "probability": float(probabilities[order[0]]),
            "factors": [{"sentence": type_factor_sentence(n, values[n], float(shap_row[n]), best),
                         "contribution": float(shap_row[n])} for n in ranked[:TOP_FACTORS]
                        if abs(float(shap_row[n])) > 1e-6]}


def case_context(lesion_id: str, row: pd.Series, predictions: pd.Series, contributions: Contributions, i: int,
                 model: FusionModel, variant: str, types: TypeContributions | None = None) -> dict:
    """Everything a case card shows of one lesion, as template data."""
    values = contributions.values.iloc[i]
    shap_row = contributions.shap.iloc[i]
    order = shap_row.abs().sort_values(ascending=False).index
    thresholds = model.variants_[variant].thresholds
    probability = float(contributions.probability[i])
    factors = [{"sentence": factor_sentence(n, values[n], float(shap_row[n])), "contribution": float(shap_row[n])}
               for n in order[:TOP_FACTORS] if abs(float(shap_row[n])) > 1e-6]
    groups = contributions.group_contributions().iloc[i]
    inputs = [{"name": label_with_unit(n), "value": format_value(n, values[n]),
               "missing": bool(pd.isna(values[n])), "group": FEATURE_GROUPS.get(contributions.groups[n], ""),
               "contribution": float(shap_row[n])} for n in order]
    label = row.get("label")
    return {
        "lesion_id": lesion_id, "patient_id": row.get("patient_id"), "centre": row.get("centre"),
        "side": row.get("side") if pd.notna(row.get("side", np.nan)) else None,
        "label": None if label is None or pd.isna(label) else int(label),
        "lesion_type": row.get("lesion_type") if pd.notna(row.get("lesion_type", np.nan)) else None,
        "mask_source": MASK_SOURCE_WORDS[row.get("mask_source") if pd.notna(row.get("mask_source", np.nan))
                                         else "manual"],
        "probability": probability, "risk_class": _risk_class(probability, thresholds),
        "suspicious": probability >= thresholds["youden"], "thresholds": thresholds,
        "variant": variant, "variant_description": variant_description(variant),
        "base": contributions.base, "margin": float(contributions.margin[i]), "factors": factors,
        "groups": [{"group": FEATURE_GROUPS.get(g, g), "contribution": float(v)} for g, v in groups.items()],
        "inputs": inputs,
        "other_variants": [{"variant": v, "probability": float(predictions[f"p_{v}"])}
                           for v in model.variants_ if v != variant],
        "rules": [{"rule": rule_description(r), "call": _rule_call(predictions.get(f"rule_{r}"))}
                  for r in model.config.baselines if f"rule_{r}" in predictions],
        "lesion_types": type_context(types, i) if types is not None else None,
    }


def viewer_volumes(crop: np.ndarray, saliency: np.ndarray | None, channels: list[str], spacing_mm: float,
                   hu_window: tuple[float, float]) -> str:
    """The interactive viewer's spec of a case card: every phase of the model's crop back in HU (within the
    model's window), the lesion's contour and the Grad-CAM saliency, inlined as NIfTI."""
    lo, hi = hu_window
    spacing = (spacing_mm,) * 3
    phases = {name: nifti_bytes(array_image(np.rint(lo + np.asarray(crop[c], np.float32) * (hi - lo)), spacing,
                                            np.int16))
              for c, name in enumerate(channels) if name not in ("mask", "depth")}
    mask = np.asarray(crop[channels.index("mask")]) > 0.5 if "mask" in channels else None
    outline = nifti_bytes(array_image(contour(mask), spacing, np.uint8)) if mask is not None else None
    # saliency in percent of its peak as uint8 (compresses far better than float32; the viewer shows >= 20%)
    heat = (nifti_bytes(array_image(np.rint(100 * np.clip(np.asarray(saliency, np.float32), 0, 1)), spacing,
                                    np.uint8)) if saliency is not None else None)
    return embedded_spec(phases, outline, heat)


def render_case(context: dict, crop: np.ndarray, saliency: np.ndarray | None, channels: list[str],
                values: pd.Series, shap_row: pd.Series, base: float, created: str,
                back_link: str | None = "../index.html", spacing_mm: float = 1.0,
                hu_window: tuple[float, float] = (-200.0, 300.0), assets: str = "../assets/") -> str:
    """One case card: HTML with its figures and volumes embedded; the viewer's scripts from ``assets``."""
    images = {
        "waterfall": data_uri(plots.waterfall(values, shap_row, base, context["probability"])),
        "slices": data_uri(plots.ct_slices(crop, saliency, channels)),
    }
    spec = viewer_volumes(crop, saliency, channels, spacing_mm, hu_window)
    return render("case.html.j2", case=context, images=images, back_link=back_link, package_version=__version__,
                  created_utc=created, viewer_spec=spec, assets=assets)


def _render_job(job) -> tuple[str, str]:
    rel, *args = job
    return rel, render_case(*args)


def _render_cases(jobs: list, progress: bool) -> dict[str, str]:
    """Case cards, rendered in two processes when there are many (matplotlib is the slow part)."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    workers = min(2, os.cpu_count() or 1)
    if workers < 2 or len(jobs) < 16:
        return dict(_render_job(j) for j in track(jobs, "case cards", enabled=progress))
    import multiprocessing

    # fork: the children need only numpy, matplotlib and jinja2, already imported here
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        return dict(track(pool.map(_render_job, jobs, chunksize=4), "case cards", total=len(jobs),
                          enabled=progress))


# ------------------------------------------------------------------------------- the cohort
def _global_images(model: FusionModel, contributions: Contributions, frames, variant: str) -> dict[str, bytes]:
    images = {}
    fit = model.variants_[variant]
    method = fit.fusion_method
    if method.head_kind is not None:
        images["global/beeswarm.png"] = plots.beeswarm(contributions.values, contributions.shap,
                                                       f"{variant}: SHAP values ({method.label})")
        images["global/mean_abs_shap.png"] = plots.mean_abs_bar(contributions.shap,
                                                                f"{variant}: mean |SHAP| ({method.label})")
        for kind in (k for k in method.explained_heads if k in fit.heads):
            X = fit.head_frame(kind, *frames)
            values, _ = fit.heads[kind].shap_values(X)
            images[f"global/beeswarm_{kind}_head.png"] = plots.beeswarm(X, values, f"{variant}: SHAP values "
                                                                                    f"({kind} head)")
            images[f"global/mean_abs_shap_{kind}_head.png"] = plots.mean_abs_bar(values, f"{variant}: mean |SHAP| "
                                                                                          f"({kind} head)")
    images["global/groups.png"] = plots.group_bar(contributions.group_contributions(),
                                                  f"{variant}: contributions by kind of feature")
    return images


def explain_cohort(model_dir: Path, cohort_dir: Path, out: Path, cache, lesion_ids: list[str] | None = None,
                   variant: str | None = None, strict: bool = False, overwrite: bool = False,
                   progress: bool = True, centre: str | None = None) -> ExplainResult:
    """Case cards, the case review page, global SHAP figures and shap_values.csv for a cohort."""
    from fusion_model.pipeline import ScoringSession

    timings: dict[str, float] = {}
    check_output_dir(out, overwrite)
    start = time.perf_counter()
    session = ScoringSession.open(model_dir, cohort_dir, centre=centre, progress=progress)
    model = session.model
    case_explainer = CaseExplainer(model, variant)  # an unknown variant is refused before any lesion is read
    variant = case_explainer.variant
    if lesion_ids:
        table, root = session.cohort.table, session.cohort.root
        check_lesion_ids(lesion_ids, table["lesion_id"].tolist(), str(root / "clinical.csv"))
        session.cohort = session.cohort.subset(lesion_ids)
    timings["load_seconds"] = time.perf_counter() - start

    start = time.perf_counter()
    data, errors = session.read(cache, "explain", strict, progress)
    timings["read_seconds"] = time.perf_counter() - start
    explained = case_explainer.explain(data)
    predictions, contributions = explained.predictions, explained.contributions
    timings["shap_seconds"] = explained.shap_seconds
    saliency_seconds = explained.saliency_seconds

    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    channels = model.training_cohort.channels
    files: dict[str, bytes | str] = {}
    rows = []
    taken: set[str] = set()
    rule = next((r for r in GUIDELINE_RULES if f"rule_{r}" in predictions), None)
    thresholds = model.variants_[variant].thresholds
    jobs = []
    for i, lesion_id in enumerate(data.lesion_ids):
        row = data.table.loc[lesion_id]
        context = case_context(lesion_id, row, predictions.loc[lesion_id], contributions, i, model, variant,
                               explained.types)
        name = safe_name(lesion_id, taken)
        jobs.append((f"cases/{name}.html", context, data.crops[i], explained.lesions[i].saliency, channels,
                     contributions.values.iloc[i], contributions.shap.iloc[i], contributions.base, created,
                     "../index.html", model.config.preprocess.spacing_mm, model.config.preprocess.hu_window))
        rule_value = predictions.loc[lesion_id, f"rule_{rule}"] if rule else np.nan
        model_call = bool(context["probability"] >= thresholds["youden"])
        rows.append({**{k: context[k] for k in ("lesion_id", "patient_id", "centre", "probability", "risk_class",
                                                "label", "lesion_type")},
                     "href": f"cases/{name}.html", "model_call": "suspicious" if model_call else "benign",
                     "rule_call": _rule_call(rule_value),
                     "disagrees": bool(rule and not np.isnan(rule_value) and model_call != (rule_value >= 0.5)),
                     "top_factor": context["factors"][0]["sentence"] if context["factors"] else ""})
    t1 = time.perf_counter()
    files.update(_render_cases(jobs, progress))
    files["assets/niivue.umd.js"] = NIIVUE.read_bytes()
    files["assets/NIIVUE-LICENSE.txt"] = NIIVUE.with_name("LICENSE").read_bytes()
    files["assets/viewer.js"] = VIEWER.read_bytes()
    render_seconds = time.perf_counter() - t1
    timings["saliency_seconds"] = saliency_seconds
    timings["render_seconds"] = render_seconds

    start = time.perf_counter()
    images = (_global_images(model, contributions, explained.frames, variant)
              if len(data.table) >= GLOBAL_MIN_LESIONS else {})
    files.update(images)
    rows.sort(key=lambda r: -r["probability"])
    files["index.html"] = render(
        "review.html.j2", rows=rows, centres=sorted({str(r["centre"]) for r in rows}), variant=variant,
        variant_description=variant_description(variant), rule=rule_description(rule) if rule else None,
        thresholds=thresholds, images={k: data_uri(v) for k, v in images.items()},
        global_min=GLOBAL_MIN_LESIONS, errors=[e.__dict__ for e in errors], model_path=str(model_dir),
        cohort_name=session.cohort.spec.name, package_version=__version__, created_utc=created,
        has_labels=any(r["label"] is not None for r in rows))
    table = pd.DataFrame({"variant": variant, "base": contributions.base, "margin": contributions.margin,
                          "probability": contributions.probability}, index=data.table.index)
    table = pd.concat([table, contributions.values.add_prefix("value:"), contributions.shap.add_prefix("shap:")],
                      axis=1)
    if explained.types is not None:
        types = explained.types
        type_table = pd.DataFrame(types.probabilities, index=table.index,
                                  columns=[f"p_type_{c}" for c in types.classes])
        type_table.insert(0, "most_likely_type", [types.classes[k] for k in types.probabilities.argmax(axis=1)])
        table = pd.concat([table, type_table], axis=1)
    files["shap_values.csv"] = table.to_csv(index_label="lesion_id")
    write_report_dir(out, files, overwrite=overwrite)
    timings["global_and_write_seconds"] = time.perf_counter() - start
    return ExplainResult(Path(out), list(data.lesion_ids), sorted(files), timings, errors)
