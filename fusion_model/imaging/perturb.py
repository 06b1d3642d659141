"""Other outlines of the same lesion: erosion and dilation by whole voxels, and smooth random contour
perturbations (a simulated second reader).

A contour perturbation moves every point of the outline along its normal by a smooth random distance: the
lesion's signed distance map (mm, negative inside) is compared with a Gaussian random field of unit SD and a
set correlation length, scaled by an amplitude in mm. Where the field is positive the second outline lies
outside the first. Parts that do not touch the lesion are dropped and holes filled, as a reader draws closed
outlines around the lesion. Arrays are (z, y, x) with ``spacing_zyx`` in mm; every draw takes an explicit random generator, so
the same seed gives the same outlines.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

FIELD_CLIP_SD = 2.5  # the random field is clipped at +/- 2.5 SD: a bounded displacement, a bounded margin


def _structure() -> np.ndarray:
    return ndimage.generate_binary_structure(3, 1)


def erode(mask: np.ndarray, voxels: int) -> np.ndarray:
    """The mask eroded by ``voxels`` steps of the 6-connected neighbourhood (may become empty)."""
    mask = np.asarray(mask, dtype=bool)
    return ndimage.binary_erosion(mask, _structure(), iterations=voxels, border_value=0) if voxels else mask


def dilate(mask: np.ndarray, voxels: int) -> np.ndarray:
    """The mask dilated by ``voxels`` steps of the 6-connected neighbourhood (the array grows nowhere: a lesion
    at the array's edge is cut there)."""
    mask = np.asarray(mask, dtype=bool)
    return ndimage.binary_dilation(mask, _structure(), iterations=voxels) if voxels else mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean arrays (1 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def equivalent_radius_mm(mask: np.ndarray, spacing_zyx) -> float:
    """Radius of the sphere with the lesion's volume."""
    volume = float(mask.sum()) * float(np.prod(spacing_zyx))
    return (3.0 * volume / (4.0 * math.pi)) ** (1.0 / 3.0)


def connected_to(mask: np.ndarray, original: np.ndarray) -> np.ndarray:
    """The parts (26-connected) of ``mask`` that touch ``original``, holes filled: a reader's outline has no
    islands away from the lesion (an empty mask stays empty)."""
    labels, count = ndimage.label(mask, ndimage.generate_binary_structure(3, 3))
    if count > 1:
        keep = np.unique(labels[original & mask])
        mask = np.isin(labels, keep[keep > 0])
    return ndimage.binary_fill_holes(mask) if count else mask


class ContourField:
    """One lesion's signed distance map and its random field, padded so that any amplitude up to ``max_mm``
    fits; :meth:`outline` gives the perturbed mask for an amplitude without drawing again."""

    def __init__(self, mask: np.ndarray, spacing_zyx, rng: np.random.Generator, correlation_mm: float,
                 max_mm: float):
        mask = np.asarray(mask, dtype=bool)
        self.spacing = np.asarray(spacing_zyx, dtype=float)
        reach = FIELD_CLIP_SD * max_mm + float(self.spacing.max())
        self.pad = [int(math.ceil(reach / s)) + 1 for s in self.spacing]
        found = np.argwhere(mask)
        if not len(found):
            raise ValueError("empty mask")
        lo = np.maximum(found.min(axis=0) - self.pad, 0)
        hi = np.minimum(found.max(axis=0) + np.asarray(self.pad) + 1, mask.shape)
        self.box = tuple(slice(a, b) for a, b in zip(lo, hi))
        self.shape = mask.shape
        inside = mask[self.box]
        self.original = inside
        # distance from each voxel centre to the outline, which lies about half a voxel beyond the outermost
        # voxel centres: outside positive, inside negative; zero reproduces the mask exactly
        half = 0.5 * float(self.spacing.min())
        self.signed_mm = np.where(inside, half - ndimage.distance_transform_edt(inside, sampling=self.spacing),
                                  ndimage.distance_transform_edt(~inside, sampling=self.spacing) - half)
        sigma = [correlation_mm / s for s in self.spacing]
        field = ndimage.gaussian_filter(rng.standard_normal(inside.shape), sigma, mode="reflect")
        sd = float(field.std())
        self.field = np.clip(field / sd if sd > 0 else field, -FIELD_CLIP_SD, FIELD_CLIP_SD)

    def outline(self, amplitude_mm: float, bias_mm: float = 0.0) -> np.ndarray:
        """The perturbed mask (full array shape): outline moved by ``amplitude_mm`` x field + ``bias_mm``."""
        box_mask = connected_to(self.signed_mm < amplitude_mm * self.field + bias_mm, self.original)
        out = np.zeros(self.shape, dtype=bool)
        out[self.box] = box_mask
        return out

    def dice(self, amplitude_mm: float, bias_mm: float = 0.0) -> float:
        """Dice of the perturbed outline with the original."""
        return dice(connected_to(self.signed_mm < amplitude_mm * self.field + bias_mm, self.original),
                    self.original)


def correlation_length_mm(mask: np.ndarray, spacing_zyx) -> float:
    """How far a reader's deviation stays alike along the outline: 0.3 of the lesion's radius, at least 4 mm
    (smooth bulges, not voxel noise)."""
    return max(4.0, 0.3 * equivalent_radius_mm(mask, spacing_zyx))


def perturb_to_dice(mask: np.ndarray, spacing_zyx, target_dice: float, rng: np.random.Generator,
                    max_mm: float = 8.0, tolerance: float = 0.005) -> tuple[np.ndarray, float]:
    """A smooth random perturbation of the outline whose Dice with the original is ``target_dice`` (as near as
    the voxels allow): the amplitude is found by bisection on one drawn field. Returns (mask, amplitude mm)."""
    mask = np.asarray(mask, dtype=bool)
    contour = ContourField(mask, spacing_zyx, rng, correlation_length_mm(mask, spacing_zyx), max_mm)
    lo, hi = 0.0, max_mm
    if contour.dice(hi) > target_dice:
        return contour.outline(hi), hi
    best = (abs(contour.dice(lo) - target_dice), lo)
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        d = contour.dice(mid)
        best = min(best, (abs(d - target_dice), mid))
        if abs(d - target_dice) <= tolerance:
            break
        lo, hi = (mid, hi) if d > target_dice else (lo, mid)
    return contour.outline(best[1]), best[1]


# A simulated second reader (synth --second-reader): the outline moved by a smooth field of this amplitude,
# larger for irregular lesions, plus a per-lesion systematic offset (one reader draws a little wider). Set so
# that the mean Dice with the first reader is about 0.92 on the generator's lesion mix (benchmarks/agreement.py).
SECOND_READER_AMPLITUDE_MM = 0.9
SECOND_READER_IRREGULARITY_GAIN = 2.0
SECOND_READER_BIAS_SD_MM = 0.35
SECOND_READER_REFERENCE_RADIUS_MM = 10.0  # amplitudes grow with the square root of the lesion's radius: a reader's
# error in mm is larger on a large lesion, yet its Dice is lower on a small one

def second_reader_outline(mask: np.ndarray, spacing_zyx, irregularity: float, rng: np.random.Generator
                          ) -> np.ndarray:
    """Another radiologist's outline of the same lesion: a realistic disagreement (Dice about 0.92 on average,
    lower on small and irregular lesions, where readers disagree more)."""
    mask = np.asarray(mask, dtype=bool)
    scale = math.sqrt(equivalent_radius_mm(mask, spacing_zyx) / SECOND_READER_REFERENCE_RADIUS_MM)
    amplitude = SECOND_READER_AMPLITUDE_MM * scale * (1.0 + SECOND_READER_IRREGULARITY_GAIN * irregularity)
    bias = float(rng.normal(0.0, SECOND_READER_BIAS_SD_MM * scale))
    contour = ContourField(mask, spacing_zyx, rng, correlation_length_mm(mask, spacing_zyx),
                           max_mm=amplitude + abs(bias) / FIELD_CLIP_SD)
    out = contour.outline(amplitude, bias)
    return out if out.any() else mask
