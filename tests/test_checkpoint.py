"""Checkpoint round trip, the shipped default, and clear refusals."""

import json

import pytest
import torch

from retrieval.encoders.tops import digest as tops_digest
from retrieval.model.checkpoint import default_checkpoint_path, load_checkpoint, save_checkpoint
from retrieval.errors import CheckpointError
from retrieval.model.heads import FUSION_VARIANTS, FusionHead, ModelConfig, SharedSpace
from retrieval.model.memory import corpus_digest
from retrieval.model.reranker import Reranker

CFG = ModelConfig(image_dim=32, text_dim=16, fusion_dim=8, rerank="concat-mlp", rerank_weight=0.5)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    space = SharedSpace(CFG, torch.nn.functional.normalize(torch.randn(1000, 16), dim=-1))
    heads = {v: FusionHead(v, CFG) for v in FUSION_VARIANTS}
    with torch.no_grad():
        for m in [space, *heads.values()]:
            for p in m.parameters():
                p.add_(torch.randn(p.shape) * 0.1)
    path = tmp_path / "ck.safetensors"
    digest = save_checkpoint(path, CFG, space, heads, {v: 0.5 for v in heads}, {"data": ["x"]})
    return path, digest, space, heads


def test_round_trip(saved):
    path, digest, space, heads = saved
    ck = load_checkpoint(path)
    assert ck.content_hash == digest and ck.config == CFG and ck.rerank_head.variant == "concat-mlp"
    x, logits, t = torch.randn(4, 32), torch.randn(4, 1000), torch.randn(4, 16)
    with torch.no_grad():
        # float16 storage: equal to the originals within half precision
        torch.testing.assert_close(ck.space.embed_image(x, logits), space.embed_image(x, logits), atol=2e-3, rtol=0)
        a = ck.heads["multiplicative"].residual(x, t)
        b = heads["multiplicative"].eval().residual(x, t)
        torch.testing.assert_close(a, b, atol=2e-2, rtol=1e-2)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["content_hash"] == digest and meta["config"]["image_encoder"] == "efficientnet-lite0"
    assert load_checkpoint(path).content_hash == digest  # deterministic


def test_other_encoder_refused_with_the_fix(saved):
    path = saved[0]
    with pytest.raises(CheckpointError, match="made for the image encoder efficientnet-lite0, not resnet50.*fusion train"):
        load_checkpoint(path, image_encoder="resnet50")


def test_damaged_and_missing(saved, tmp_path):
    path = saved[0]
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # flip a byte inside the tensors
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="bad.safetensors: damaged checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="nothing.safetensors: checkpoint not found"):
        load_checkpoint(tmp_path / "nothing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="junk.safetensors: not a readable checkpoint"):
        load_checkpoint(junk)


def test_shipped_default_checkpoint():
    path = default_checkpoint_path()
    # 5.4 MB of look-alike training photos (256 principal directions of their features and
    # their mean caption vectors, int8 rows), 5.6 MB of the encoders' tuned tops (float16),
    # the rest heads, reranker and bank; no baselines
    assert path.is_file() and path.stat().st_size < 14_500_000
    ck = load_checkpoint(image_encoder="efficientnet-lite0", text_encoder="all-MiniLM-L6-v2")
    # the tops tuned on Flickr8k (fusion train --tune-tops), named by the digests the encoders key caches by
    assert ck.record["train_config"]["tune_tops"].endswith("flickr8k") and ck.record["train_config"]["tops_mix"] == 0.5
    assert ck.config.image_tops == tops_digest(ck.tops["image"]) and "_conv_head.weight" in ck.tops["image"]
    assert ck.config.text_tops == tops_digest(ck.tops["text"]) and "layers.5.out.weight" in ck.tops["text"]
    assert ck.heads == {}  # the fusion-head baselines only with fusion train --baselines
    assert ck.record["train_photos"] > 7000  # all of Flickr8k's train and dev splits (issue 32)
    # search reranks with the evidence reranker, at a weight tuned on cross-fitted candidates
    assert ck.config.rerank == "evidence" and ck.reranker is not None and ck.config.rerank_weight > 0
    assert ck.config.memory_digest == corpus_digest()  # trained with the memory that ships
    assert 0 < ck.config.match_threshold < 1
    assert "data/demo" in " ".join(ck.record["excluded"])  # the demo photos were held out
    assert ck.config.image_size == 256  # Lite0 fed 256 px (docs/quality.md)
    nb = ck.space.neighbours  # captions borrowed from look-alike training photos (README, The model)
    assert ck.config.neighbour_weight > 0 and nb is not None and nb.basis.shape == (1280, 256)
    assert len(nb.photos) == len(nb.captions) == ck.record["train_photos"] + ck.record["val_photos"]


def test_the_runtime_feeds_the_encoder_the_size_its_checkpoint_records(saved, tmp_path):
    from dataclasses import replace

    from retrieval.model.runtime import Runtime

    path, _, space, heads = saved
    assert CFG.image_size == 0 and Runtime(path).image_encoder.config.image_size == 224  # older checkpoints
    sized = tmp_path / "sized.safetensors"
    save_checkpoint(sized, replace(CFG, image_size=288), space, heads, {v: 0.5 for v in heads}, {"data": ["x"]})
    assert Runtime(sized).image_encoder.config.image_size == 288
    assert Runtime().image_encoder.config.image_size == 256  # the shipped one


def test_reranker_round_trip(saved, tmp_path):
    path, _, space, heads = saved
    torch.manual_seed(1)
    rr = Reranker(hidden=4)
    with torch.no_grad():
        rr.mean.add_(torch.randn(rr.mean.shape))
    cfg = ModelConfig(**{**CFG.to_dict(), "rerank": "evidence", "reranker_hidden": 4})
    out = tmp_path / "rr.safetensors"
    save_checkpoint(out, cfg, space, heads, {v: 0.5 for v in heads}, {}, rr)
    ck = load_checkpoint(out)
    x = torch.randn(3, 7, rr.mean.shape[0])
    torch.testing.assert_close(ck.reranker(x), rr(x), atol=2e-2, rtol=1e-2)
