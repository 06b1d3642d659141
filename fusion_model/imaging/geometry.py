"""Physical-space checks between CT phases and masks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class Geometry:
    """An image's grid in physical space: size, spacing, origin and direction."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image | sitk.ImageFileReader) -> "Geometry":
        """The geometry of an image or of a reader's header."""
        return cls(
            tuple(int(v) for v in image.GetSize()),
            tuple(float(v) for v in image.GetSpacing()),
            tuple(float(v) for v in image.GetOrigin()),
            tuple(float(v) for v in image.GetDirection()),
        )

    def describe(self) -> str:
        """The grid in words for messages."""
        sp = "x".join(f"{v:g}" for v in self.spacing)
        return f"size {self.size}, spacing {sp} mm, origin ({', '.join(f'{v:.2f}' for v in self.origin)})"


def geometry_differences(
    reference: Geometry,
    other: Geometry,
    spacing_rtol: float = 1e-3,
    origin_tol_fraction: float = 0.05,
    direction_atol: float = 1e-3,
) -> list[str]:
    """What differs between two grids, in words; empty when they share physical space.

    Origins may differ by ``origin_tol_fraction`` of the smallest voxel spacing (rounding in
    converters), spacings by a relative ``spacing_rtol``.
    """
    out = []
    if reference.size != other.size:
        out.append(f"size {other.size} vs {reference.size}")
    if not np.allclose(reference.spacing, other.spacing, rtol=spacing_rtol, atol=0):
        out.append(f"spacing {_fmt(other.spacing)} vs {_fmt(reference.spacing)} mm")
    origin_tol = origin_tol_fraction * min(reference.spacing)
    if np.max(np.abs(np.subtract(reference.origin, other.origin))) > origin_tol:
        out.append(f"origin {_fmt(other.origin)} vs {_fmt(reference.origin)} mm")
    if not np.allclose(reference.direction, other.direction, atol=direction_atol, rtol=0):
        out.append("direction cosines differ")
    return out


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


def resample_onto(image: sitk.Image, reference: sitk.Image, is_mask: bool, default_value: float) -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid: nearest neighbour for masks, linear for CT."""
    interpolator = sitk.sitkNearestNeighbor if is_mask else sitk.sitkLinear
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, default_value, image.GetPixelID())
