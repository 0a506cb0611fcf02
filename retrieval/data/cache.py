"""Where fusion keeps what it can rebuild: encoded dataset features, the caption memory and the
encoders' ONNX graphs."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    env = os.environ.get("FUSION_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fusion" / "features"


def memory_cache_dir() -> Path:
    """The caption memory's sentence vectors, beside the feature cache."""
    return default_cache_dir().parent / "memory"


def onnx_cache_dir() -> Path:
    """The encoders' ONNX graphs, exported once per machine and model (retrieval/encoders/onnx_engine.py)."""
    return default_cache_dir().parent / "onnx"


def cache_key(ident) -> str:
    """The 16-hex-digit name part of a cache file: the sha1 of `ident` (a string as it is, anything
    else as JSON). Every cache of rebuilt arrays is named this way, so that what it was made from
    is in its name."""
    import hashlib
    import json

    text = ident if isinstance(ident, str) else json.dumps(ident)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def dataset_fingerprint(root: Path, source: Path | None, photos: list[str]) -> list:
    """What a dataset cache is keyed by: the captions file's contents (when there is one) and each
    photo's path under `root` and size. Not where the folder is nor file times: copying a dataset
    to another disk (`cp -r`, a fresh copy of the data) changes both and would throw away an hour
    of encoded features for nothing. A photo edited in place to the very same size keeps its old
    features; delete the cache folder after such an edit."""
    import hashlib

    digest = hashlib.sha1(Path(source).read_bytes()).hexdigest() if source else None
    sizes = []
    for rel in photos:
        path = Path(root) / rel
        sizes.append((str(rel), path.stat().st_size if path.is_file() else -1))
    return [digest, sizes]


def cached(path: Path, make):
    """The arrays saved at `path`, made by `make()` and saved first if missing (whole or not at all)."""
    import numpy as np

    if path.is_file():
        z = np.load(path)
        return {k: z[k] for k in z.files}
    out = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # two runs making it at once both finish
    np.savez(tmp, **out)
    os.replace(tmp, path)
    return out
