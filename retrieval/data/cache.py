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
