"""Large libraries for benchmarks: synthetic photos drawn like real ones (a real photo's
features plus Gaussian noise, re-projected by the shipped model) with matching metadata rows,
written through the same stores as `fusion index`."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from sqlalchemy import insert

from retrieval.data.datasets import load_dataset
from retrieval.training.features import dataset_features
from retrieval.encoders.image_encoder import ImageFeatures
from retrieval.store.library import Library
from retrieval.model.runtime import Runtime
from retrieval.store.meta import VECTOR_DTYPE, Photo, PhotoFeatures

NOISE = 0.35  # relative noise on raw features: neighbours stay plausible, none is a copy


def real_features(data: list[Path], runtime: Runtime):
    """Raw pooled features, logits, per-cell-max logits and mid-level features of real photos
    (cached after the first run)."""
    feats = [dataset_features(load_dataset(d), runtime.image_encoder, runtime.text_encoder, progress=False)
             for d in data]
    return tuple(np.concatenate([getattr(f, k) for f in feats]) for k in ("pooled", "logits", "cells", "mid"))


def build(root: Path, n: int, real: tuple, runtime: Runtime, seed: int = 0, chunk: int = 20_000) -> float:
    """Write an n-photo library at `root`; returns seconds spent."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    lib = Library.open(root, runtime.fingerprint, runtime.dim, create=True)
    scales = [a.std(axis=0, keepdims=True) for a in real]
    now = time.time()
    for lo in range(0, n, chunk):
        m = min(chunk, n - lo)
        src = rng.integers(0, len(real[0]), m)
        p, lg, cl, mid = ((a[src] + NOISE * s * rng.standard_normal((m, a.shape[1]))).astype(np.float32)
                          for a, s in zip(real, scales))
        rerank, vec, sig = runtime.index_features(ImageFeatures(p, lg, None, cl, mid))
        ids = np.arange(lo + 1, lo + m + 1)
        photos = [{"id": int(i), "path": f"/synthetic/{i // 1000:04d}/{i:08d}.jpg", "size": 200_000,
                   "mtime_ns": int((now - i * 60) * 1e9), "sha": f"{i:040x}", "width": 640, "height": 480,
                   "taken_at": now - i * 60, "camera": None, "indexed_at": now} for i in ids]
        feats = [{"photo_id": int(i), "vector": vec[k].astype(VECTOR_DTYPE).tobytes(),
                  "rerank": rerank[k], "signature": sig[k]} for k, i in enumerate(ids)]
        with lib.session() as s, s.begin():
            s.execute(insert(Photo), photos)
            s.execute(insert(PhotoFeatures), feats)
        lib.photos.add(ids, vec)
    lib.save()
    with lib.engine.connect() as con:  # fold the bulk WAL into the database, as a quiet library is
        con.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return time.perf_counter() - start
