"""Short queries (issue 32): people type a word or three ("dog", "black dog running"), where the
recall benchmarks rank whole captions. Two measures from a captioned gallery, ranked as search
ranks (the search vector's top K reranked at the model's weight):

- keywords: each caption cut to its first 2 or 3 content words, in the caption's order, ranked for
  its own photo (recall@k as for whole captions, so the two read side by side);
- single words: every content word (plurals folded) that at least `support` captions of some
  photo use, asked alone; a result is relevant when at least `support` of its captions use the
  word. Precision of the first result and of the first ten, each word counted once, beside what
  a random photo would give (the share of relevant photos).
"""

from __future__ import annotations

import numpy as np

from retrieval.data.words import content_words, fold as folded, stems
from retrieval.training.recall import ranks_of, recall_at

TOP = 10


def keywords(text: str, n: int = 3) -> str:
    """The text's first `n` distinct content words, in order ("A black dog runs on the beach"
    -> "black dog runs"); content words as retrieval.data.words defines them."""
    return " ".join(list(dict.fromkeys(content_words(text)))[:n])


def word_queries(captions_of: list[list[str]], support: int = 2) -> list[tuple[str, frozenset[int]]]:
    """(word as most often written, the photos at least `support` of whose captions use it),
    for every folded content word that some photo's captions agree on; sorted by word."""
    relevant: dict[str, set[int]] = {}
    written: dict[str, dict[str, int]] = {}
    for photo, caps in enumerate(captions_of):
        counts: dict[str, int] = {}
        for c in caps:
            for s in stems(c):
                counts[s] = counts.get(s, 0) + 1
            for w in content_words(c):
                forms = written.setdefault(folded(w), {})
                forms[w] = forms.get(w, 0) + 1
        for s, k in counts.items():
            if k >= support:
                relevant.setdefault(s, set()).add(photo)
    return [(max(sorted(written[s]), key=lambda w: written[s][w]), frozenset(p)) for s, p in sorted(relevant.items())]


def _ranked(emb, logits, weight: float, pv, pooled: np.ndarray, candidates: int):
    """(the search vector's scores, each query's top `candidates` in search's order)."""
    q_itc, q_sent = emb.texts(pooled)
    sim = q_itc @ pv.search.T
    k = min(candidates, sim.shape[1])
    first = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    itc = np.take_along_axis(sim, first, 1)
    score = itc + weight * logits(emb.evidence(itc, q_itc, q_sent, pv.evidence.take(first)))
    return sim, np.take_along_axis(first, np.argsort(-score, axis=1, kind="stable"), 1)


def shipped_top(emb, logits, weight: float, pv, pooled: np.ndarray, candidates: int = 32,
                top: int = TOP) -> np.ndarray:
    """(queries, top) photo indices as search ranks raw query vectors `pooled` among the photos
    of PhotoVectors `pv` (emb.photos) with Embedder `emb`: the search vector's top `candidates`,
    reordered by ITC + `weight` x the reranker's logit (`logits`: the reranker's logits of
    evidence features)."""
    return _ranked(emb, logits, weight, pv, pooled, candidates)[1][:, :top]


def shipped_ranks(emb, logits, weight: float, pv, pooled: np.ndarray, target: np.ndarray,
                  candidates: int = 32) -> np.ndarray:
    """0-based rank of each query's photo `target` as search ranks (shipped_top's order within
    the top `candidates`; below them, the search vector's order)."""
    sim, order = _ranked(emb, logits, weight, pv, pooled, candidates)
    hit = order == target[:, None]
    return np.where(hit.any(1), hit.argmax(1), ranks_of(sim, target))


def keyword_ranks(model, memory, fold, distractors, texts: list[str], encode, candidates: int = 32,
                  lengths: tuple[int, ...] = (2, 3)) -> dict:
    """For the open-world folds: {"first N content words, shipped ranking": {"open": ranks among
    the fold's photos and `distractors`, "small": ranks in the fold alone}} for each N, the
    captions `texts` (fold.text's order) cut to their first N content words."""
    from retrieval.model.embedder import Embedder
    from retrieval.training.features import Photos

    emb, own = Embedder(model.result.space, memory), Photos.of(fold)
    scopes = {"open": emb.photos(Photos.concat(own, distractors)), "small": emb.photos(own)}
    out = {}
    for n in lengths:
        short = [keywords(t, n) for t in texts]
        keep = np.array([bool(s) for s in short])
        pooled, target = encode([s for s in short if s]), fold.caption_image[keep]
        out[f"first {n} content words, shipped ranking"] = {
            scope: shipped_ranks(emb, model.reranker.logits, model.config.rerank_weight, pv, pooled, target,
                                 candidates)
            for scope, pv in scopes.items()}
    return out


def precision(top: np.ndarray, relevant: list[frozenset[int]]) -> dict:
    """Mean precision of the first result and of the first `top.shape[1]` (in %)."""
    hit = np.array([[p in rel for p in row] for row, rel in zip(top, relevant)], bool)
    return {"p1": round(100 * float(hit[:, 0].mean()), 2), f"p{top.shape[1]}": round(100 * float(hit.mean()), 2)}


def short_query_scores(model, memory, f, texts: list[str], encode, candidates: int = 32,
                       lengths: tuple[int, ...] = (2, 3)) -> dict:
    """Both measures on DatasetFeatures `f` (every caption's photo in it), whose captions read
    `texts` (f.text's order); `encode(list of str)` gives raw query vectors as f.text holds them."""
    from retrieval.model.embedder import Embedder
    from retrieval.training.features import Photos

    emb = Embedder(model.result.space, memory)
    pv = emb.photos(Photos.of(f))
    logits, weight = model.reranker.logits, model.config.rerank_weight
    out = {"whole captions": recall_at(shipped_ranks(emb, logits, weight, pv, f.text, f.caption_image, candidates))}
    for n in lengths:
        short = [keywords(t, n) for t in texts]
        keep = np.array([bool(s) for s in short])
        out[f"first {n} content words"] = recall_at(shipped_ranks(
            emb, logits, weight, pv, encode([s for s in short if s]), f.caption_image[keep], candidates))
        out[f"first {n} content words, example"] = short[0]
    caps_of: list[list[str]] = [[] for _ in range(len(f.pooled))]
    for t, p in zip(texts, f.caption_image):
        caps_of[p].append(t)
    words = word_queries(caps_of)
    one = shipped_top(emb, logits, weight, pv, encode([w for w, _ in words]), candidates)
    rel = [r for _, r in words]
    return {**out, "one word": precision(one, rel), "words": len(words),
            "one word, random photo": round(100 * float(np.mean([len(r) for r in rel])) / len(f.pooled), 2)}

