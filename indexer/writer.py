"""One id into SQLite and FAISS, in crash-safe order: SQLite commits first (it holds the
vectors too), FAISS follows in memory and is saved atomically; a crash in between is repaired
on the next open, which rebuilds FAISS from SQLite."""

from __future__ import annotations

import time

import numpy as np
from sqlalchemy import delete, insert, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from indexer.pipeline import Loaded, Timing
from retrieval.store.library import Library
from retrieval.store.meta import VECTOR_DTYPE, Photo, PhotoFeatures, new_ids

SAVE_EVERY_S = 30.0  # bound on FAISS work redone after a crash


class Writer:
    def __init__(self, lib: Library, timing: Timing):
        self.lib, self.timing = lib, timing
        self._last_save = time.monotonic()

    def write(self, items: list[Loaded], rerank: list[bytes], vectors: np.ndarray, signatures: list[bytes],
              existing: dict[str, int]) -> None:
        """Insert new photos, or update `existing` ones (path -> id) in place, with features:
        one transaction, executemany statements (the ORM's row-at-a-time unit of work made
        this the ceiling of a many-worker run; benchmarks/results/scale_plan.md)."""
        start = time.perf_counter()
        ids, new_rows, feature_rows = [], [], []
        with self.lib.session() as s, s.begin():
            fresh = iter(new_ids(s, Photo.id, sum(it.stat.path not in existing for it in items)))
            now = time.time()
            for n, it in enumerate(items):
                fields = dict(path=it.stat.path, size=it.stat.size, mtime_ns=it.stat.mtime_ns, sha=it.sha,
                              width=it.info.get("width", 0), height=it.info.get("height", 0),
                              taken_at=it.info.get("taken_at"), camera=it.info.get("camera"), indexed_at=now)
                photo_id = existing.get(it.stat.path)
                if photo_id is None:
                    photo_id = next(fresh)
                    new_rows.append(dict(id=photo_id, **fields))
                else:
                    s.execute(update(Photo).where(Photo.id == photo_id).values(**fields))
                feature_rows.append(dict(photo_id=photo_id, vector=vectors[n].astype(VECTOR_DTYPE).tobytes(),
                                         rerank=rerank[n], signature=signatures[n]))
                ids.append(photo_id)
            if new_rows:
                s.execute(insert(Photo), new_rows)
            upsert = sqlite_insert(PhotoFeatures)
            s.execute(upsert.on_conflict_do_update(index_elements=[PhotoFeatures.photo_id], set_={
                c: upsert.excluded[c] for c in ("vector", "rerank", "signature")}), feature_rows)
        self.lib.photos.add(ids, vectors)
        self._maybe_save()
        self.timing.write_s += time.perf_counter() - start

    def rename(self, photo_id: int, it: Loaded) -> None:
        """Same content at a new path: the row moves, the vector stays."""
        start = time.perf_counter()
        with self.lib.session() as s, s.begin():
            s.query(Photo).filter(Photo.id == photo_id).update(
                dict(path=it.stat.path, size=it.stat.size, mtime_ns=it.stat.mtime_ns))
        self.timing.write_s += time.perf_counter() - start

    def remove(self, ids: list[int]) -> None:
        if not ids:
            return
        with self.lib.session() as s, s.begin():
            s.execute(delete(PhotoFeatures).where(PhotoFeatures.photo_id.in_(ids)))
            s.execute(delete(Photo).where(Photo.id.in_(ids)))
        self.lib.photos.remove(ids)

    def _maybe_save(self) -> None:
        if time.monotonic() - self._last_save > SAVE_EVERY_S:
            self.lib.save()
            self._last_save = time.monotonic()
