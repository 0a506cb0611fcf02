"""`fusion describe`: the captions that fit a photo best. From the caption corpora indexed in
the library; with none indexed, from the caption memory shipped with the model (23,013 human
MS-COCO captions), so a photo can be described out of the box. Either way the photo's plain
ITC vector picks the first-stage candidates, then they are rescored: the library's own captions
by the model's describe settings (the shipped model: ITC minus 0.5 x each caption's prior, see
retrieval/model/prior.py), the memory's as search ranks photos (ITC plus the reranker's weight
times its logit, each caption in the query's seat; ModelConfig.memory_describe_weight)."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select

from retrieval.errors import LibraryError
from retrieval.model.embedder import PhotoVectors
from retrieval.model.runtime import Runtime
from retrieval.query.rerank import caption_scores
from retrieval.query.results import CaptionHit, Results
from retrieval.store.library import Library
from retrieval.store.meta import Caption

COPY_ROOM = 8  # candidates beyond k, so that dropping copies of a caption still leaves k
MEMORY_NOTE = ("no caption corpus is indexed in this library: these captions come from the {n:,} MS-COCO "
               "captions shipped with the model; index your own with fusion index FILE.jsonl")


def describe(lib: Library, runtime: Runtime, pv: PhotoVectors, k: int, candidates: int, rerank: bool) -> Results:
    """The top `k` of `candidates` captions for one photo's vectors `pv`, best first (ties by id)."""
    if len(lib.captions):
        return _from_library(lib, runtime, pv, k, candidates, rerank)
    memory = runtime.memory
    if memory is None:  # a checkpoint trained without the caption memory
        raise LibraryError(f"{lib.root}: no captions indexed and this model has no caption memory; "
                           "index a captions file first: fusion index FILE.jsonl (one {\"caption\": ...} a line)")
    sims = runtime.embedder.corpus_itc @ pv.itc[0]
    top = np.argsort(-sims, kind="stable")[:max(k + COPY_ROOM, candidates)]
    scores = _rescore(runtime, pv, [memory.texts[i] for i in top], sims[top], rerank, memory.vectors[top],
                      memory_weights(runtime.config))
    order = _distinct(sorted(range(len(top)), key=lambda n: (-scores[n], int(top[n]))), lambda n: memory.texts[top[n]])
    return Results([CaptionHit(r, None, memory.texts[top[n]], float(scores[n]), source="memory")
                    for r, n in enumerate(order[:k], start=1)], notes=[MEMORY_NOTE.format(n=len(memory.texts))])


def _from_library(lib: Library, runtime: Runtime, pv: PhotoVectors, k: int, candidates: int, rerank: bool) -> Results:
    scores, ids = lib.captions.search(pv.itc, max(k + COPY_ROOM, candidates))
    pairs = [(float(sc), int(i)) for sc, i in zip(scores[0], ids[0]) if i >= 0]
    with lib.session() as s:
        rows = {c.id: c for c in s.scalars(select(Caption).where(Caption.id.in_([i for _, i in pairs])))}
    pairs = [(sc, i) for sc, i in pairs if i in rows]  # an index run removed the rest since
    if pairs:
        rescored = _rescore(runtime, pv, [rows[i].text for _, i in pairs], np.array([sc for sc, _ in pairs]), rerank)
        pairs = [(float(sc), i) for sc, (_, i) in zip(rescored, pairs)]
    pairs = _distinct(sorted(pairs, key=lambda t: (-t[0], t[1])), lambda t: rows[t[1]].text)[:k]
    return Results([CaptionHit(n, i, rows[i].text, sc, rows[i].image_path)
                    for n, (sc, i) in enumerate(pairs, start=1)])


def _distinct(ranked: list, text) -> list:
    """`ranked` without the lower copies of a caption met before (corpora hold some twice;
    case, spaces and a final full stop aside)."""
    seen, out = set(), []
    for item in ranked:
        key = " ".join(text(item).lower().split()).rstrip(".")
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def memory_weights(cfg) -> tuple[float, float]:
    """(reranker weight, prior weight) describe ranks the caption memory with: search's weight
    and no prior unless the model says otherwise (memory_describe_weight, memory_describe_prior);
    a model without the evidence reranker keeps its describe settings."""
    if cfg.rerank != "evidence":
        return cfg.describe_weight, cfg.describe_prior
    weight = cfg.rerank_weight if cfg.memory_describe_weight is None else cfg.memory_describe_weight
    return weight, cfg.memory_describe_prior


def _rescore(runtime: Runtime, pv: PhotoVectors, texts: list[str], itc: np.ndarray, rerank: bool,
             pooled: np.ndarray | None = None, weights: tuple[float, float] | None = None) -> np.ndarray:
    cfg = runtime.config
    itc = np.asarray(itc, np.float32)
    weights = weights if weights is not None else (cfg.describe_weight, cfg.describe_prior)
    if rerank and any(weights):
        return caption_scores(runtime, pv.evidence, texts, itc, pooled, weights)
    return itc
