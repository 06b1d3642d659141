"""Which CT phase a series is: evidence from its headers, checked against the image itself.

Header evidence, strongest first: the delay between the contrast bolus start and the acquisition; a phase named
in the series description (English, French, German, Spanish, Italian, Portuguese, Dutch, Chinese in characters
and pinyin, Japanese); the absence of a contrast
agent where other series of the study have one; the series' place in the study's acquisition order.

Image evidence: the attenuation of the aorta and of the inferior vena cava, found beside the vertebral body on a
few slices (:func:`vessel_attenuation`). The phases differ plainly (Bae 2010, Radiology 256:32; the adrenal
protocols of CLINICAL.md): unenhanced blood 30-50 HU; arterial aorta above 200 HU with a barely opacified IVC;
portal-venous aorta and IVC around 130-200 HU; delayed (5-15 min) both around 90-130 HU. Where header and image
disagree the image wins, and the import report says so, with one exception (:func:`settle_study`): an image
that would give a series the phase of another acquisition of the study whose headers and image agree, while its
own headers name a phase no other acquisition has, is overruled by its headers (a vessel hidden by a large mass
reads as another phase; two acquisitions of one phase in one study are rarer than that).
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
from scipy import ndimage

PHASE_ORDER = ("unenhanced", "arterial", "venous", "delayed")
KEYWORDS = {  # matched on the folded description (lower case, accents removed, punctuation as spaces)
    "unenhanced": r"\b(non ?contrast|noncon|unenhanced|without contrast|w ?o contrast|wo contrast|pre ?contrast|"
                  r"precontrast|pre(?! ?op\b)|plain|native?|nativ|leer\w*|ohne (km|kontrast\w*)|sans (injection|contraste|iv)|"
                  r"sin (contraste|civ)|sem contraste|simple|basal|basale|blanco|zonder contrast|senza (contrasto|mdc)|"
                  r"pingsao|ping sao|nect|ncct)\b",
    "arterial": r"\b(arterial|arteriel\w*|arteriell\w*|arterieel|arteriale|arteriosa|art|dongmai\w*|dong mai|early|"
                r"cta)\b",
    "venous": r"\b(portal\w*|portale|portaal|portalven\w*|venous|veineu\w*|venos\w*|venoes\w*|venosa|veneus|pv|vp|pvp|"
              r"jingmai\w*|jing mai|menmai\w*|men mai|menjingmai\w*)\b",
    "delayed": r"\b(delayed?|delay|late|laat|tardi\w*|tardif|tardive|spat\w*|spaet\w*|retard\w*|ritardat\w*|"
               r"yanchi\w*|yan chi|excretory|washout|wash out|\d+ ?min)\b",
}
_COMPILED = {phase: re.compile(pattern) for phase, pattern in KEYWORDS.items()}
# matched on the raw description, before folding removes them: Chinese and Japanese terms, and "C-" (non-contrast)
CHARACTERS = {
    "unenhanced": ("平扫", "平掃", "単純", "非造影", "c-"),
    "arterial": ("动脉", "動脈"),
    "venous": ("静脉", "門脈", "门脉", "门静脉", "靜脈", "門脈相"),
    "delayed": ("延迟", "延遲", "遅延", "平衡相", "排泄"),
}

# image thresholds (HU): see the module docstring
UNENHANCED_MAX_HU = 85.0
ARTERIAL_AORTA_HU = 250.0
ARTERIAL_GRADIENT_HU = 60.0  # aorta minus IVC in an arterial phase (the IVC not yet opacified)
VENOUS_AORTA_HU = 135.0
CORTICAL_BONE_HU = 600.0


def fold(text: str) -> str:
    """Lower case, accents removed, anything but letters and digits as single spaces."""
    text = unicodedata.normalize("NFKD", text.lower().replace("ß", "ss"))
    text = "".join(c for c in text if not unicodedata.combining(c))
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


def description_phase(description: str) -> str | None:
    """The one phase a series description names (None when it names none or several)."""
    raw = re.sub(r"门静脉|門靜脈", "门脉", description.lower())  # portal vein: venous, not two phases
    text = fold(description)
    text = re.sub(r"\blate arterial\b", "arterial", text)
    text = re.sub(r"\bportal ?ven\w*\b", "portal", text)
    found = [phase for phase, pattern in _COMPILED.items()
             if pattern.search(text) or any(re.search(re.escape(w) + (r"(?![\w+])" if w == "c-" else ""), raw)
                                            for w in CHARACTERS[phase])]
    return found[0] if len(found) == 1 else None


def seconds_of_day(value) -> float | None:
    """A DICOM TM value (HHMMSS.frac, HH:MM:SS accepted) as seconds since midnight."""
    if value is None:
        return None
    text = str(value).strip().replace(":", "")
    match = re.match(r"^(\d{2})(\d{2})?(\d{2})?(\.\d+)?$", text)
    if not match:
        return None
    hours, minutes, secs = int(match.group(1)), int(match.group(2) or 0), int(match.group(3) or 0)
    return hours * 3600 + minutes * 60 + secs + float(match.group(4) or 0)


def timing_phase(delay_s: float | None) -> str | None:
    """The phase of an acquisition ``delay_s`` seconds after the contrast bolus started."""
    if delay_s is None:
        return None
    if delay_s < 0:
        return "unenhanced"
    if 10 <= delay_s <= 50:
        return "arterial"
    if 55 <= delay_s <= 130:
        return "venous"
    if delay_s >= 150:
        return "delayed"
    return None


def header_phase(description: str, delay_s: float | None, has_agent: bool | None, agent_informative: bool,
                 order_phase: str | None) -> tuple[str | None, str]:
    """The phase the headers give, and the evidence in words."""
    from_description = description_phase(description)
    from_timing = timing_phase(delay_s)
    evidence = []
    if from_description:
        evidence.append(f"description names {from_description}")
    if delay_s is not None:
        evidence.append(f"acquired {delay_s:.0f} s after the bolus start"
                        + (f" ({from_timing})" if from_timing else ""))
    no_agent = agent_informative and has_agent is False
    if agent_informative:
        evidence.append("no contrast agent in the header" if no_agent else "contrast agent in the header")
    if order_phase:
        evidence.append(f"acquisition order: {order_phase}")
    if from_timing:
        phase = from_timing
    elif from_description:
        phase = from_description
    elif no_agent:
        phase = "unenhanced"
    else:
        phase = order_phase
    if from_timing and from_description and from_timing != from_description:
        evidence.append("description and timing disagree")
    return phase, "; ".join(evidence) if evidence else "no phase information in the headers"


def _largest_component(mask: np.ndarray) -> np.ndarray | None:
    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def vessel_attenuation(hu: np.ndarray, x_mm: np.ndarray, y_mm: np.ndarray, pixel_mm: float
                       ) -> tuple[float, float] | None:
    """(aorta HU, IVC HU) on one axial slice, or None when no vertebral body is found.

    The vertebral body is the largest cortical-bone component near the body's midline in its posterior half;
    the aorta is the brightest 8 mm square (mean) 5-35 mm in front of it and up to 25 mm to its left, the IVC
    the brightest one 10-40 mm to its right, both away from bone and fat. ``x_mm`` / ``y_mm``: patient
    coordinates (LPS) of every pixel."""
    body = hu > -500
    if body.sum() < 100:
        return None
    bx, by = float(x_mm[body].mean()), float(y_mm[body].mean())
    bone = (hu > CORTICAL_BONE_HU) & (np.abs(x_mm - bx) < 60) & (y_mm > by - 20)
    vertebra = _largest_component(bone)
    if vertebra is None or vertebra.sum() * pixel_mm ** 2 < 60:
        return None
    around = ndimage.find_objects(vertebra.astype(np.uint8))[0]
    vertebra[around] = ndimage.binary_fill_holes(vertebra[around])  # the cortex's ring filled, in its box only
    vx = float(x_mm[vertebra].mean())
    front = float(y_mm[vertebra].min())
    size = max(3, int(round(8.0 / pixel_mm)))
    reach = 2 * max(1, int(round(6.0 / pixel_mm))) + 1
    window = (x_mm >= vx - 40) & (x_mm <= vx + 25) & (y_mm >= front - 45) & (y_mm <= front - 5)
    if not window.any():
        return None
    rows, cols = np.nonzero(window)
    margin = 2 * size + reach
    box = (slice(max(rows.min() - margin, 0), rows.max() + margin + 1),
           slice(max(cols.min() - margin, 0), cols.max() + margin + 1))  # filter only around the search windows
    hu, x_mm, y_mm, vertebra = hu[box], x_mm[box], y_mm[box], vertebra[box]
    mean = ndimage.uniform_filter(hu.astype(np.float32), size)
    low = ndimage.minimum_filter(hu, size)
    near_bone = ndimage.maximum_filter(hu > CORTICAL_BONE_HU, size=reach)  # square dilations: separable, fast
    usable = (low > -60) & ~near_bone & ~ndimage.maximum_filter(vertebra, size=2 * size + 1)
    aorta = usable & (x_mm >= vx - 5) & (x_mm <= vx + 25) & (y_mm >= front - 35) & (y_mm <= front - 5)
    ivc = usable & (x_mm >= vx - 40) & (x_mm <= vx - 10) & (y_mm >= front - 45) & (y_mm <= front - 5)
    if not aorta.any() or not ivc.any():
        return None
    return float(mean[aorta].max()), float(mean[ivc].max())


def image_phase(aorta_hu: float | None, ivc_hu: float | None) -> str | None:
    """The phase the vessels' attenuation shows (None without a measurement)."""
    if aorta_hu is None or ivc_hu is None:
        return None
    if aorta_hu < UNENHANCED_MAX_HU:
        return "unenhanced"
    if aorta_hu >= ARTERIAL_AORTA_HU or (aorta_hu >= 150 and aorta_hu - ivc_hu >= ARTERIAL_GRADIENT_HU):
        return "arterial"
    if aorta_hu >= VENOUS_AORTA_HU:
        return "venous"
    return "delayed"


def measure_series(files: list[str], samples: int = 5) -> tuple[float | None, float | None]:
    """Median aorta and IVC attenuation over ``samples`` slices spread over the middle of a series (files in
    slice order); (None, None) when fewer than two slices give a measurement."""
    import SimpleITK as sitk

    if not files:
        return None, None
    picks = sorted({int(round(v)) for v in np.linspace(0.2 * (len(files) - 1), 0.8 * (len(files) - 1), samples)})
    found = []
    for index in picks:
        try:
            image = sitk.ReadImage(files[index])
        except RuntimeError:
            continue
        hu = sitk.GetArrayFromImage(image).astype(np.float32)
        hu = hu.reshape(hu.shape[-2:])
        origin = np.asarray(image.GetOrigin())
        direction = np.asarray(image.GetDirection()).reshape(image.GetDimension(), image.GetDimension())
        spacing = image.GetSpacing()
        rows, cols = np.indices(hu.shape, dtype=np.float32)
        x_mm = origin[0] + direction[0, 0] * spacing[0] * cols + direction[0, 1] * spacing[1] * rows
        y_mm = origin[1] + direction[1, 0] * spacing[0] * cols + direction[1, 1] * spacing[1] * rows
        measured = vessel_attenuation(hu, x_mm, y_mm, float(min(spacing[0], spacing[1])))
        if measured is not None:
            found.append(measured)
    if len(found) < 2:
        return None, None
    values = np.median(np.asarray(found), axis=0)
    return float(values[0]), float(values[1])


def decide(header: str | None, image: str | None) -> tuple[str | None, str]:
    """The phase kept and where it came from."""
    if image and header and image != header:
        return image, f"image (the headers said {header})"
    if image and header:
        return image, "headers and image agree"
    if image:
        return image, "image (no phase in the headers)"
    if header:
        return header, "headers (image inconclusive: no aorta found)"
    return None, "unknown: neither headers nor image tell"


def settle_study(series: list, acquisition_of) -> None:
    """Within one study, revert an image-made phase to the headers' when another acquisition holds that phase
    by agreeing headers and image and the headers' phase is held by no acquisition (see the module docstring).
    ``series``: the study's candidate series (with ``phase``, ``header_phase``, ``phase_source``);
    ``acquisition_of``: series -> acquisition key (reconstructions of one acquisition share it)."""
    agreed: dict[str, set] = {}
    for s in series:
        if s.phase and s.phase_source == "headers and image agree":
            agreed.setdefault(s.phase, set()).add(acquisition_of(s))
    held = {s.phase for s in series if s.phase}
    for s in series:
        overruled = s.phase_source.startswith("image (the headers said")
        if not overruled or not s.header_phase or s.header_phase in held:
            continue
        others = agreed.get(s.phase, set()) - {acquisition_of(s)}
        if others:
            image = s.phase
            s.phase = s.header_phase
            s.phase_source = (f"headers (the image read {image}, but another acquisition of the study is the "
                              f"{image} phase by headers and image)")
