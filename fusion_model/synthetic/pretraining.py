"""Lesions drawn for encoder pre-training (``fusion-model pretrain-encoder``), straight into crops.

The generator draws lesions without limit, each with its latent values known. Here each drawn lesion is rendered
straight into a crop of an experiment's geometry (its spacing, cube, HU window and channels): the phantom's
anatomy around an adrenal gland, the lesion over it, partial-volume blur and noise as in ``fusion-model synth``,
cut around the mask's centroid as the pipeline cuts its crops; with the targets a network can read back from it:

- always: the latent size (log mm), the ellipsoid's two axis ratios, the outline's irregularity; the lesion's
  type (the generator's eight kinds; with ``outline: gland`` also "normal gland") and malignancy;
- with CT phases: the latent attenuation in each phase, the enhancement of each enhanced phase over the
  unenhanced one, the washout between venous and delayed, the texture SD, necrosis, calcification and fat.

With ``outline: gland`` the mask is the whole adrenal gland (two or three limbs of random length, thickness,
height and bend) with the lesion on a limb, and a share of the glands has no lesion: AdrenalMNIST3D's masks are
of this kind. Example i of seed s comes from ``default_rng([s, i])``, so any number of worker processes draws the
same set. The training on these crops is :mod:`fusion_model.encoder.pretrain`.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from fusion_model.imaging.preprocess import AIR_HU, depth_map, window_hu
from fusion_model.progress import track
from fusion_model.synthetic import phantom
from fusion_model.synthetic.generate import CENTRES, draw_lesion_parameters
from fusion_model.synthetic.profiles import PROFILES

NORMAL_GLAND = "normal_gland"
ENHANCED = ("arterial", "venous", "delayed")


# --- targets -------------------------------------------------------------------------------------------------
def regression_targets(phases: list[str]) -> list[str]:
    """The continuous latent values the crop's channels show: geometry always, intensities per phase."""
    names = ["log_size_mm", "axis_ratio_mid", "axis_ratio_least", "irregularity"]
    names += [f"{phase}_hu" for phase in phases]
    if "unenhanced" in phases:
        names += [f"{phase}_enhancement_hu" for phase in ENHANCED if phase in phases]
    if "venous" in phases and "delayed" in phases:
        names.append("washout_fraction")
    if phases:
        names.append("texture_sd_hu")
    return names


def binary_targets(phases: list[str]) -> list[str]:
    """Yes/no latent findings the CT shows (none for mask-only crops)."""
    return ["necrosis", "calcification", "macroscopic_fat"] if phases else []


def type_names(outline: str) -> list[str]:
    """The type classes: the generator's kinds (and a normal gland for gland outlines)."""
    return [p.name for p in PROFILES] + ([NORMAL_GLAND] if outline == "gland" else [])


def _phase_hu(latents: dict, phase: str) -> float:
    enhancement = {"unenhanced": 0.0, "arterial": latents["arterial_enhancement_hu"],
                   "venous": latents["venous_enhancement_hu"],
                   "delayed": latents["venous_enhancement_hu"] * (1.0 - latents["washout_fraction"])}
    return latents["unenhanced_hu"] + enhancement[phase]


def _target_values(lesion, names: list[str]) -> list[float]:
    latents, semi = lesion.latents, lesion.semi_axes
    values = {"log_size_mm": math.log(latents["size_mm"]), "axis_ratio_mid": semi[1] / semi[0],
              "axis_ratio_least": semi[2] / semi[0], "irregularity": latents["irregularity"],
              "washout_fraction": latents["washout_fraction"], "texture_sd_hu": latents["texture_sd_hu"]}
    for phase in phantom.PHASE_INDEX:
        values[f"{phase}_hu"] = _phase_hu(latents, phase)
        values[f"{phase}_enhancement_hu"] = _phase_hu(latents, phase) - latents["unenhanced_hu"]
    return [float(values[n]) for n in names]


# --- drawing ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DrawSettings:
    """What one drawn example looks like: channels, crop geometry, outline."""

    phases: tuple[str, ...]
    depth_channel: bool
    voxels: int
    spacing_mm: float
    hu_window: tuple[float, float]
    outline: str
    normal_fraction: float


@dataclass
class Example:
    """One drawn crop (channels, z, y, x; float16 in [0, 1]) and its targets (NaN where not defined)."""

    crop: np.ndarray
    regression: np.ndarray
    binary: np.ndarray
    type_index: int
    malignant: float


def _coarse_field(grid: phantom.Grid, scale_mm: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth unit-SD random field on ``grid`` with correlation length ``scale_mm``, drawn on a grid a quarter
    as fine and interpolated (the same field, sixty times cheaper than filtering at full resolution)."""
    coarse = tuple(max(2, int(math.ceil(n / 4)) + 1) for n in grid.shape)
    sigma = tuple(scale_mm / (4 * s) for s in grid.spacing[::-1])
    field = phantom.smooth_field(coarse, sigma, rng)
    return ndimage.zoom(field, [n / c for n, c in zip(grid.shape, coarse)], order=1, grid_mode=True,
                        mode="grid-constant")[tuple(slice(0, n) for n in grid.shape)]


def gland_mask(grid: phantom.Grid, junction: tuple[float, float, float], rng: np.random.Generator
               ) -> tuple[np.ndarray, list[tuple[np.ndarray, float]]]:
    """An adrenal gland (z, y, x bool): two or three limbs from one junction, each a flat ellipsoid (length
    15-35 mm, thickness 3-7 mm, height 16-36 mm) bent by a smooth random field; and each limb's (direction,
    length), for placing a lesion on it."""
    x, y, z = grid.axes()
    bend = 2.5 * rng.uniform(0.3, 1.0)
    dx, dy = (bend * _coarse_field(grid, 8.0, rng) for _ in range(2))
    xb, yb, zb = x + dx, y + dy, np.broadcast_to(z, grid.shape)
    mask = np.zeros(grid.shape, dtype=bool)
    limbs = []
    first = rng.uniform(0, 2 * math.pi)
    for k in range(int(rng.integers(2, 4))):
        angle = first + k * rng.uniform(0.5, 1.6) * (1 if k < 2 else -1)
        direction = np.array([math.cos(angle), math.sin(angle)])
        length, thickness, height = rng.uniform(15, 35), rng.uniform(1.5, 3.5), rng.uniform(8, 18)
        tilt = rng.uniform(-0.3, 0.3)  # the limb's axis rises or falls along its length
        cx, cy = junction[0] + direction[0] * length / 2, junction[1] + direction[1] * length / 2
        along = (xb - cx) * direction[0] + (yb - cy) * direction[1]
        across = -(xb - cx) * direction[1] + (yb - cy) * direction[0]
        up = zb - junction[2] - tilt * along
        mask |= (along / (length / 2)) ** 2 + (across / thickness) ** 2 + (up / height) ** 2 <= 1.0
        limbs.append((direction, length))
    return mask, limbs


def _cut(volume: np.ndarray, centre: np.ndarray, voxels: int, fill: float) -> np.ndarray:
    """The ``voxels``^3 cube of ``volume`` centred on voxel ``centre`` (z, y, x); ``fill`` beyond its edges."""
    out = np.full((voxels,) * 3, fill, dtype=volume.dtype)
    lo = np.asarray(centre) - (voxels - 1) // 2
    src = tuple(slice(max(0, a), min(n, a + voxels)) for a, n in zip(lo, volume.shape))
    dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, lo))
    out[dst] = volume[src]
    return out


def draw_example(index: int, seed: int, settings: DrawSettings) -> Example:
    """Example ``index`` of the stream ``seed``: a generator lesion (or a normal gland) rendered into a crop."""
    rng = np.random.default_rng([seed, index])
    s = settings.spacing_mm
    side = "right" if rng.random() < 0.5 else "left"
    lesion = draw_lesion_parameters(rng, side)
    normal = settings.outline == "gland" and rng.random() < settings.normal_fraction
    anatomy = phantom.Anatomy.draw(rng)
    ax_, ay_ = anatomy.adrenal(side)
    centre = np.array([ax_ + rng.normal(0, 2), ay_ + 4 + rng.normal(0, 2), rng.normal(0, 3)])
    big = int(math.ceil(1.5 * settings.voxels))  # room to cut the crop around the mask's centroid
    half = (big - 1) / 2 * s
    grid = phantom.Grid(origin=tuple(centre - half), spacing=(s, s, s), shape=(big, big, big))
    mask = np.zeros(grid.shape, dtype=bool)
    gland = None
    lesion_centre = tuple(centre)
    if settings.outline == "gland":
        gland, limbs = gland_mask(grid, tuple(centre), rng)
        direction, length = limbs[int(rng.integers(len(limbs)))]
        reach = rng.uniform(0.2, 0.9) * length
        lesion_centre = (centre[0] + direction[0] * reach, centre[1] + direction[1] * reach, centre[2])
        mask |= gland
    drawings = []
    if not normal:
        drawing = phantom.draw_lesion(grid, lesion_centre, lesion.latents, lesion.semi_axes, lesion.angle,
                                      cyst=lesion.profile.name == "cyst", rng=rng)
        mask[drawing.box] |= drawing.mask
        drawings.append(drawing)
    if not mask.any():  # a lesion smaller than a voxel: outline its centre voxel
        mask[tuple(int(v) for v in np.rint((np.asarray(lesion_centre[::-1]) - grid.origin[::-1]) / s))] = True
    at = np.rint(ndimage.center_of_mass(mask)).astype(int)
    crop_mask = _cut(mask.astype(np.uint8), at, settings.voxels, 0)
    channels = []
    if settings.phases:
        labels = phantom.anatomy_labels(grid, anatomy)
        if gland is not None:  # the gland drawn here replaces the phantom's
            labels[labels == phantom.LABEL["adrenal"]] = phantom.LABEL["fat"]
            labels[gland] = phantom.LABEL["adrenal"]
        centre_profile = CENTRES[int(rng.integers(len(CENTRES)))]
        for phase in settings.phases:
            hu = phantom.render_phase(labels, drawings, phase, grid, centre_profile.noise_hu,
                                      centre_profile.hu_offset, rng)
            channels.append(window_hu(_cut(hu.astype(np.float32), at, settings.voxels, AIR_HU), settings.hu_window))
    if settings.depth_channel:
        channels.append(depth_map(crop_mask, s))
    channels.append(crop_mask.astype(np.float32))
    crop = np.stack(channels).astype(np.float16)

    reg_names = regression_targets(list(settings.phases))
    bin_names = binary_targets(list(settings.phases))
    if normal:
        regression = np.full(len(reg_names), np.nan)
        binary = np.full(len(bin_names), np.nan)
        type_index, malignant = type_names("gland").index(NORMAL_GLAND), 0.0
    else:
        regression = np.asarray(_target_values(lesion, reg_names))
        binary = np.asarray([float(lesion.latents[n] >= 0.5) for n in bin_names])
        type_index, malignant = type_names(settings.outline).index(lesion.profile.name), float(lesion.profile.malignant)
    return Example(crop, regression.astype(np.float32), binary.astype(np.float32), type_index, malignant)


def _draw_task(args: tuple[int, int, DrawSettings]) -> Example:
    return draw_example(*args)


@dataclass
class DrawnSet:
    """Drawn examples stacked: crops (n, channels, z, y, x) float16 and their targets."""

    crops: np.ndarray
    regression: np.ndarray  # (n, targets) float32, NaN for normal glands
    binary: np.ndarray
    type_index: np.ndarray
    malignant: np.ndarray


def draw_set(n: int, seed: int, settings: DrawSettings, workers: int = 0, progress: bool = True) -> DrawnSet:
    """Examples 0..n-1 of the stream ``seed`` (the same whatever the number of workers)."""
    workers = workers or min(2, os.cpu_count() or 1)
    first = draw_example(0, seed, settings)
    crops = np.empty((n, *first.crop.shape), dtype=np.float16)
    regression = np.empty((n, len(first.regression)), dtype=np.float32)
    binary = np.empty((n, len(first.binary)), dtype=np.float32)
    type_index, malignant = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.float32)

    def store(i: int, example: Example) -> None:
        crops[i], regression[i], binary[i] = example.crop, example.regression, example.binary
        type_index[i], malignant[i] = example.type_index, example.malignant

    store(0, first)
    tasks = [(i, seed, settings) for i in range(1, n)]
    if workers > 1 and n > 64:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(_draw_task, tasks, chunksize=16)
            for i, example in track(enumerate(results, start=1), "drawing lesions", total=n - 1, enabled=progress):
                store(i, example)
    else:
        for i, example in track(enumerate(map(_draw_task, tasks), start=1), "drawing lesions", total=n - 1,
                                enabled=progress):
            store(i, example)
    return DrawnSet(crops, regression, binary, type_index, malignant)
