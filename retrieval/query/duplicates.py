"""Near-duplicate photos (the same shot resized, recompressed, slightly cropped or recoloured,
or a burst) from the signatures the indexer stored (retrieval/encoders/signature.py): each
photo's nearest signatures, pairs at or above a cosine threshold joined into groups. Nothing
is decoded at query time, nothing is ever deleted."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
from sqlalchemy import func, select

from retrieval.encoders import signature
from retrieval.errors import LibraryError
from retrieval.store.meta import Photo, PhotoFeatures

# Chosen on constructed duplicates of COCO photos against 1,500+ distinct ones, and checked on
# other photos (benchmarks/duplicates.py, results/duplicates.md).
DEFAULT_THRESHOLD = 0.85
NEIGHBOURS = 8  # a group larger than this is still found through chains of neighbours
EXACT_UP_TO = 50_000  # signatures compared exactly up to here, then through an IVF index


@dataclass
class Group:
    ids: list[int]
    paths: list[str]
    similarity: float  # the lowest cosine of the pairs that joined the group


def stored_signatures(lib) -> tuple[np.ndarray, np.ndarray]:
    """(ids, signatures) of every photo; LibraryError naming the fix if some have none yet
    (a library indexed before signatures existed)."""
    with lib.session() as s:
        missing = s.scalar(select(func.count()).select_from(PhotoFeatures).where(PhotoFeatures.signature.is_(None)))
        if missing:
            raise LibraryError(f"{lib.root}: {missing} photos have no near-duplicate signature yet (indexed by "
                               "an older fusion); run fusion index on their folders to add them")
        rows = s.execute(select(PhotoFeatures.photo_id, PhotoFeatures.signature)).all()
    return np.array([r[0] for r in rows], np.int64), signature.unpack([r[1] for r in rows])


def _neighbour_index(sigs: np.ndarray):
    if len(sigs) <= EXACT_UP_TO:
        index = faiss.IndexFlatIP(signature.DIM)
    else:  # copies of a shot are far closer than anything else: few probes find them
        nlist = int(4 * np.sqrt(len(sigs)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(signature.DIM), signature.DIM, nlist,
                                   faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        index.train(sigs[rng.choice(len(sigs), min(len(sigs), 64 * nlist), replace=False)])
        index.nprobe = 8
    index.add(sigs)
    return index


def duplicate_pairs(lib, threshold: float, neighbours: int = NEIGHBOURS, batch: int = 8192):
    """(id, id, cosine) for every pair of photos among each other's nearest signatures at or
    above `threshold`, each pair once."""
    ids, sigs = stored_signatures(lib)
    if len(ids) < 2:
        return []
    index = _neighbour_index(sigs)
    pairs = []
    for start in range(0, len(ids), batch):
        scores, found = index.search(sigs[start:start + batch], min(neighbours + 1, len(ids)))
        for a, row_s, row_i in zip(range(start, start + batch), scores, found):
            pairs += [(int(ids[a]), int(ids[b]), float(sc)) for sc, b in zip(row_s, row_i)
                      if b > a and sc >= threshold]
    return pairs


def duplicate_groups(lib, threshold: float = DEFAULT_THRESHOLD, neighbours: int = NEIGHBOURS) -> list[Group]:
    """Groups of two or more near-duplicate photos, largest first, each sorted by path."""
    if not 0 < threshold <= 1:
        raise LibraryError(f"threshold {threshold}: must be above 0 and at most 1 (default {DEFAULT_THRESHOLD})")
    parent: dict[int, int] = {}
    low: dict[int, float] = {}

    def find(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, sc in duplicate_pairs(lib, threshold, neighbours):
        ra, rb = find(a), find(b)
        root = min(ra, rb)
        low[root] = min(sc, low.get(ra, 1.0), low.get(rb, 1.0))
        parent[ra] = parent[rb] = root
    members: dict[int, list[int]] = {}
    for x in list(parent):
        members.setdefault(find(x), []).append(x)
    with lib.session() as s:
        paths = dict(s.execute(select(Photo.id, Photo.path).where(Photo.id.in_(list(parent)))).all())
    groups = []
    for root, ids in members.items():
        ids = sorted((i for i in ids if i in paths), key=lambda i: paths[i])
        if len(ids) >= 2:
            groups.append(Group(ids, [paths[i] for i in ids], round(low[root], 4)))
    return sorted(groups, key=lambda g: (-len(g.ids), g.paths[0]))
