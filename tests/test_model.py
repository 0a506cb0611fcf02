"""Fusion heads: the seed's additive head is separable; the shipped kinds are not; every head
starts as ITC (zero-initialised residual)."""

import numpy as np
import pytest
import torch

from retrieval.model.heads import FUSION_VARIANTS, FusionHead, ModelConfig, SharedSpace

CFG = ModelConfig(image_dim=32, text_dim=16, fusion_dim=8)


def randomise(head, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return head.eval()


def inputs(n_img=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n_img, 32, generator=g), torch.randn(n_img, 49, 32, generator=g),
            torch.randn(2, 16, generator=g), torch.randn(2, 6, 16, generator=g))


def ranking(head, text_row, pooled, grid, text, tokens):
    n = len(pooled)
    t = text[text_row].expand(n, -1)
    tok = tokens[text_row].expand(n, -1, -1)
    with torch.no_grad():
        h = head.residual(pooled, t, grid, tok, torch.ones(n, 6, dtype=torch.bool))
    return h.numpy()


def test_additive_head_cannot_change_a_ranking():
    head = randomise(FusionHead("additive", CFG))
    pooled, grid, text, tokens = inputs()
    a, b = (ranking(head, r, pooled, grid, text, tokens) for r in (0, 1))
    # logit = f(image) + g(text): two different texts differ by one constant for every photo
    np.testing.assert_allclose(a - b, (a - b)[0], atol=1e-5)
    assert list(np.argsort(-a)) == list(np.argsort(-b))


@pytest.mark.parametrize("variant", ["multiplicative", "concat-mlp", "cross-attention", "late-interaction"])
def test_interacting_heads_can_change_a_ranking(variant):
    head = randomise(FusionHead(variant, CFG))
    pooled, grid, text, tokens = inputs()
    a, b = (ranking(head, r, pooled, grid, text, tokens) for r in (0, 1))
    assert list(np.argsort(-a)) != list(np.argsort(-b))


@pytest.mark.parametrize("variant", FUSION_VARIANTS)
def test_heads_start_as_itc(variant):
    head = FusionHead(variant, CFG).eval()
    pooled, grid, text, tokens = inputs()
    r = ranking(head, 0, pooled, grid, text, tokens)
    assert np.all(r == 0.0)


def test_shared_space_starts_at_the_bridge():
    space = SharedSpace(CFG, torch.nn.functional.normalize(torch.randn(1000, 16), dim=-1))
    logits = torch.randn(3, 1000)
    img = space.embed_image(torch.randn(3, 32), logits)
    torch.testing.assert_close(img, space.bridge(logits))
    text = torch.randn(3, 16)
    torch.testing.assert_close(space.embed_text(text), torch.nn.functional.normalize(text, dim=-1))
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))


def test_shared_space_reads_mid_features_when_configured():
    """A model with mid-level features needs them, and they move the photo's vector once
    image_fc has weights; each part is layer-normalised on its own, so scaling the mid
    features (their spread is ~10x the pooled ones') changes nothing."""
    from dataclasses import replace

    cfg = replace(CFG, mid_dim=8)
    space = SharedSpace(cfg, torch.nn.functional.normalize(torch.randn(1000, 16), dim=-1))
    torch.nn.init.normal_(space.image_fc[1].weight)
    pooled, logits, mid = torch.randn(3, 32), torch.randn(3, 1000), torch.randn(3, 8)
    with pytest.raises(ValueError, match="mid"):
        space.embed_image(pooled, logits)
    img = space.embed_image(pooled, logits, None, mid)
    assert not torch.allclose(img, space.embed_image(pooled, logits, None, torch.randn(3, 8)))
    torch.testing.assert_close(img, space.embed_image(pooled, logits, None, 10 * mid), atol=1e-4, rtol=0)
