"""Recall@k and two-stage rerank against brute-force references."""

import numpy as np
import pytest

from retrieval.training.recall import i2t_recall, ranks_of, rerank, t2i_recall


def brute_t2i(scores, caption_image, k):
    hits = 0
    for c, row in enumerate(scores):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))
        hits += caption_image[c] in order[:k]
    return 100.0 * hits / len(scores)


def brute_i2t(scores, caption_image, k):
    hits = 0
    for i, row in enumerate(scores):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))
        hits += any(caption_image[c] == i for c in order[:k])
    return 100.0 * hits / len(scores)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_img, per = 23, 3
    caption_image = np.repeat(np.arange(n_img), per)
    rng.shuffle(caption_image)
    # rounded scores make ties common, so tie-breaking is tested too
    scores = np.round(rng.normal(size=(len(caption_image), n_img)), 1)
    scores[np.arange(len(scores)), caption_image] += rng.uniform(0, 2, len(scores))
    for k in (1, 5, 10):
        assert t2i_recall(scores, caption_image)[f"r{k}"] == pytest.approx(brute_t2i(scores, caption_image, k), abs=0.01)
        assert i2t_recall(scores.T, caption_image)[f"r{k}"] == pytest.approx(brute_i2t(scores.T, caption_image, k), abs=0.01)


def test_ranks_of_breaks_ties_by_index():
    s = np.array([[1.0, 1.0, 0.5]])
    assert ranks_of(s, np.array([1]))[0] == 1 and ranks_of(s, np.array([0]))[0] == 0


def test_rerank_reorders_only_the_top_k():
    scores = np.array([[0.9, 0.8, 0.7, 0.1, 0.0]])
    # rescoring reverses the top 3; columns 3 and 4 keep their place below
    out = rerank(scores, 3, lambda rows, cols: -scores[rows, cols])
    assert list(np.argsort(-out[0])) == [2, 1, 0, 3, 4]
    same = rerank(scores, 3, lambda rows, cols: scores[rows, cols])
    assert list(np.argsort(-same[0])) == [0, 1, 2, 3, 4]


def test_rerank_picks_the_top_k_a_stable_sort_picks_under_ties():
    """Benchmarks look rescores up by (row, column) for the top k of a stable sort: with tied
    scores at the k-th place (a caption the memory holds twice) rerank must visit the same
    columns, or it reads a missing rescore (it says so rather than rank by NaN)."""
    rng = np.random.default_rng(0)
    scores = np.round(rng.random((50, 400)), 2)  # many exact ties
    k = 7
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    lookup = np.full(scores.shape, np.nan)
    np.put_along_axis(lookup, top, -scores[np.arange(50)[:, None], top], axis=1)
    out = rerank(scores, k, lambda rows, cols: lookup[rows, cols])
    assert not np.isnan(out).any()
    np.testing.assert_array_equal(np.sort(np.argsort(-out, axis=1, kind="stable")[:, :k], 1), np.sort(top, 1))
    with pytest.raises(ValueError, match="missing"):
        rerank(scores, k + 1, lambda rows, cols: lookup[rows, cols])
