"""A photo's near-duplicate signature: its pooled image features (before any training) under
a fixed random +-1 projection to 128 dimensions, unit length, float16: 256 bytes. Copies of one
shot (resized, recompressed, cropped 5%, recoloured) keep a cosine above ~0.85 while distinct
photos stay below (benchmarks/results/duplicates.md); the shared search space cannot tell them
apart as well, since it is made to bring together photos that one caption fits."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

DIM = 128
DTYPE = "<f2"
BYTES = DIM * 2


@lru_cache(maxsize=4)
def projection(feature_dim: int) -> np.ndarray:
    """(feature_dim, DIM) matrix of +-1 from a fixed integer hash (splitmix64 finaliser), so it
    is the same on every machine and numpy version: libraries stay comparable."""
    x = np.arange(feature_dim * DIM, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    signs = (x & np.uint64(1)).astype(np.float32) * 2 - 1
    return signs.reshape(feature_dim, DIM)


def signatures(pooled: np.ndarray) -> np.ndarray:
    """(N, DIM) float32 unit signatures of raw pooled features (N, feature_dim)."""
    s = np.asarray(pooled, np.float32) @ projection(pooled.shape[1])
    return s / np.maximum(np.linalg.norm(s, axis=1, keepdims=True), 1e-12)


def pack(sig: np.ndarray) -> list[bytes]:
    return [row.astype(DTYPE).tobytes() for row in sig]


def unpack(blobs: list[bytes]) -> np.ndarray:
    if not blobs:
        return np.zeros((0, DIM), np.float32)
    return np.frombuffer(b"".join(blobs), DTYPE).reshape(len(blobs), DIM).astype(np.float32)
