"""On-disk cache of lesion crops, keyed by file contents and preprocessing settings.

Crops are .npy arrays, features small JSON files. A key is the SHA-256 of the input files' contents, the lesion's mask label, the channel
list and the settings; a changed file or setting gives a new key, so stale crops are never
read. Entries are plain .npy files (no pickle) written atomically.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fusion_model.fileio import atomic_save_npy, atomic_write_json, sha256_path

CACHE_FORMAT = 2  # 2: volumes are checked for truncation, NaN and HU range before caching


def default_cache_dir() -> Path:
    """FUSION_MODEL_CACHE, or ~/.cache/fusion-model."""
    env = os.environ.get("FUSION_MODEL_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fusion-model"


class ImageCache:
    """Crops and features on disk, keyed by the files' contents and the settings."""

    @classmethod
    def at(cls, folder: Path | None) -> ImageCache:
        """The cache in ``folder``, or in the default one (:func:`default_cache_dir`)."""
        return cls(folder or default_cache_dir())

    def __init__(self, root: Path | None):
        # absolute: the workers of a Dask cluster (other working folders) find the same shared folder
        self.root = None if root is None else Path(root).absolute() / "images"
        self.hits = 0
        self.misses = 0

    def counting(self) -> ImageCache:
        """The same cache with its own hit and miss counts (from zero): what one task read and computed."""
        own = copy.copy(self)
        own.hits = own.misses = 0
        return own

    def key(self, files: list[Path], settings: dict) -> str:
        """The cache key of a computation on these files with these settings."""
        payload = {"format": CACHE_FORMAT, "files": [sha256_path(f) for f in files], "settings": settings}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def path(self, key: str, suffix: str) -> Path:
        """Where the entry of ``key`` lives."""
        assert self.root is not None
        return self.root / key[:2] / f"{key}{suffix}"

    def _get_or_compute(self, key: str, suffix: str, compute: Callable, read: Callable, write: Callable):
        if self.root is None:
            self.misses += 1
            return compute()
        path = self.path(key, suffix)
        if path.is_file():
            try:
                value = read(path)
                self.hits += 1
                return value
            except (ValueError, OSError):
                path.unlink(missing_ok=True)  # damaged entry: recompute
        value = compute()
        write(path, value)
        self.misses += 1
        return value

    def array(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array of ``key``, computed and stored on a miss."""
        return self._get_or_compute(key, ".npy", compute, lambda p: np.load(p, allow_pickle=False), atomic_save_npy)

    def array_path(self, key: str, compute: Callable[[], np.ndarray]) -> Path:
        """Where the array of ``key`` lies, computed and stored first on a miss, not read on a hit: for a worker
        whose caller reads the shared cache itself (no array sent back through the cluster)."""
        path = self.path(key, ".npy")
        if path.is_file():
            self.hits += 1
            return path
        atomic_save_npy(path, compute())
        self.misses += 1
        return path

    def json(self, key: str, compute: Callable[[], dict]) -> dict:
        """The cached JSON object of ``key``, computed and stored on a miss."""
        return self._get_or_compute(key, ".json", compute, lambda p: json.loads(p.read_text()), atomic_write_json)
