"""CT-like phantoms of the upper abdomen with an adrenal lesion (numpy + scipy.ndimage).

Coordinates are LPS millimetres (x to the patient's left, y posterior, z superior) with the
adrenal glands near z = 0. Anatomy is a label map (body wall fat and muscle, liver, spleen,
kidneys, aorta, IVC, vertebra, spinal canal, both adrenal limbs); each phase maps labels to
HU, the lesion is drawn over it, then partial-volume blur and correlated noise are added.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

PHASE_INDEX = {"unenhanced": 0, "arterial": 1, "venous": 2, "delayed": 3}

# label: (name, HU unenhanced, arterial, venous, delayed)
TISSUES = (
    ("air", -1000, -1000, -1000, -1000),
    ("fat", -100, -100, -100, -100),
    ("muscle", 50, 55, 62, 60),
    ("liver", 58, 75, 110, 90),
    ("spleen", 45, 120, 120, 100),
    ("kidney", 32, 170, 165, 125),
    ("aorta", 40, 300, 160, 110),
    ("ivc", 40, 80, 150, 110),
    ("bone", 320, 330, 340, 335),
    ("cortical_bone", 750, 750, 750, 750),
    ("csf", 10, 10, 12, 12),
    ("adrenal", 32, 65, 80, 65),
    ("skin", 40, 45, 50, 50),
)
LABEL = {name: i for i, (name, *_) in enumerate(TISSUES)}
HU_TABLE = np.array([row[1:] for row in TISSUES], dtype=np.float32)  # (labels, phases)

FLUID_HU = 15.0
FAT_HU = -90.0
CALCIFICATION_HU = 550.0
PSEUDOCAPSULE_MM = 2.0  # soft tissue between a fat-containing lesion's fat and its outline


@dataclass(frozen=True)
class Grid:
    """An image grid: origin (x, y, z) mm of voxel (0,0,0), spacing (x, y, z) mm, shape (z, y, x)."""

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable coordinate arrays X (1,1,nx), Y (1,ny,1), Z (nz,1,1) in mm."""
        nz, ny, nx = self.shape
        x = (self.origin[0] + self.spacing[0] * np.arange(nx, dtype=np.float32))[None, None, :]
        y = (self.origin[1] + self.spacing[1] * np.arange(ny, dtype=np.float32))[None, :, None]
        z = (self.origin[2] + self.spacing[2] * np.arange(nz, dtype=np.float32))[:, None, None]
        return x, y, z


def _ellipse(x, y, cx, cy, ax, ay, angle=0.0):
    c, s = math.cos(angle), math.sin(angle)
    u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    return (u / ax) ** 2 + (v / ay) ** 2 <= 1.0


@dataclass(frozen=True)
class Anatomy:
    """Per-patient anatomy parameters (mm)."""

    body_half_width: float
    body_half_depth: float
    adrenal_right: tuple[float, float]
    adrenal_left: tuple[float, float]

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "Anatomy":
        """A patient's anatomy: organ positions and sizes, randomly scaled."""
        scale = rng.uniform(0.92, 1.08)
        return cls(
            body_half_width=115 * scale * rng.uniform(0.95, 1.05),
            body_half_depth=85 * scale * rng.uniform(0.95, 1.05),
            adrenal_right=(-38 * scale + rng.normal(0, 2), 30 + rng.normal(0, 2)),
            adrenal_left=(36 * scale + rng.normal(0, 2), 32 + rng.normal(0, 2)),
        )

    def adrenal(self, side: str) -> tuple[float, float]:
        """Centre (x, y in mm) of the adrenal gland on ``side``."""
        return self.adrenal_right if side == "right" else self.adrenal_left


GLAND_LIMBS_BEHIND_MM = 6  # the limbs (and the right gland's fat pad) are centred this far behind the gland's centre


def anatomy_labels(grid: Grid, anatomy: Anatomy) -> np.ndarray:
    """uint8 label volume (z, y, x) of the upper abdomen."""
    x, y, z = grid.axes()
    w, d = anatomy.body_half_width, anatomy.body_half_depth
    cy = 10.0
    plane = np.full(grid.shape[1:], LABEL["air"], dtype=np.uint8)
    x2, y2 = x[0], y[0]
    plane[_ellipse(x2, y2, 0, cy, w, d)] = LABEL["skin"]
    plane[_ellipse(x2, y2, 0, cy, w - 2, d - 2)] = LABEL["fat"]
    plane[_ellipse(x2, y2, 0, cy, w - 18, d - 16)] = LABEL["muscle"]
    plane[_ellipse(x2, y2, 0, cy, w - 26, d - 24)] = LABEL["fat"]
    for side in (-1, 1):
        plane[_ellipse(x2, y2, side * 32, 72, 24, 17)] = LABEL["muscle"]  # paraspinal
    plane[_ellipse(x2, y2, 0, 50, 19, 17)] = LABEL["cortical_bone"]
    plane[_ellipse(x2, y2, 0, 50, 16.5, 14.5)] = LABEL["bone"]
    plane[_ellipse(x2, y2, 0, 76, 7, 6)] = LABEL["csf"]
    plane[_ellipse(x2, y2, 12, 22, 11, 11)] = LABEL["aorta"]
    plane[_ellipse(x2, y2, -22, 14, 13, 9)] = LABEL["ivc"]
    volume = np.broadcast_to(plane, grid.shape).copy()

    liver = _ellipse(x, y, -62, -2, 55, 62, 0.2) & (x < -2) & (z > -80)
    liver &= volume == LABEL["fat"]
    volume[liver] = LABEL["liver"]
    spleen = _ellipse(x, y, 78, 38, 30, 24, -0.5) & (z > -40) & (volume == LABEL["fat"])
    volume[spleen] = LABEL["spleen"]
    for sx in (-1, 1):
        kidney = ((x - sx * 66) / 28) ** 2 + ((y - 55) / 24) ** 2 + ((z + 48) / 48) ** 2 <= 1.0
        volume[kidney & (volume != LABEL["bone"])] = LABEL["kidney"]
    # the right gland lies behind the IVC, medial to the liver's bare area, in a pad of periadrenal fat (as on CT):
    # without it the gland and every right-sided lesion would be engulfed by liver of nearly their attenuation
    ax_r, ay_r = anatomy.adrenal("right")
    pad = _ellipse(x, y, ax_r, ay_r + GLAND_LIMBS_BEHIND_MM, 11, 19) & (z > -24) & (z < 28)
    volume[pad & (volume == LABEL["liver"])] = LABEL["fat"]
    for side in ("right", "left"):
        ax_, ay_ = anatomy.adrenal(side)
        limbs = np.zeros(grid.shape, dtype=bool)
        for angle in (0.45, -0.45):
            limb2d = _ellipse(x2, y2, ax_, ay_ + GLAND_LIMBS_BEHIND_MM, 2.2, 13, angle)
            limbs |= limb2d[None]
        limbs &= (z > -18) & (z < 22)
        volume[limbs] = LABEL["adrenal"]
    return volume


def smooth_field(shape: tuple[int, ...], sigma_vox: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """Gaussian random field with unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="wrap")
    sd = float(field.std())
    return field / sd if sd > 0 else field


@dataclass(frozen=True)
class LesionDrawing:
    """Where the lesion is and its HU per phase inside its bounding box."""

    box: tuple[slice, slice, slice]
    mask: np.ndarray  # bool, box-shaped
    hu: np.ndarray  # (phases, *box) float32, noise-free


def draw_lesion(grid: Grid, centre: tuple[float, float, float], latents: dict, semi_axes: tuple[float, float, float],
                angle: float, cyst: bool, rng: np.random.Generator) -> LesionDrawing:
    """The lesion's region and its noise-free HU per phase (texture, necrosis, fat, calcification)."""
    sx, sy, sz = grid.spacing
    irregularity = latents["irregularity"]
    reach = max(semi_axes) * (1 + 2.5 * irregularity) + 2 * max(grid.spacing)
    lo = [int(math.floor((centre[i] - reach - grid.origin[i]) / grid.spacing[i])) for i in range(3)]
    hi = [int(math.ceil((centre[i] + reach - grid.origin[i]) / grid.spacing[i])) + 1 for i in range(3)]
    shape_xyz = grid.shape[::-1]
    lo = [max(0, v) for v in lo]
    hi = [min(shape_xyz[i], v) for i, v in enumerate(hi)]
    box = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    sub = Grid(
        origin=tuple(grid.origin[i] + lo[i] * grid.spacing[i] for i in range(3)),
        spacing=grid.spacing, shape=(hi[2] - lo[2], hi[1] - lo[1], hi[0] - lo[0]),
    )
    x, y, z = sub.axes()
    c, s = math.cos(angle), math.sin(angle)
    u = ((x - centre[0]) * c + (y - centre[1]) * s) / semi_axes[0]
    v = (-(x - centre[0]) * s + (y - centre[1]) * c) / semi_axes[1]
    w = (z - centre[2]) / semi_axes[2]
    rho = np.sqrt(u * u + v * v + w * w)

    def field(scale_mm: float) -> np.ndarray:
        return smooth_field(sub.shape, (scale_mm / sz, scale_mm / sy, scale_mm / sx), rng)

    outline = field(max(4.0, 0.25 * max(semi_axes)))
    mask = rho <= 1.0 + irregularity * outline
    texture = latents["texture_sd_hu"] * field(2.0)

    base = latents["unenhanced_hu"]
    enhancement = np.array([
        0.0,
        latents["arterial_enhancement_hu"],
        latents["venous_enhancement_hu"],
        latents["venous_enhancement_hu"] * (1.0 - latents["washout_fraction"]),
    ], dtype=np.float32)
    hu = (base + texture)[None] + enhancement[:, None, None, None]
    hu = np.broadcast_to(hu, (4, *sub.shape)).copy()
    if cyst:  # homogeneous content, thin enhancing wall
        hu[:] = base + 0.3 * texture
        wall = mask & (rho > 0.93)
        hu[:, wall] += (0.6 * enhancement)[:, None]
    if latents["necrosis"] >= 0.5:
        necrotic = mask & (rho < 0.8) & (field(0.2 * max(semi_axes) + 3) > 0.4)
        hu[:, necrotic] = FLUID_HU + 0.3 * texture[necrotic]
    if latents["macroscopic_fat"] >= 0.5:
        # the fat lies inside a soft-tissue pseudocapsule (myelolipomas are well circumscribed): fat touching the
        # periadrenal fat would leave an outline that no reader could draw
        fat_fraction = rng.uniform(0.3, 0.8)
        fat_field = field(0.15 * max(semi_axes) + 3)
        inside_capsule = ndimage.distance_transform_edt(mask, sampling=(sz, sy, sx)) > PSEUDOCAPSULE_MM
        candidates = inside_capsule if inside_capsule.any() else mask
        threshold = np.quantile(fat_field[candidates], 1 - fat_fraction) if candidates.any() else np.inf
        fat = candidates & (fat_field >= threshold)
        hu[:, fat] = FAT_HU + 0.5 * texture[fat]
    if latents["calcification"] >= 0.5:
        inside = np.argwhere(mask & (rho < 0.85))
        for _ in range(int(rng.integers(1, 5))) if len(inside) else ():
            pz, py, px = inside[rng.integers(len(inside))]
            radius = rng.uniform(1.0, 2.5)
            cz, cy, cx = (sub.origin[2] + pz * sz, sub.origin[1] + py * sy, sub.origin[0] + px * sx)
            spot = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= radius ** 2
            hu[:, spot & mask] = CALCIFICATION_HU
    return LesionDrawing(box=box, mask=mask, hu=hu)


def render_phase(labels: np.ndarray, lesions: list[LesionDrawing], phase: str, grid: Grid, noise_hu: float,
                 hu_offset: float, rng: np.random.Generator) -> np.ndarray:
    """HU volume (int16) of one phase: tissues, lesions, partial-volume blur, correlated noise."""
    p = PHASE_INDEX[phase]
    image = HU_TABLE[labels, p]
    for lesion in lesions:
        region = image[lesion.box]
        region[lesion.mask] = lesion.hu[p][lesion.mask]
    sx, sy, sz = grid.spacing
    image = ndimage.gaussian_filter(image, (0.35 * 2.0 / sz, 0.6 / sy, 0.6 / sx), truncate=2.5)
    noise = ndimage.gaussian_filter(rng.standard_normal(image.shape, dtype=np.float32), (0, 0.7, 0.7), truncate=2.5)
    noise *= noise_hu / max(float(noise.std()), 1e-6)
    body = labels != LABEL["air"]
    image += np.where(body, noise + hu_offset, 0.3 * noise)
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16)
