"""A fusion classifier (retrieval/model/heads.py's FusionHead, trained on hard negatives) as one
more feature on top of the shipped rankings, measured on a closed gallery (issue 32's road: does
the full fusion classifier earn weight in the query layer?).

Text -> image: the search vector's top k, scored as search scores them (ITC + the reranker at
the model's weight), plus a x the head's residual h (in ITC units: h / the head's ITC scale).
Image -> text: ITC's top k of the gallery's captions, scored as describe scores them (minus the
caption prior, plus the reranker at the describe weight), plus a x h. a = 0 is the shipped
ranking itself. benchmarks/flickr8k.py measures every head it trains (--heads) this way."""

from __future__ import annotations

import numpy as np

from retrieval.evaluation.i2t import scattered, top_logits
from retrieval.model.embedder import Embedder
from retrieval.model.prior import caption_prior
from retrieval.training.features import DatasetFeatures, Photos
from retrieval.training.fusion_heads import head_scores
from retrieval.training.recall import i2t_recall, rerank, t2i_recall

WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)


def _residual(head, f: DatasetFeatures, caps: np.ndarray, photos: np.ndarray) -> np.ndarray:
    """h for (caption, photo) pairs of the same shape, in ITC units."""
    _, h = head_scores(head, f, caps.ravel(), photos.ravel(), np.zeros(caps.size, np.float32))
    return (h / float(head.itc_scale.detach())).reshape(caps.shape)


def head_in_ranking(model, memory, f: DatasetFeatures, head, k: int = 32, weights=WEIGHTS) -> dict:
    """{"t2i": {a: recall}, "i2t": {a: recall}} with the head at each weight a over the shipped
    rankings of `f`'s photos and captions (a closed gallery)."""
    emb = Embedder(model.result.space, memory)
    pv = emb.photos(Photos.of(f))
    q_itc, q_sent = emb.texts(f.text)
    target = f.caption_image
    n_caps, n_photos = len(q_itc), len(pv.itc)
    rows_t = np.arange(n_caps)[:, None]
    # text -> image, as search: the search vector's top k, ITC + w x reranker logit
    sim = q_itc @ pv.search.T
    k_t = min(k, n_photos)
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k_t]
    first = np.take_along_axis(sim, top, 1)
    logit = model.reranker.logits(emb.evidence(first, q_itc, q_sent, pv.evidence.take(top)))
    base = scattered(first + model.config.rerank_weight * logit, rows_t, top, sim.shape, np.float64)
    h = scattered(_residual(head, f, np.repeat(rows_t, k_t, 1), top), rows_t, top, sim.shape, np.float64)
    t2i = {f"{a:g}": t2i_recall(rerank(sim, k_t, lambda r, c, a=a: base[r, c] + a * h[r, c]), target)
           for a in weights}
    # image -> text, as describe: ITC top k of the captions, minus the caption prior
    s, top_c, itc_c, logit_c = top_logits(model, emb, pv.itc, pv.evidence, q_itc, q_sent, k)
    rows_i = np.arange(n_photos)[:, None]
    prior = caption_prior(q_itc[top_c.ravel()], getattr(model, "bank", None)).reshape(top_c.shape)
    score = itc_c + model.config.describe_weight * logit_c - model.config.describe_prior * prior
    base_i = scattered(score, rows_i, top_c, s.shape, np.float64)
    h_i = _residual(head, f, top_c, np.repeat(rows_i, top_c.shape[1], 1))
    h_i = scattered(h_i, rows_i, top_c, s.shape, np.float64)
    i2t = {f"{a:g}": i2t_recall(rerank(s, k, lambda r, c, a=a: base_i[r, c] + a * h_i[r, c]), target)
           for a in weights}
    return {"t2i": t2i, "i2t": i2t}
