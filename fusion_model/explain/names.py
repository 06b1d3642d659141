"""Plain-language names, units and reference values of the model's features.

Clinical-table columns take their unit from the schema; image-derived features are named by
pattern (``venous_mean_hu`` -> "venous mean attenuation (HU)").
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class FeatureName:
    """How a feature is named to a clinician: label, unit and kind."""

    label: str
    unit: str | None = None
    reference: tuple[float, str] | None = None  # (cut-off, what lies above it), e.g. (10, "lipid-poor")
    kind: str = "number"  # number, yes_no, sex, logit, component


FIXED = {
    "size_mm": FeatureName("maximal diameter", "mm", (40.0, "above the 4 cm surgical threshold")),
    "unenhanced_hu": FeatureName("unenhanced attenuation", "HU", (10.0, "above 10 HU, not a lipid-rich adenoma")),
    "age_years": FeatureName("age", "years"),
    "sex_female": FeatureName("sex", kind="sex"),
    "history_extra_adrenal_malignancy": FeatureName("history of extra-adrenal cancer", kind="yes_no"),
    "hypertension": FeatureName("hypertension", kind="yes_no"),
    "bilateral": FeatureName("bilateral adrenal lesions", kind="yes_no"),
    "cortisol_post_dst_ug_dl": FeatureName("cortisol after 1 mg dexamethasone", "µg/dL",
                                           (1.8, "above 1.8 µg/dL, possible autonomous cortisol secretion")),
    "plasma_metanephrines_xuln": FeatureName("plasma metanephrines", "× upper limit of normal",
                                             (1.0, "above the upper limit of normal")),
    "dhea_s_umol_l": FeatureName("DHEA-S", "µmol/L"),
    "aldosterone_renin_ratio": FeatureName("aldosterone/renin ratio", "(ng/dL)/(ng/mL/h)", (30.0, "above 30")),
    "potassium_mmol_l": FeatureName("potassium", "mmol/L"),
    "image_logit": FeatureName("CNN image score", "log-odds", kind="logit"),
    "max_axial_diameter_mm": FeatureName("maximal axial diameter (from the mask)", "mm"),
    "max_diameter_3d_mm": FeatureName("maximal 3D diameter (from the mask)", "mm"),
    "volume_ml": FeatureName("lesion volume (from the mask)", "mL"),
    "elongation": FeatureName("elongation (shape)"),
    "flatness": FeatureName("flatness (shape)"),
    "sphericity": FeatureName("roundness (shape)"),
    "max_inscribed_radius_mm": FeatureName("largest inscribed radius (thickness)", "mm"),
    "mean_half_thickness_mm": FeatureName("mean half-thickness", "mm"),
    "p90_half_thickness_mm": FeatureName("half-thickness, 90th percentile", "mm"),
    "core_fraction_2mm": FeatureName("share of the lesion > 2 mm inside its surface", "fraction"),
    "absolute_washout_percent": FeatureName("absolute washout", "%"),
    "relative_washout_percent": FeatureName("relative washout", "%"),
}

_PATTERNS = [
    (r"image_pc(\d+)", lambda m: FeatureName(f"CNN image pattern {m.group(1)}", kind="component")),
    (r"(\w+)_mean_hu", lambda m: FeatureName(f"{m.group(1)} mean attenuation (from the image)", "HU")),
    (r"(\w+)_median_hu", lambda m: FeatureName(f"{m.group(1)} median attenuation", "HU")),
    (r"(\w+)_sd_hu", lambda m: FeatureName(f"{m.group(1)} attenuation heterogeneity (SD)", "HU")),
    (r"(\w+)_p10_hu", lambda m: FeatureName(f"{m.group(1)} attenuation, 10th percentile", "HU")),
    (r"(\w+)_p90_hu", lambda m: FeatureName(f"{m.group(1)} attenuation, 90th percentile", "HU")),
    (r"(\w+)_fraction_le_10hu", lambda m: FeatureName(f"{m.group(1)} share of voxels <= 10 HU", "fraction")),
    (r"(\w+)_enhancement_hu", lambda m: FeatureName(f"{m.group(1)} enhancement", "HU")),
]


def feature_name(name: str) -> FeatureName:
    """The plain-language name of a feature column."""
    if name in FIXED:
        return FIXED[name]
    for pattern, make in _PATTERNS:
        match = re.fullmatch(pattern, name)
        if match:
            return make(match)
    return FeatureName(name.replace("_", " "))


def label_with_unit(name: str) -> str:
    """The feature's label with its unit, e.g. 'unenhanced attenuation (HU)'."""
    f = feature_name(name)
    return f"{f.label} ({f.unit})" if f.unit and f.kind == "number" else f.label


def is_missing(value) -> bool:
    """Whether a value is missing (None or NaN)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_value(name: str, value) -> str:
    """The value as a clinician reads it; a missing value is 'missing', never 0."""
    f = feature_name(name)
    if is_missing(value):
        return "missing"
    value = float(value)
    if f.kind == "yes_no":
        return "yes" if value >= 0.5 else "no"
    if f.kind == "sex":
        return "female" if value >= 0.5 else "male"
    if f.kind in ("logit", "component"):
        return f"{value:+.2f}"
    magnitude = abs(value)
    digits = 0 if magnitude >= 100 else 1 if magnitude >= 10 else 2
    text = f"{value:.{digits}f}"
    return f"{text} {f.unit}" if f.unit else text


def factor_sentence(name: str, value, contribution: float) -> str:
    """E.g. 'unenhanced attenuation 34 HU (above 10 HU, not a lipid-rich adenoma) raised the risk'."""
    f = feature_name(name)
    direction = "raised" if contribution > 0 else "lowered"
    strength = "strongly " if abs(contribution) >= 1.0 else "slightly " if abs(contribution) < 0.2 else ""
    if is_missing(value):
        return f"{f.label} not available (missing) {strength}{direction} the risk"
    text = f"{f.label} {format_value(name, value)}"
    if f.reference is not None:
        cut, meaning = f.reference
        text += f" ({meaning})" if float(value) > cut else f" (at or below {cut:g} {f.unit or ''})".replace(" )", ")")
    return f"{text} {strength}{direction} the risk"


def type_factor_sentence(name: str, value, contribution: float, lesion_type: str) -> str:
    """E.g. 'unenhanced attenuation 34 HU made pheochromocytoma more likely'."""
    f = feature_name(name)
    direction = "more" if contribution > 0 else "less"
    strength = "much " if abs(contribution) >= 1.0 else "slightly " if abs(contribution) < 0.2 else ""
    text = f"{f.label} not available (missing)" if is_missing(value) else f"{f.label} {format_value(name, value)}"
    return f"{text} made {lesion_type.replace('_', ' ')} {strength}{direction} likely"
