"""Pseudonyms: keyed hashes (HMAC-SHA256) of patient and study identifiers with a key file the user keeps.

The same key gives the same pseudonym for the same PatientID on every run and on every other export, so
cohorts imported separately can be joined; without the key the pseudonyms cannot be traced back or recomputed
from a guessed PatientID. A cohort records the key's fingerprint (not the key), so that a later import into it
with another key, whose ids would not match, is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from fusion_model.errors import UserInputError

KEY_BYTES = 32


def create_key(path: Path) -> bytes:
    """Write a new random key to ``path`` (readable by its owner only); refuses to replace an existing file."""
    path = Path(path)
    if path.exists():
        raise UserInputError(f"{path}: already exists; drop --new-key to use it, or choose another --key-file")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key.hex() + "\n")
    return key


def read_key(path: Path) -> bytes:
    """The key in ``path`` (64 hexadecimal digits)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(
            f"{path}: pseudonymisation key not found. Give the key file of earlier imports (--key-file), or create "
            "one with --new-key for a new project (ids made with another key will not match)")
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise UserInputError(f"{path}: is not a fusion-model key (expected 64 hexadecimal digits); give the key file "
                             "written by --new-key")
    return key


def fingerprint(key: bytes) -> str:
    """A short public fingerprint of a key (recorded in the cohort; reveals nothing of the key)."""
    return hmac.new(key, b"fusion-model key fingerprint", hashlib.sha256).hexdigest()[:16]


def pseudonym(key: bytes, kind: str, value: str, length: int = 10) -> str:
    """The keyed hash of an identifier of ``kind`` (patient, study ...), ``length`` hex digits."""
    digest = hmac.new(key, f"{kind}:{value.strip()}".encode(), hashlib.sha256).hexdigest()
    return digest[:length]
