"""Recall@k as pure functions of score matrices (tested against a brute-force reference)."""

from __future__ import annotations

import numpy as np

KS = (1, 5, 10)


def ranks_of(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of column targets[i] in row i, best score first; ties go to the lower
    column index, so results are stable."""
    rows = np.arange(len(scores))
    t = scores[rows, targets][:, None]
    cols = np.arange(scores.shape[1])[None, :]
    better = (scores > t) | ((scores == t) & (cols < targets[:, None]))
    return better.sum(axis=1)


def recall_at(ranks: np.ndarray) -> dict:
    """Recall@k (%) from 0-based ranks of each query's target."""
    return {f"r{k}": round(100.0 * float(np.mean(ranks < k)), 2) for k in KS}


def t2i_recall(scores: np.ndarray, caption_image: np.ndarray, ks=KS) -> dict:
    """scores: (captions, images). A caption hits at k when its own photo ranks in the top k."""
    r = ranks_of(scores, caption_image)
    return {f"r{k}": round(100.0 * float(np.mean(r < k)), 2) for k in ks}


def i2t_recall(scores: np.ndarray, caption_image: np.ndarray, ks=KS) -> dict:
    """scores: (images, captions). A photo hits at k when any of its captions ranks in the top k."""
    order = np.lexsort((np.arange(scores.shape[1])[None, :].repeat(len(scores), 0), -scores), axis=1)
    rank = np.empty_like(order)
    rank[np.arange(len(scores))[:, None], order] = np.arange(scores.shape[1])[None, :]
    best = np.full(len(scores), np.iinfo(np.int64).max)
    for c, img in enumerate(caption_image):
        if img >= 0:
            best[img] = min(best[img], rank[img, c])
    return {f"r{k}": round(100.0 * float(np.mean(best < k)), 2) for k in ks}


def rerank(scores: np.ndarray, k: int, rescore) -> np.ndarray:
    """Two-stage ranking as scores: each row's top-k by `scores` is reordered by
    `rescore(rows, cols)` (same shapes, k per row) and placed above every other column,
    which keep their first-stage order."""
    k = min(k, scores.shape[1])
    # a stable sort, as callers that look their rescores up by (row, column) pick their top k:
    # with tied scores at the k-th place (a caption the corpus holds twice) an argpartition
    # could pick the other twin, whose rescore is missing
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    rows = np.repeat(np.arange(len(scores))[:, None], k, axis=1)
    new = np.asarray(rescore(rows, top), dtype=np.float64)
    if np.isnan(new).any():
        raise ValueError("rerank: the rescore of a top-k candidate is missing (NaN)")
    out = scores.astype(np.float64).copy()
    lift = out.max() - new.min() + 1.0
    out[rows, top] = new + lift
    return out
