"""One lesion read twice: its first reader's outline against a second reader's (or against perturbations of
the first), with what every outline gives: overlap figures, radiological features, the encoder's outputs.

A *comparison* names where the other outline comes from: the second reader's mask (``mask_path_b``, or a
``--masks-b`` folder), or a perturbation of the first outline (eroded or dilated by whole voxels, or moved by
a smooth random field until its Dice is a set value). Every outline of a lesion lies on the grid of its first
CT phase, as the first reader's mask does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from fusion_model.config import PreprocessConfig
from fusion_model.errors import UserInputError
from fusion_model.features.radiological import radiological_features
from fusion_model.imaging.geometry import Geometry, geometry_differences, resample_onto
from fusion_model.imaging.perturb import dilate, erode, perturb_to_dice
from fusion_model.imaging.preprocess import (
    LesionVolumes,
    lesion_crop,
    load_lesion_volumes,
    read_lesion_mask,
)
from fusion_model.records import LesionRecord
from fusion_model.segment.metrics import overlap_metrics

READER_A = "a"
SIZE_FEATURE = "max_axial_diameter_mm"  # the two features whose agreement is shown with Bland-Altman limits
HU_FEATURE = "unenhanced_mean_hu"
VIEW_HALF_WIDTH_MM = (15.0, 60.0)  # the views reach 1.2 lesion extents from its centre, within these bounds
VIEW_CONTEXT = 1.2


@dataclass(frozen=True)
class Comparison:
    """Where a lesion's other outline comes from."""

    name: str  # reader_b, erode_1, dilate_2, contour_dice_0.90 ...
    title: str
    kind: str  # reader, erode, dilate, contour
    voxels: int = 0
    dice: float | None = None


SECOND_READER = Comparison("reader_b", "second reader", "reader")


def perturbation_comparisons(contour_dice: float) -> list[Comparison]:
    """The ``--perturb`` set: eroded and dilated by 1 and 2 voxels, and a smooth contour perturbation."""
    return [
        Comparison("erode_1", "eroded by 1 voxel", "erode", 1),
        Comparison("erode_2", "eroded by 2 voxels", "erode", 2),
        Comparison("dilate_1", "dilated by 1 voxel", "dilate", 1),
        Comparison("dilate_2", "dilated by 2 voxels", "dilate", 2),
        Comparison(f"contour_dice_{contour_dice:.2f}", f"smooth contour perturbation, Dice {contour_dice:.2f}",
                   "contour", dice=contour_dice),
    ]


@dataclass
class PlaneViews:
    """Axial, coronal and sagittal slices through the first outline's centre: CT (HU) and each outline."""

    ct: dict[str, np.ndarray]
    outlines: dict[str, dict[str, np.ndarray]]  # reader / comparison name -> plane -> 0/1 slice
    extent_mm: dict[str, tuple[float, float, float, float]]


@dataclass
class LesionReading:
    """Everything measured on one lesion's outlines (keys: ``a`` and the comparisons' names)."""

    lesion_id: str
    row: int
    features: dict[str, dict] = field(default_factory=dict)
    overlap: dict[str, dict] = field(default_factory=dict)
    encoder: dict[str, tuple[float, np.ndarray]] = field(default_factory=dict)  # logit, embedding
    missing: dict[str, str] = field(default_factory=dict)  # comparison -> why it has no outline
    amplitude_mm: dict[str, float] = field(default_factory=dict)
    views: PlaneViews | None = None


def read_second_mask(record: LesionRecord, reference: sitk.Image, resample: bool) -> np.ndarray:
    """The second reader's outline (0/1 array on the reference grid); refuses another grid (unless
    ``resample``), an empty mask or a mask without the lesion's label, naming the file and the row."""
    where = f"{record.where}, second reader's mask {record.mask_path}"
    try:
        mask = read_lesion_mask(record.mask_path, record.mask_label, reference, list(record.phase_paths.values()))
    except UserInputError as err:
        raise UserInputError(f"{record.where}, second reader's mask: {err}") from None
    differences = geometry_differences(Geometry.of(reference), Geometry.of(mask))
    if differences:
        if not resample:
            raise UserInputError(f"{where}: not on the grid of the lesion's CT ({'; '.join(differences)}); "
                                 "re-export it on the CT grid, or pass --resample to resample it")
        mask = resample_onto(mask, reference, is_mask=True, default_value=0)
    array = sitk.GetArrayFromImage(mask).astype(bool)
    if not array.any():
        what = f"no voxel with label {record.mask_label}" if record.mask_label is not None else "no non-zero voxel"
        raise UserInputError(f"{where}: has {what} (or none left on the CT grid); outline the lesion, correct "
                             "mask_label_b, or leave mask_path_b empty for a lesion read once")
    return array


def check_second_mask_grid(record: LesionRecord, reference_path, resample: bool) -> None:
    """A cheap check before any work: the second mask file exists and (unless ``resample``) shares the grid of
    the lesion's first CT phase (header only)."""
    from fusion_model.imaging.dicom_masks import check_drawn_on, is_dicom_mask
    from fusion_model.imaging.io import read_image_header

    where = f"{record.where}, second reader's mask {record.mask_path}"
    if not record.mask_path.exists():
        raise UserInputError(f"{where}: file not found")
    if is_dicom_mask(record.mask_path):  # its header says which CT it was drawn on
        import pydicom

        try:
            check_drawn_on(record.mask_path, pydicom.dcmread(record.mask_path, stop_before_pixels=True),
                           list(record.phase_paths.values()))
        except UserInputError as err:
            raise UserInputError(f"{record.where}, second reader's mask: {err}") from None
        return
    if resample:
        return
    differences = geometry_differences(Geometry.of(read_image_header(reference_path)),
                                       Geometry.of(read_image_header(record.mask_path)))
    if differences:
        raise UserInputError(f"{where}: not on the grid of the lesion's CT {reference_path.name} "
                             f"({'; '.join(differences)}); re-export it on the CT grid, or pass --resample")


def _image(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(reference)
    return image


def _plane_views(reference: sitk.Image, mask_a: np.ndarray) -> tuple[dict, dict, tuple]:
    spacing_zyx = np.asarray(reference.GetSpacing()[::-1], dtype=float)
    inside = np.argwhere(mask_a)
    centre = np.round(inside.mean(axis=0)).astype(int)
    extent_mm = float(((inside.max(axis=0) - inside.min(axis=0) + 1) * spacing_zyx).max())
    half_mm = float(np.clip(VIEW_CONTEXT * extent_mm, *VIEW_HALF_WIDTH_MM))  # the lesion fills the view
    half = np.ceil(half_mm / spacing_zyx).astype(int)
    lo = np.maximum(centre - half, 0)
    hi = np.minimum(centre + half + 1, mask_a.shape)
    z, y, x = centre
    planes = {"axial": (z, slice(lo[1], hi[1]), slice(lo[2], hi[2])),
              "coronal": (slice(lo[0], hi[0]), y, slice(lo[2], hi[2])),
              "sagittal": (slice(lo[0], hi[0]), slice(lo[1], hi[1]), x)}
    sizes = {"axial": ((hi[2] - lo[2]) * spacing_zyx[2], (hi[1] - lo[1]) * spacing_zyx[1]),
             "coronal": ((hi[2] - lo[2]) * spacing_zyx[2], (hi[0] - lo[0]) * spacing_zyx[0]),
             "sagittal": ((hi[1] - lo[1]) * spacing_zyx[1], (hi[0] - lo[0]) * spacing_zyx[0])}
    extent = {p: (0.0, w, h, 0.0) for p, (w, h) in sizes.items()}
    ct = sitk.GetArrayViewFromImage(reference)  # a view: the slices are copied out before the image goes
    ct_slices = {p: np.array(ct[idx], dtype=np.float32, copy=True) for p, idx in planes.items()}
    # the coronal and sagittal slices run head (high z) at the top
    for p in ("coronal", "sagittal"):
        ct_slices[p] = ct_slices[p][::-1]
    return planes, ct_slices, extent


def _outline_slices(mask: np.ndarray, planes: dict) -> dict[str, np.ndarray]:
    out = {p: np.asarray(mask[idx], dtype=bool) for p, idx in planes.items()}
    for p in ("coronal", "sagittal"):
        out[p] = out[p][::-1]
    return out


def other_outline(comparison: Comparison, mask_a: np.ndarray, spacing_zyx, second: LesionRecord | None,
                  reference: sitk.Image, resample: bool, rng: np.random.Generator) -> tuple[np.ndarray, float | None]:
    """The comparison's outline of the lesion (may be empty after erosion) and the contour amplitude used."""
    if comparison.kind == "reader":
        return read_second_mask(second, reference, resample), None
    if comparison.kind == "erode":
        return erode(mask_a, comparison.voxels), None
    if comparison.kind == "dilate":
        return dilate(mask_a, comparison.voxels), None
    outline, amplitude = perturb_to_dice(mask_a, spacing_zyx, comparison.dice, rng)
    return outline, amplitude


def read_lesion(lesion: LesionRecord, second: LesionRecord | None, comparisons: Sequence[Comparison],
                phases: Sequence[str], ct_intensities: bool, resample: bool, seed: int, index: int,
                preprocess: PreprocessConfig | None, encoder=None, channels: Sequence[str] = ()) -> LesionReading:
    """Measure one lesion's first outline and each comparison's: overlap (Dice, HD95, surface Dice, volume
    difference of the other outline against the first), radiological features, and, with a model's
    ``preprocess`` and ``encoder``, the encoder's logit and embedding of the crop around each outline."""
    volumes = load_lesion_volumes(lesion.phase_paths, lesion.require_mask(), lesion.mask_label, phases, resample,
                                  where=lesion.where, ct_intensities=ct_intensities)
    reference = volumes.phases[volumes.reference_phase]
    spacing_zyx = tuple(float(s) for s in reversed(reference.GetSpacing()))
    mask_a = sitk.GetArrayFromImage(volumes.mask).astype(bool)
    reading = LesionReading(lesion.lesion_id, lesion.row)
    planes, ct_slices, extent = _plane_views(reference, mask_a)
    reading.views = PlaneViews(ct_slices, {READER_A: _outline_slices(mask_a, planes)}, extent)
    outlines = {READER_A: volumes.mask}
    reading.features[READER_A] = radiological_features(volumes.phases, volumes.mask, ct_intensities)
    for c, comparison in enumerate(comparisons):
        rng = np.random.default_rng([seed, index, c])
        other, amplitude = other_outline(comparison, mask_a, spacing_zyx, second, reference, resample, rng)
        if amplitude is not None:
            reading.amplitude_mm[comparison.name] = amplitude
        reading.overlap[comparison.name] = overlap_metrics(other, mask_a, spacing_zyx)
        reading.views.outlines[comparison.name] = _outline_slices(other, planes)
        if not other.any():
            reading.missing[comparison.name] = f"{comparison.title}: no voxel left"
            continue
        outlines[comparison.name] = _image(other, reference)
        reading.features[comparison.name] = radiological_features(volumes.phases, outlines[comparison.name],
                                                                  ct_intensities)
    if preprocess is not None and encoder is not None:
        names = list(outlines)
        crops = np.stack([lesion_crop(LesionVolumes(volumes.phases, outlines[n], volumes.reference_phase),
                                      channels, preprocess) for n in names])
        logits, embeddings = encoder.predict_outputs(crops)
        reading.encoder = {n: (float(logits[i]), embeddings[i]) for i, n in enumerate(names)}
    return reading
