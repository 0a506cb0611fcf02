"""Semi-supervised pairs: uncaptioned photos (a user's distractor folder) captioned by the
caption memory. A first shared space recalls each photo's nearest memory captions; the best
few become its pseudo-captions, and the space is trained again on the real pairs plus these.
Measured on the open-world folds (benchmarks/open_world.py; docs/quality.md): with 754
uncaptioned photos, projected 5K t2i R@10 +2.9 points, R@1 +1.0."""

from __future__ import annotations

import numpy as np

from retrieval.model.embedder import Embedder
from retrieval.model.prior import bank_rows, caption_prior
from retrieval.training.features import DatasetFeatures


def itc_view(f: DatasetFeatures) -> DatasetFeatures:
    """What ITC training reads of `f` (photos, logits, cells, caption vectors), without the
    grid cells and token states (views with no columns, so a concat copies nothing big)."""
    return DatasetFeatures(f.pooled, f.logits, f.grid[:, :0], f.text, f.tokens[:, :0], f.mask[:, :0],
                           f.caption_image, f.cells, f.mid, f.fragments)


def pseudo_pairs(space, memory, photos, per_photo: int, like: DatasetFeatures, prior: float = 0.0,
                 seed: int = 0) -> DatasetFeatures:
    """`photos` (training.rerank.Photos) each with its `per_photo` best-recalled memory
    captions as captions, shaped like `itc_view(like)` so the two concatenate. With `prior`,
    a caption's recall score loses `prior` x its caption prior over these photos (a bank of
    them drawn with `seed`), so a photo's pseudo-captions are the ones that fit it better
    than they fit photos in general, not the generic ones that sit close to every photo."""
    emb = Embedder(space, memory)
    itc = emb.photos(photos).itc
    offset = -prior * caption_prior(emb.corpus_itc, itc[bank_rows(len(itc), seed)]) if prior else None
    ids, _ = memory.recall(itc, emb.corpus_itc, per_photo, emb.tau, offset)  # best first
    n, m = len(photos.pooled), ids.size
    return DatasetFeatures(np.asarray(photos.pooled, np.float32), np.asarray(photos.logits, np.float32),
                           np.zeros((n, 0) + like.grid.shape[2:], like.grid.dtype),
                           memory.vectors[ids.ravel()].astype(np.float32),
                           np.zeros((m, 0) + like.tokens.shape[2:], like.tokens.dtype),
                           np.zeros((m, 0), bool), np.repeat(np.arange(n), per_photo),
                           np.asarray(photos.cells, np.float32), np.asarray(photos.mid, np.float32))
