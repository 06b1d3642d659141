"""Which component is a table's lesion: matching that takes only a plausible component, and says why.

The table says a lesion exists (and usually its side and size). A component is plausible for it when it has at
least the matching probability, lies on the lesion's side, is near an adrenal gland (components farther than
``gland_margin_mm`` are suppressed before matching), and its largest axial extent is within ``match_size_ratio``
of ``size_mm``. Lesions with a side choose first, each the most probable free plausible component; every lesion
gets a sentence saying which component it took, or why each candidate was refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Component:
    """A connected component of the thresholded probability map."""

    label: int  # value in the component label array (0 for a suppressed component: not in the array)
    volume_mm3: float
    probability: float  # the detector's highest voxel probability inside (times the refiner's confidence)
    centroid_mm: tuple[float, float, float]
    side: str  # "left" / "right" of the body midline (LPS x: + is the patient's left)
    diameter_mm: float = math.nan  # largest axial (x or y) extent
    gland_distance_mm: float | None = None  # nearest voxel to an adrenal gland (None: no gland known)
    detector_probability: float | None = None  # the detector's own, where the refiner re-scored the component
    refiner_confidence: float | None = None  # the refiner's highest probability over the detector's component

    def describe(self) -> str:
        """How reasons name it: volume, probability, side, extent and distance to the glands."""
        gland = "" if self.gland_distance_mm is None else f", {self.gland_distance_mm:.0f} mm from a gland"
        return (f"{self.volume_mm3 / 1000:.1f} mL, p {self.probability:.2f}, {self.side}, "
                f"{self.diameter_mm:.0f} mm across{gland}")


@dataclass(frozen=True)
class LesionQuery:
    """What the table says about a lesion: its side and its size (largest axial diameter, mm), when given."""

    side: str | None = None
    size_mm: float | None = None


@dataclass(frozen=True)
class Match:
    """A lesion's component (its label; None: none) and the sentence saying why."""

    label: int | None
    reason: str
    refused: dict[int, str] = field(default_factory=dict)


def refusal(component: Component, query: LesionQuery, threshold: float, size_ratio: float,
            gland_margin_mm: float) -> str | None:
    """Why a component cannot be this lesion (None: it is plausible)."""
    if component.probability < threshold:
        if component.refiner_confidence is not None and component.detector_probability is not None and math.isclose(
                component.probability, component.detector_probability * component.refiner_confidence):
            # the refiner confirmed (refine_confirms): name both stages' scores
            return (f"probability {component.probability:.2f} (the detector's {component.detector_probability:.2f} "
                    f"times the refiner's {component.refiner_confidence:.2f}) is below {threshold:.2f}")
        return f"probability {component.probability:.2f} is below {threshold:.2f}"
    if query.side is not None and component.side != query.side:
        return f"it is on the {component.side} side"
    if component.gland_distance_mm is not None and component.gland_distance_mm > gland_margin_mm:
        return f"it is {component.gland_distance_mm:.0f} mm from the adrenal glands"
    if query.size_mm and math.isfinite(component.diameter_mm) and query.size_mm > 0:
        ratio = component.diameter_mm / query.size_mm
        if ratio > size_ratio or ratio < 1 / size_ratio:
            return f"it is {component.diameter_mm:.0f} mm across and the table gives {query.size_mm:g} mm"
    return None


def match_lesions(queries: list[LesionQuery], components: list[Component], threshold: float,
                  size_ratio: float = 2.5, gland_margin_mm: float = math.inf,
                  suppressed: list[Component] | None = None) -> list[Match]:
    """Each lesion's component among ``components`` (most probable first), only a plausible one, with reasons;
    ``suppressed`` components (far from the glands) are named in the reasons of lesions left without one."""
    ordered = sorted(components, key=lambda c: -c.probability)
    taken: dict[int, int] = {}
    out: list[Match | None] = [None] * len(queries)
    for with_side in (True, False):
        for i, query in enumerate(queries):
            if out[i] is not None or (query.side is not None) != with_side:
                continue
            refused = {}
            for component in ordered:
                if component.label in taken:
                    refused[component.label] = f"it was taken by lesion {taken[component.label] + 1} of the scan"
                    continue
                why = refusal(component, query, threshold, size_ratio, gland_margin_mm)
                if why is None:
                    taken[component.label] = i
                    out[i] = Match(component.label, f"component {component.label} ({component.describe()})", refused)
                    break
                refused[component.label] = why
            if out[i] is None:
                out[i] = Match(None, _none_reason(query, ordered, refused, suppressed or [], threshold), refused)
    return out  # type: ignore[return-value]


def _none_reason(query: LesionQuery, components: list[Component], refused: dict[int, str],
                 suppressed: list[Component], threshold: float) -> str:
    parts = [f"component {c.label} ({c.describe()}): {refused[c.label]}" for c in components if c.label in refused]
    parts += [f"a component of {c.volume_mm3 / 1000:.1f} mL (p {c.probability:.2f}) was suppressed: "
              f"{c.gland_distance_mm:.0f} mm from the adrenal glands" for c in suppressed
              if c.probability >= threshold and (query.side is None or c.side == query.side)]
    if not parts:
        where = f" on the {query.side} side" if query.side else ""
        return f"no component{where} with probability >= {threshold:.2f}"
    return "no plausible component: " + "; ".join(parts)
