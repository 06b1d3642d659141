"""The interactive CT viewer of the pages (case cards, the reader-study application): NiiVue, vendored in
``static/niivue/`` (scripts/fetch_niivue.py fetches its released UMD build from npm), driven by
``static/viewer.js``. Here: the volumes it shows, as NIfTI bytes, and the scripts to inline in a
self-contained page (a case card opened from disk cannot fetch files)."""

from __future__ import annotations

import base64
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

STATIC = Path(__file__).resolve().parent / "static"
NIIVUE = STATIC / "niivue" / "niivue.umd.js"
VIEWER = STATIC / "viewer.js"


def contour(mask: np.ndarray) -> np.ndarray:
    """The in-plane (axial) contour of a 0/1 mask (z, y, x): its voxels with a 4-neighbour outside the mask in
    their own slice, so an outline drawn on top leaves the lesion's pixels visible."""
    mask = np.asarray(mask) > 0
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    return (mask & ~ndimage.binary_erosion(mask, structure, border_value=0)).astype(np.uint8)


def nifti_bytes(image: sitk.Image) -> bytes:
    """A SimpleITK image as gzipped NIfTI bytes (geometry only; no text fields)."""
    clean = sitk.GetImageFromArray(sitk.GetArrayFromImage(image))
    clean.CopyInformation(image)
    fd, name = tempfile.mkstemp(suffix=".nii.gz")
    os.close(fd)
    try:
        sitk.WriteImage(clean, name, True)
        return Path(name).read_bytes()
    finally:
        os.unlink(name)


def array_image(array: np.ndarray, spacing_xyz=(1.0, 1.0, 1.0), dtype=None) -> sitk.Image:
    """A (z, y, x) array as an image with the given spacing and the origin at 0."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array if dtype is None else array.astype(dtype)))
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    return image


def embedded_spec(phases: dict[str, bytes], outline: bytes | None, saliency: bytes | None = None) -> str:
    """The viewer's JSON spec with the volumes inlined (base64), for a page opened from disk."""
    def entry(name, data):
        return {"name": name, "base64": base64.b64encode(data).decode("ascii")}

    spec = {"phases": [entry(n, d) for n, d in phases.items()]}
    if outline is not None:
        spec["outline"] = entry("outline", outline)
    if saliency is not None:
        spec["saliency"] = entry("saliency", saliency)
    return json.dumps(spec).replace("</", "<\\/")


def inline_scripts() -> str:
    """NiiVue and the viewer as inline <script> blocks (about 2.3 MB), for a self-contained page."""
    niivue = NIIVUE.read_text(encoding="utf-8").replace("</script", "<\\/script")
    viewer = VIEWER.read_text(encoding="utf-8")
    return f"<script>{niivue}</script>\n<script>{viewer}</script>"
