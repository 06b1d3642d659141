"""The model artifact's manifest (``manifest.json`` and its hash ``manifest.sha256``): names, format and
verification, without the network libraries, so that a command can refuse a folder that is not a model before it
loads them. The artifact itself is :mod:`fusion_model.artifact`'s."""

from __future__ import annotations

import json
from pathlib import Path

from clinical_schema import SCHEMA_VERSION
from fusion_model import __version__
from fusion_model.errors import UserInputError
from fusion_model.fileio import sha256_file

FORMAT = "fusion-model-artifact"
FORMAT_VERSION = 5  # 2: one entry per fitted variant, its heads inside it; 3: the encoder's fold networks;
# 4: the encoder networks' input skip (encoder.input_skip); 5: the embedding layer normalised (LayerNorm, GELU)
MANIFEST = "manifest.json"
MANIFEST_HASH = "manifest.sha256"


def read_manifest(path: Path, verify_files: bool = True) -> dict:
    """The verified manifest of an artifact directory: its own hash, format and versions checked and, unless not
    ``verify_files``, the hash of every file it lists (the commands check the manifest alone before they load the
    network libraries; loading the model checks everything)."""
    path = Path(path)
    manifest_path, hash_path = path / MANIFEST, path / MANIFEST_HASH
    if not manifest_path.is_file() or not hash_path.is_file():
        raise UserInputError(f"{path}: not a fusion-model artifact ({MANIFEST} or {MANIFEST_HASH} missing); "
                             "give the folder written by 'fusion-model train'")
    if sha256_file(manifest_path) != hash_path.read_text().strip():
        raise UserInputError(f"{manifest_path}: was modified after training (SHA-256 mismatch); "
                             "the artifact cannot be trusted: retrain or restore it")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserInputError(f"{manifest_path}: not valid JSON ({err.msg})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise UserInputError(f"{path}: artifact format {manifest.get('format')} v{manifest.get('format_version')} "
                             f"is not {FORMAT} v{FORMAT_VERSION}; retrain it with this fusion-model")
    if str(manifest.get("schema_version", "")).split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise UserInputError(f"{path}: trained with clinical schema {manifest.get('schema_version')}, this "
                             f"fusion-model uses {SCHEMA_VERSION}; retrain the model")
    if str(manifest.get("package_version", "")).split(".")[0] != __version__.split(".")[0]:
        raise UserInputError(f"{path}: written by fusion-model {manifest.get('package_version')}, incompatible "
                             f"with {__version__}; retrain or install that version")
    if not verify_files:
        return manifest
    for rel, digest in manifest["files"].items():
        file = path / rel
        if not file.is_file():
            raise UserInputError(f"{file}: missing from the artifact; restore it or retrain")
        if sha256_file(file) != digest:
            raise UserInputError(f"{file}: was modified after training (SHA-256 mismatch); "
                                 "the artifact cannot be trusted: retrain or restore it")
    return manifest


def unlisted_files(path: Path, manifest: dict) -> list[str]:
    """Files in the artifact folder that its manifest does not list (nothing of the artifact reads them, but a
    shared model folder is where a stranger's file would sit beside trusted ones)."""
    path = Path(path)
    listed = set(manifest["files"]) | {MANIFEST, MANIFEST_HASH}
    present = (p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    return sorted(name for name in present if name not in listed)


def unlisted_files_note(path: Path, names: list[str]) -> str:
    """The warning naming files in a model folder that its manifest does not list."""
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (f"{path}: {len(names)} file(s) that the manifest does not list ({shown}); they were not written by "
            "training and nothing reads them: remove them, or find out who put them there")
