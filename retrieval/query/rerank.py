"""The second stage of a text query: the evidence reranker over ITC's top K, from what the
library stored per photo at index time (photos are never decoded at query time)."""

from __future__ import annotations

import numpy as np

from retrieval.errors import LibraryError
from retrieval.model.evidence import PhotoEvidence
from retrieval.model.prior import caption_prior


def stored_evidence(lib, ids) -> PhotoEvidence:
    """The rerank evidence the indexer stored for `ids`, in that order."""
    rows = lib.reader.rerank_rows(ids)
    lost = [int(i) for i in ids if int(i) in rows and not PhotoEvidence.row_ok(rows[int(i)])]
    if lost:
        raise LibraryError(f"{lib.root / 'library.sqlite'}: rerank features missing for {len(lost)} "
                           f"photos (e.g. id {lost[0]}); repair with: fusion index PATH")
    # a photo an index run deleted since this query's FAISS search: zeros here, and the path
    # lookup after ranking drops it (Searcher._with_paths)
    blank = bytes(PhotoEvidence.ROW_BYTES)
    return PhotoEvidence.unpack([rows.get(int(i), blank) for i in ids])


def match_logits(runtime, lib, ids, itc, query_pooled: np.ndarray,
                 stored: PhotoEvidence | None = None) -> np.ndarray:
    """The reranker's match logit for each candidate photo of one query (raw MiniLM vector);
    `stored`: the candidates' evidence when the caller has read it already."""
    emb = runtime.embedder
    q_itc, q_sent = emb.texts(query_pooled)
    stored = stored_evidence(lib, ids) if stored is None else stored
    ev = stored.take(np.arange(len(ids))[None])  # one query's row of candidates
    feats = emb.evidence(np.asarray(itc, np.float32)[None], q_itc, q_sent, ev)
    return runtime.query.logits(feats)[0]


def caption_scores(runtime, photo: PhotoEvidence, texts: list[str], itc: np.ndarray,
                   pooled: np.ndarray | None = None, weights: tuple[float, float] | None = None) -> np.ndarray:
    """describe's second stage for one photo (its evidence) and its candidate captions `texts`
    (`itc`: their first-stage cosines): itc + weight * the reranker's match logit, each caption
    in the query's seat, - prior * the caption's prior; `weights` (weight, prior), default the
    model's describe_weight and describe_prior. `pooled`: the captions' MiniLM vectors where
    they are at hand (the caption memory's), else encoded."""
    cfg, emb = runtime.config, runtime.embedder
    weight, prior = weights if weights is not None else (cfg.describe_weight, cfg.describe_prior)
    if pooled is None:
        pooled = runtime.text_encoder.encode(texts, normalize=False).pooled
    q_itc, q_sent = emb.texts(pooled)
    out = np.asarray(itc, np.float32).copy()
    if weight:
        pairs = photo.take(np.zeros((len(texts), 1), np.int64))
        out += weight * runtime.query.logits(emb.evidence(out[:, None], q_itc, q_sent, pairs))[:, 0]
    if prior:
        out -= prior * caption_prior(q_itc, runtime.query.bank)
    return out
