"""What the product compares, as data: the model variants of the literature, the feature groups
they draw on, and the guideline rules scored beside them. The one source of these names; the
configuration validates against it and the reports describe with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Feature groups in report order, with the label a reader sees.
FEATURE_GROUPS = {
    "imaging": "imaging (CNN)",
    "radiological": "radiological",
    "clinical": "clinical history",
    "laboratory": "laboratory",
}


@dataclass(frozen=True)
class VariantSpec:
    """A model variant: which feature groups its heads see, and how reports describe it."""

    name: str
    groups: tuple[str, ...]
    description: str

    @property
    def tabular_groups(self) -> tuple[str, ...]:
        """The groups that reach the tabular and fusion heads (all but the CNN's own outputs)."""
        return tuple(g for g in self.groups if g != "imaging")


VARIANTS = {spec.name: spec for spec in (
    VariantSpec("imaging", ("imaging",), "3D CNN on the lesion crop only"),
    VariantSpec("imaging_radiological", ("imaging", "radiological"),
                "imaging + radiological features (size, unenhanced HU, shape from the mask)"),
    VariantSpec("imaging_clinical", ("imaging", "clinical", "laboratory"),
                "imaging + clinical history and laboratory results"),
    VariantSpec("all", ("imaging", "radiological", "clinical", "laboratory"),
                "imaging + radiological + clinical + laboratory"),
)}


def variant_description(name: str) -> str:
    """How reports describe a variant (its own name when it is not one of ours)."""
    spec = VARIANTS.get(name)
    return spec.description if spec else name


@dataclass(frozen=True)
class GuidelineRule:
    """A guideline rule scored like a model: suspicious (1) when every ``column > threshold`` holds,
    benign (0) otherwise, missing when any of its inputs is missing."""

    name: str
    description: str
    conditions: tuple[tuple[str, float], ...]


# ESE/ENSAT 2023 (a lesion <= 10 HU unenhanced is benign); EURINE-ACT, Bancos 2020 (> 4 cm suspicious).
GUIDELINE_RULES = {rule.name: rule for rule in (
    GuidelineRule("hu_10", "unenhanced HU > 10", (("unenhanced_hu", 10.0),)),
    GuidelineRule("size_40", "size > 40 mm", (("size_mm", 40.0),)),
    GuidelineRule("hu_10_and_size_40", "unenhanced HU > 10 and size > 40 mm",
                  (("unenhanced_hu", 10.0), ("size_mm", 40.0))),
)}


# Who outlined a lesion (the cohort's mask_source column; empty means manual), as reports say it.
MASK_SOURCE_WORDS = {"manual": "drawn by a reader", "auto": "automatic (a segmentation model)",
                     "none": "not outlined yet"}


def mask_source_counts(sources: Iterable) -> dict[str, int]:
    """Lesions per mask source; an empty cell (None, NaN) is a manual mask, as the cohort contract says."""
    counts: dict[str, int] = {}
    for source in sources:
        key = source if isinstance(source, str) and source in MASK_SOURCE_WORDS else "manual"
        counts[key] = counts.get(key, 0) + 1
    return {source: counts[source] for source in MASK_SOURCE_WORDS if source in counts}


def rule_description(name: str) -> str:
    """How reports describe a guideline rule."""
    rule = GUIDELINE_RULES.get(name)
    return rule.description if rule else "guideline rule"
