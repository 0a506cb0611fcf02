"""Combined queries: a photo and words together, plus rclip-style `--add` / `--minus` words.

Each part of the query is searched on its own (FAISS top-N per part), the candidates are
pooled, and every part scores every pooled photo. A photo's query vector lies far closer to
photos than any text does (the modality gap), so raw cosines are not summed: each part's
scores are standardised (z-scores over its own top 64) and the parts are added, minus parts
subtracted; beside words, a photo part's z-score is capped (PHOTO_CLIP), so it says which
photos are like the photo given and the words choose among them. Text parts are scored by
the fusion reranker (ITC + weight x match logit) like a plain text search, so the fusion
classifier sees both sides here too, plus a word match: how many of the captions each photo
recalls from the caption memory use the part's words. A word or two ("at night", "snow") is
what people give with a photo, and one word's sentence vector tells look-alike photos apart
poorly; the recalled captions spell out what the photo shows."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from retrieval.query.rerank import match_logits, stored_evidence
from retrieval.data.words import stems

# weight of a text part's word match against its reranked score (both as z-scores), chosen
# with PHOTO_CLIP on the constructed cases, alone and among distractors (0.25 before the cap;
# 0.5 and 1 lost among the distractors): benchmarks/results/combined.md
WORD_MATCH = 0.125
# when words come with a photo, the photo part's z-score counts in full up to PHOTO_CLIP and
# PHOTO_SLOPE of what lies above it: "like P" asks for P's neighbourhood, and among P's
# nearest photos the words should choose, not the closest look (uncapped, the photos most like
# P won even where the words named another neighbour). Chosen on the constructed cases (demo
# photos alone and among distractors; it gains on each half of the liked photos and on cases
# built from coco-extra): benchmarks/results/combined.md
PHOTO_CLIP = 1.5
PHOTO_SLOPE = 0.1
# a combined result's share is softmax(fused / SHARE_TEMPERATURE) over the photos searched:
# the fused score is a sum of z-scores, and on the constructed photo + words cases (one word,
# the most used word, a whole caption; alone and among distractors) the temperature that
# predicts the wanted photo best was 0.4-0.85 with the photo cap (0.58-1.14 before it, when 1
# was chosen): benchmarks/results/combined.md
SHARE_TEMPERATURE = 0.7


@dataclass(frozen=True)
class Upload:
    """A photo sent as bytes (dropped on the page), not a file on this machine."""
    name: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Combined:
    text: str | None = None  # the main words
    like: "str | os.PathLike | Upload | None" = None  # a photo file (in the library or not), or an upload
    add: tuple[str, ...] = ()  # more words that results should also match
    minus: tuple[str, ...] = ()  # words that results should not match

    def is_plain(self) -> bool:
        return self.like is None and not self.add and not self.minus


@dataclass
class Part:
    label: str
    sign: float  # +1 for what is wanted, -1 for --minus
    vector: np.ndarray  # (1, dim) query vector in the shared space
    pooled: np.ndarray | None  # raw MiniLM vector of a text part (for the reranker), None for a photo


def parts_of(searcher, q: Combined) -> tuple[list[Part], list[str]]:
    """The query's parts as vectors, and notes (e.g. a truncated text)."""
    rt, out, notes = searcher.runtime, [], []
    texts = [(t, 1.0) for t in ([q.text] if q.text else []) + list(q.add)] + [(t, -1.0) for t in q.minus]
    if texts:
        feats = rt.text_encoder.encode([t for t, _ in texts], normalize=False)
        vecs = rt.embed_texts(feats.pooled)
        for n, (t, sign) in enumerate(texts):
            if feats.truncated[n]:
                notes.append(f"{t[:40]!r}: longer than {rt.text_encoder.config.max_tokens} word pieces, "
                             "only its beginning was used")
            out.append(Part(t, sign, vecs[n:n + 1], feats.pooled[n:n + 1]))
    if q.like is not None:
        label = q.like.name if isinstance(q.like, Upload) else str(q.like)
        out.append(Part(label, 1.0, searcher._photo_vectors(q.like).search, None))
    return out, notes


def part_scores(store, part: Part, ids: np.ndarray) -> np.ndarray:
    """Inner product of one part with the stored vectors of `ids` (an ID selector restricts
    the search to them, every list of an IVF index probed, so flat and IVF indexes both answer;
    a photo 8-bit codes somehow lose gets the lowest score seen)."""
    sel = faiss.IDSelectorBatch(ids.astype(np.int64))
    sub = faiss.downcast_index(store.index.index)
    params = (faiss.SearchParametersIVF(sel=sel, nprobe=sub.nlist) if isinstance(sub, faiss.IndexIVF)
              else faiss.SearchParameters(sel=sel))
    scores, got = store.index.search(np.ascontiguousarray(part.vector, np.float32), len(ids), params=params)
    found = {int(i): float(s) for s, i in zip(scores[0], got[0]) if i >= 0}
    floor = min(found.values(), default=0.0)
    return np.array([found.get(int(i), floor) for i in ids], np.float32)


def word_match(runtime, recalled: np.ndarray, text: str) -> np.ndarray:
    """For each photo, given the memory rows it recalls ((N, m), from the evidence the indexer
    stored; no photo is decoded): the share of those captions that use each of the text's
    content words, averaged over the words (zeros without a memory or content words)."""
    want = stems(text)
    memory = runtime.memory
    if not want or memory is None or len(recalled) == 0:
        return np.zeros(len(recalled), np.float32)
    seen: dict[int, float] = {}
    for row in np.unique(recalled):
        seen[int(row)] = len(want & stems(memory.texts[row])) / len(want)
    return np.array([[seen[int(r)] for r in rows] for rows in recalled], np.float32).mean(1)


def zscore(x: np.ndarray, ref: np.ndarray | None = None) -> np.ndarray:
    """x standardised by the mean and spread of x[ref] (all of x without ref)."""
    r = x if ref is None else x[ref]
    return (x - r.mean()) / max(float(r.std()), 1e-6)


@dataclass
class Scored:
    """One part's scores over the pooled photos, before they are fused."""
    sign: float
    z: np.ndarray  # z-score of the part's score (a text part's reranked, if reranking)
    match: np.ndarray | None  # a text part's word match as a z-score (None: a photo part, or no rerank)
    photo: bool


def fuse(scored: list[Scored], word_match: float | None = None, clip: float | None = None) -> np.ndarray:
    """The parts' z-scores added (minus parts subtracted), each text part's word match weighed
    by `word_match` (WORD_MATCH), a photo part's capped at `clip` (PHOTO_CLIP) when words
    come with it: "like P" then says which photos are like P, and the words choose among them."""
    word_match = WORD_MATCH if word_match is None else word_match
    clip = PHOTO_CLIP if clip is None else clip
    with_words = any(not s.photo for s in scored)
    fused = np.zeros(len(scored[0].z) if scored else 0, np.float32)
    for s in scored:
        z = s.z
        if s.photo and with_words:  # in full up to the cap, PHOTO_SLOPE above it (closest first on a tie)
            z = np.minimum(z, clip) + PHOTO_SLOPE * np.maximum(z - clip, 0)
        if s.match is not None:
            z = z + word_match * s.match
        fused += s.sign * z
    return fused


def pool_scores(searcher, q: Combined, n: int, rerank: bool, filters, core: int = 64):
    """(ids, each part's Scored, main part's cosines, notes) over the pool: every positive
    part's FAISS top 2n, the liked photo itself left out. Scores are standardised over the
    core, each part's top `core` (2 x the 32 candidates searched), so a photo scores the same
    however many results are asked for (n over 32 widens the pool, not the scale)."""
    parts, notes = parts_of(searcher, q)
    pool: dict[int, bool] = {}
    for p in parts:
        if p.sign > 0:
            ids, _ = searcher._top(p.vector, max(2 * n, core), filters)
            for rank, i in enumerate(ids.tolist()):
                pool[i] = pool.get(i, False) or rank < core
    own = None if q.like is None or isinstance(q.like, Upload) else str(Path(os.path.abspath(q.like)))
    ids, ref = np.array(list(pool), np.int64), np.array(list(pool.values()), bool)
    if own is not None and len(ids):
        keep = np.array([path != own for path in searcher.paths_of(ids)], bool)
        ids, ref = ids[keep], ref[keep]
    if len(ids) == 0:
        return ids, [], np.zeros(0, np.float32), notes
    scored, main = [], None
    rt, weight = searcher.runtime, searcher.runtime.config.rerank_weight
    words = rerank and any(p.pooled is not None for p in parts)
    stored = stored_evidence(searcher.lib, ids) if words else None  # read once for every text part
    for p in parts:
        s = part_scores(searcher.lib.photos, p, ids)
        main = s if main is None else main
        if rerank and p.pooled is not None and weight:
            s = s + weight * match_logits(rt, searcher.lib, ids, s, p.pooled, stored)
        match = None
        if rerank and p.pooled is not None:  # a text part: its label is its words
            match = zscore(word_match(rt, stored.memory_ids, p.label), ref)
        scored.append(Scored(p.sign, zscore(s, ref), match, p.pooled is None))
    return ids, scored, main, notes


def combined_ranking(searcher, q: Combined, n: int, rerank: bool, filters, candidates: int = 32):
    """(ids, fused scores, main part's cosines, notes) of the n best photos for a combined query
    (scores standardised over each part's top 2 x candidates)."""
    ids, scored, main, notes = pool_scores(searcher, q, n, rerank, filters, 2 * candidates)
    if len(ids) == 0:
        return ids, np.zeros(0, np.float32), main, notes
    fused = fuse(scored)
    order = ranked(ids, fused)[:n]
    return ids[order], fused[order], main[order], notes


def ranked(ids: np.ndarray, fused: np.ndarray) -> np.ndarray:
    """Positions of the pooled photos, best fused score first, ties by id."""
    return np.lexsort((ids, -fused))
