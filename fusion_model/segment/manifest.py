"""The segmenter's manifest (``segmenter.json``): its name, format and reading, without the network libraries, so
that `segment predict` and `segment evaluate` refuse a folder that is not a segmenter before they load them."""

from __future__ import annotations

import json
from pathlib import Path

from fusion_model.errors import UserInputError

FORMAT = "fusion-model-segmenter"
FORMAT_VERSION = 2  # 2: the detector may learn the gland region; the refiner may see the enhancement
MANIFEST = "segmenter.json"


def read_segmenter_manifest(path: Path) -> dict:
    """The manifest of a segmenter directory, its format and version checked."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise UserInputError(f"{path}: not a segmenter (no {MANIFEST}); give the --out folder of "
                             "'fusion-model segment train'")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserInputError(f"{manifest_path}: unreadable ({err}); retrain the segmenter") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT \
            or manifest.get("format_version") != FORMAT_VERSION:
        found = manifest if isinstance(manifest, dict) else {}
        raise UserInputError(f"{manifest_path}: segmenter format {found.get('format')!r} version "
                             f"{found.get('format_version')!r}; this fusion-model reads version {FORMAT_VERSION}: "
                             "retrain it")
    return manifest
