"""FAISS vector store: float32 L2-normalised vectors under explicit ids (the SQLite row ids),
compared by inner product. Saved atomically, so a reader or a crash never sees half a file."""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np

from retrieval.errors import LibraryError


class VectorStore:
    """An exact inner-product index with ids (IndexIDMap2 over IndexFlatIP)."""

    def __init__(self, dim: int, index=None):
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    @classmethod
    def load(cls, path: Path, dim: int) -> "VectorStore":
        """Read `path`, or an empty store when it does not exist; LibraryError if damaged."""
        if not path.exists():
            return cls(dim)
        try:
            index = faiss.read_index(str(path))
        except Exception as e:
            raise LibraryError(f"{path}: damaged vector index ({str(e).splitlines()[0][:120]}); "
                               "rebuild it with `fusion index --rebuild`") from None
        if index.d != dim:
            raise LibraryError(f"{path}: holds {index.d}-d vectors, the model makes {dim}-d; "
                               "rebuild with `fusion index --rebuild`")
        return cls(dim, index)

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(self.index, str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def __len__(self) -> int:
        return self.index.ntotal

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def add(self, ids, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids):
            self.remove(ids)  # re-adding an id replaces its vector
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)

    def remove(self, ids) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and self.index.ntotal:
            self.index.remove_ids(faiss.IDSelectorBatch(ids))

    def search(self, queries: np.ndarray, k: int):
        """(scores, ids) of the k best per query; ids are -1 where fewer than k exist."""
        k = max(1, min(k, max(1, self.index.ntotal)))
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def vectors(self, ids) -> np.ndarray:
        return np.stack([self.index.reconstruct(int(i)) for i in ids]) if len(ids) else np.zeros((0, self.dim), np.float32)
