"""Image → text in the open-world benchmark: each photo's top captions of a corpus rescored by
the reranker (each caption in the query's seat) and the caption prior, as `fusion describe`
ranks them."""

from __future__ import annotations

import numpy as np

from retrieval.model.prior import caption_prior
from retrieval.training.recall import i2t_recall, rerank
from retrieval.training.rerank import ALPHAS

PRIORS = (0.25, 0.5, 1.0)  # caption prior weights measured for describe


def i2t_reranked(model, emb, photo_itc, ev, corpus_itc, corpus_sent, caption_image, k: int, bank=None) -> dict:
    """i2t after the reranker rescored each photo's top k captions of the corpus (ITC and
    sentence vectors; caption_image: each caption's photo, -1 for none), each caption taking
    the query's seat (same evidence, the photo fixed), at each rerank weight; with a `bank`,
    also minus each caption's prior (retrieval/model/prior.py) at each prior weight."""
    sim, top, _, top_logit = top_logits(model, emb, photo_itc, ev, corpus_itc, corpus_sent, k)
    n, k = top.shape
    rows = np.arange(n)[:, None]
    logit = scattered(top_logit, rows, top, sim.shape)  # rerank() visits the
    prior = None  # top k in its own order, so both are looked up by (row, caption)
    if bank is not None:
        prior = scattered(caption_prior(corpus_itc[top.ravel()], bank).reshape(n, k), rows, top, sim.shape)
    out = {}
    for w in ALPHAS[1:]:
        out[f"{w:g}"] = i2t_recall(rerank(sim, k, lambda r, c, w=w: sim[r, c] + w * logit[r, c]), caption_image)
    for lam in sorted({*PRIORS, model.config.describe_prior} - {0.0}) if prior is not None else ():
        for w in sorted({0.0, model.config.describe_weight}):
            out[f"{w:g}, prior {lam:g}"] = i2t_recall(
                rerank(sim, k, lambda r, c, w=w, lam=lam: sim[r, c] + w * logit[r, c] - lam * prior[r, c]),
                caption_image)
    return out


def top_logits(model, emb, photo_itc, ev, corpus_itc, corpus_sent, k: int):
    """Each photo's ITC top k of the corpus and the reranker's logit for each, the caption in
    the query's seat: (sim (n, corpus), top (n, k), their ITC (n, k), their logits (n, k))."""
    sim = photo_itc @ corpus_itc.T
    n, k = len(photo_itc), min(k, sim.shape[1])
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    itc = np.take_along_axis(sim, top, 1)
    pairs = ev.take(np.repeat(np.arange(n), k)[:, None])
    feats = emb.evidence(itc.reshape(-1, 1), corpus_itc[top.ravel()], corpus_sent[top.ravel()], pairs)
    return sim, top, itc, model.reranker.logits(feats).reshape(n, k)


def scattered(values: np.ndarray, rows: np.ndarray, cols: np.ndarray, shape, dtype=np.float32) -> np.ndarray:
    """A (n, corpus) array holding `values` at (rows, cols), NaN elsewhere."""
    out = np.full(shape, np.nan, dtype)
    out[rows, cols] = values
    return out


def describe_from_memory(model, emb, photo_itc, ev, k: int, bank, own_texts: list[str], own_sent: np.ndarray,
                         caption_image: np.ndarray) -> dict:
    """What `fusion describe` shows a photo from the caption memory alone (a library without
    captions; none of the memory's captions is the photo's own), under each rule: the first
    caption of the memory's ITC top k after rescoring, and whether it agrees with the photo's
    own captions (retrieval/evaluation/describe.py: an agreed word, and its closeness).
    Returns {rule: (first caption's memory index (n,), agrees (n,) bool, closeness (n,) float)}."""
    from retrieval.evaluation.describe import closeness, uses_agreed_word

    _, top, itc, logit = top_logits(model, emb, photo_itc, ev, emb.corpus_itc, emb.memory.vectors, k)
    n = len(top)
    scores = {"ITC alone": itc, **{f"reranker {w:g}": itc + w * logit for w in ALPHAS[1:]}}
    if bank is not None:
        prior = caption_prior(emb.corpus_itc[top.ravel()], bank).reshape(n, k)
        scores.update({f"prior {lam:g}": itc - lam * prior for lam in PRIORS})
    own = [[own_texts[c] for c in np.flatnonzero(caption_image == p)] for p in range(n)]
    own_vecs = [own_sent[caption_image == p] for p in range(n)]
    out = {}
    for rule, s in scores.items():
        first = top[np.arange(n), np.argmax(s, axis=1)]  # ties: the higher ITC, as describe's stable sort
        agrees = np.array([uses_agreed_word(emb.memory.texts[c], own[p]) for p, c in enumerate(first)])
        close = np.array([closeness(emb.memory.vectors[c][None], own_vecs[p])[0] for p, c in enumerate(first)])
        out[rule] = (first, agrees, close)
    return out
