"""FAISS vector store: float32 L2-normalised vectors under explicit ids (the SQLite row ids),
compared by inner product. Saved atomically, so a reader or a crash never sees half a file."""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np

from retrieval.errors import LibraryError, disk_full, is_disk_full


# Exact search scans every vector, ~0.04 ms per 1,000 photos a query here (memory-bound: 9.0 ms
# end to end at 100k, 6.8 at 10k), so from 50,000 photos an IVF index takes over. Its codes are
# float16, the exact index's own, compared directly (no residual), so a photo the probed lists
# hold scores exactly as in the exact index: at 100k the same answers for all but a few queries
# in a thousand, ~3 ms sooner (benchmarks/results/index_kinds.md). From 200,000 photos the codes
# are 8-bit, half the memory (9 ms per query end to end at 1M, recall@10 0.985: scale.md).
IVF_FROM = 50_000
SQ8_FROM = 200_000
RETRAIN_GROWTH = 4  # an IVF index is retrained once the library is this many times larger


def wanted_kind(index_type: str, n: int) -> str:
    if index_type != "auto":
        return index_type
    return "ivf" if n >= IVF_FROM else "flat"


def ivf_codes(n: int) -> str:
    """The IVF codes for an index trained on n vectors: float16 below SQ8_FROM, else 8-bit."""
    return "sq8" if n >= SQ8_FROM else "fp16"


def ivf_shape(n: int) -> tuple[int, int]:
    """(nlist, nprobe) for n vectors: ~4 sqrt(n) lists, probing 1/32 of them."""
    nlist = int(2 ** round(np.log2(max(64, 4 * np.sqrt(max(n, 1))))))
    nlist = min(nlist, int(2 ** np.floor(np.log2(max(1, n // 39)))))  # k-means wants ~39 points a list
    return nlist, min(nlist, max(8, nlist // 32))


def exact_index(dim: int):
    """The exact index: every vector scanned, stored as float16, the precision SQLite keeps
    them in (the truth the index is rebuilt from). A scan reads half the bytes: one query over
    100,000 vectors 3.0 ms against 5.6 ms in IndexFlatIP here, one thread (docs/speed-and-scale.md).
    Libraries saved with IndexFlatIP before keep it until the index is rebuilt."""
    return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)


class VectorStore:
    """Vectors under explicit ids (IndexIDMap2) in an exact index (float16, every vector
    scanned), or an IVF index for large libraries (float16 codes, 8-bit from SQ8_FROM; both
    support adds and removals)."""

    def __init__(self, dim: int, index=None, mapped: bool = False):
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(exact_index(dim))
        self.mapped = mapped  # memory-mapped from its file: read-only

    def _writable(self) -> None:
        if self.mapped:  # FAISS would abort the process, not raise
            raise LibraryError("this vector index is memory-mapped read-only; open the library as a writer")

    @classmethod
    def build(cls, kind: str, dim: int, ids, vectors: np.ndarray, seed: int = 0,
              codes: str | None = None, shape: tuple[int, int] | None = None) -> "VectorStore":
        """A store of `kind` (flat or ivf) holding `vectors`; an IVF index is trained on them,
        with `codes` (fp16 or sq8; default by size, ivf_codes) and `shape` (nlist, nprobe;
        default by size, ivf_shape)."""
        if kind == "flat" or len(ids) == 0:
            store = cls(dim)
        else:
            nlist, nprobe = shape or ivf_shape(len(ids))
            codes = codes or ivf_codes(len(ids))
            qt = {"fp16": faiss.ScalarQuantizer.QT_fp16, "sq8": faiss.ScalarQuantizer.QT_8bit}[codes]
            ivf = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist, qt, faiss.METRIC_INNER_PRODUCT,
                                                codes == "sq8")  # float16 codes: the vectors themselves
            rng = np.random.default_rng(seed)
            sample = vectors[rng.choice(len(vectors), min(len(vectors), 64 * nlist), replace=False)]
            ivf.train(np.ascontiguousarray(sample, dtype=np.float32))
            ivf.nprobe = nprobe
            store = cls(dim, faiss.IndexIDMap2(ivf))
        store.add(ids, vectors)
        return store

    @property
    def kind(self) -> str:
        return "ivf" if isinstance(faiss.downcast_index(self.index.index), faiss.IndexIVF) else "flat"

    def describe(self) -> str:
        sub = faiss.downcast_index(self.index.index)
        if isinstance(sub, faiss.IndexIVF):
            codes = "fp16" if sub.sq.qtype == faiss.ScalarQuantizer.QT_fp16 else "SQ8"
            return f"IVF{sub.nlist},{codes} (nprobe {sub.nprobe}), inner product"
        if isinstance(sub, faiss.IndexScalarQuantizer):
            return "exact inner product (float16)"
        return "exact inner product (Flat)"

    @classmethod
    def load(cls, path: Path, dim: int, mmap: bool = False) -> "VectorStore":
        """Read `path`, or an empty store when it does not exist; LibraryError if damaged.
        With `mmap`, the vectors stay in the file and the OS pages in what searches touch (a
        cold start at 1M photos reads ids, not 400 MB); such a store is read-only: adding to or
        removing from it aborts inside FAISS, so only readers map, never the indexer."""
        if not path.exists():
            return cls(dim)
        try:
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mmap else 0)  # maps flat and IVF codes
        except Exception as e:
            raise LibraryError(f"{path}: damaged vector index ({str(e).splitlines()[0][:120]}); "
                               "rebuild it with `fusion index --rebuild`") from None
        if index.d != dim:
            raise LibraryError(f"{path}: holds {index.d}-d vectors, the model makes {dim}-d; "
                               "rebuild with `fusion index --rebuild`")
        sub = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else None
        if sub is None:
            raise LibraryError(f"{path}: not a vector index of ours; rebuild with `fusion index --rebuild`")
        return cls(dim, index, mapped=mmap)

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        try:
            faiss.write_index(self.index, str(tmp))
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as e:  # the old file stays whole; the next open rebuilds from SQLite
            tmp.unlink(missing_ok=True)
            if is_disk_full(e):
                raise disk_full(path, e, "run fusion index again") from None
            raise

    def __len__(self) -> int:
        return self.index.ntotal

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def add(self, ids, vectors: np.ndarray) -> None:
        self._writable()
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids):
            self.remove(ids)  # re-adding an id replaces its vector
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)

    def remove(self, ids) -> None:
        self._writable()
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and self.index.ntotal:
            self.index.remove_ids(faiss.IDSelectorBatch(ids))

    def search(self, queries: np.ndarray, k: int, exhaustive: bool = False):
        """(scores, ids) of the k best per query; ids are -1 where fewer than k exist, or, in an
        IVF index, where its probed lists hold fewer than k (`exhaustive`: probe every list)."""
        k = max(1, min(k, max(1, self.index.ntotal)))
        params = None
        if exhaustive and self.kind == "ivf":
            params = faiss.SearchParametersIVF(nprobe=faiss.downcast_index(self.index.index).nlist)
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k, params=params)

    def vectors(self, ids) -> np.ndarray:
        """Stored vectors by id (exact index only: IVF codes keep no id map to save memory)."""
        return np.stack([self.index.reconstruct(int(i)) for i in ids]) if len(ids) else np.zeros((0, self.dim), np.float32)
