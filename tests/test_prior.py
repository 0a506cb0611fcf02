"""The caption prior of `fusion describe`: captions that fit many photos sink, on made-up
vectors and on the shipped checkpoint's bank with real captions."""

import numpy as np
import pytest

from retrieval.model.prior import PRIOR_K, caption_prior
from retrieval.model.query_side import QuerySide, l2n


def test_a_caption_near_many_bank_photos_has_the_higher_prior():
    rng = np.random.default_rng(0)
    crowd = l2n(rng.normal(size=16))
    bank = l2n(np.concatenate([crowd + 0.1 * rng.normal(size=(30, 16)), rng.normal(size=(30, 16))]))
    lone = bank[45]  # exactly one bank photo, far from the crowd
    generic, specific = caption_prior(np.stack([crowd, lone]), bank)
    assert generic > specific + 0.3
    # the mean over the k nearest: a caption equal to one photo is not "close to everything"
    assert specific < 1.0 - 0.1 and caption_prior(lone[None], bank, k=1)[0] == pytest.approx(1.0, abs=1e-6)


def test_small_and_missing_banks():
    rng = np.random.default_rng(1)
    caps, bank = l2n(rng.normal(size=(3, 8))), l2n(rng.normal(size=(4, 8)))
    assert PRIOR_K > 4  # fewer photos than k: the mean over all of them
    np.testing.assert_allclose(caption_prior(caps, bank), (caps @ bank.T).mean(1), atol=1e-6)
    assert not caption_prior(caps, None).any() and caption_prior(caps, None).shape == (3,)


def test_the_shipped_bank_is_real_photos_in_both_runtimes(text_encoder):
    from retrieval.model.checkpoint import load_checkpoint

    q, ck = QuerySide.load(), load_checkpoint()
    assert q.config.describe_prior > 0 and q.bank.shape == (768, q.config.text_dim)
    np.testing.assert_allclose(q.bank, ck.bank.numpy(), atol=0)
    assert np.allclose(np.linalg.norm(q.bank, axis=1), 1, atol=2e-3)  # ITC vectors (float16)
    # bank photos are real photos: every real caption sits closer to its nearest ones than
    # any made-up word does
    from retrieval.training.rerank import nonsense_queries

    real = ["A man and a woman standing next to each other.", "A plate of pasta with a fork on a table.",
            "A bus parked on the street.", "Three zebras grazing on the grass."]
    made_up = nonsense_queries(50)
    prior = [caption_prior(q.embed_text(text_encoder.encode(t, normalize=False).pooled), q.bank) for t in (real, made_up)]
    assert prior[0].min() > prior[1].max() + 0.05
