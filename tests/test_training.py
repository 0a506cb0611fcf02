"""Training on real features of a small real subset (the demo photos, not the shipped model)."""

import numpy as np
import pytest

from retrieval.data.datasets import load_dataset
from retrieval.training.features import DatasetFeatures, dataset_features
from retrieval.model.heads import ModelConfig
from retrieval.training.trainer import class_embeddings
from retrieval.training.fusion_heads import crossfit_pairs, train_head
from retrieval.training.loop import TrainConfig, crossfit_spaces, itc_scores, train_itc, train_itc_soup
from retrieval.training.stages import train_all


@pytest.fixture(scope="module")
def feats(image_encoder, text_encoder, demo_dir, tmp_path_factory):
    return dataset_features(load_dataset(demo_dir), image_encoder, text_encoder,
                            tmp_path_factory.mktemp("cache"), progress=False)


@pytest.fixture(scope="module")
def classes(text_encoder):
    return class_embeddings(text_encoder)


def test_feature_cache_round_trip(feats, image_encoder, text_encoder, demo_dir, tmp_path):
    assert feats.pooled.shape == (48, 1280) and feats.grid.shape == (48, 49, 1280)
    assert feats.text.shape == (240, 384) and feats.tokens.shape[:2] == feats.mask.shape
    a = dataset_features(load_dataset(demo_dir), image_encoder, text_encoder, tmp_path, progress=False)
    b = dataset_features(load_dataset(demo_dir), image_encoder, text_encoder, tmp_path, progress=False)
    np.testing.assert_array_equal(a.text, b.text)
    assert len(list(tmp_path.glob("*.npz"))) == 1


def test_features_at_another_input_size_are_cached_apart(text_encoder, demo_dir, tmp_path):
    from retrieval.encoders.image_encoder import load_image_encoder

    small = load_image_encoder()
    ds = load_dataset(demo_dir)
    a = dataset_features(ds, small, text_encoder, tmp_path, progress=False)
    b = dataset_features(ds, load_image_encoder(image_size=256), text_encoder, tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == 2
    assert a.grid.shape[1] == 49 and b.grid.shape[1] == 64
    assert not np.allclose(a.pooled, b.pooled, atol=1e-2)


def test_itc_training_lowers_the_loss_and_fits(feats, classes):
    cfg = ModelConfig()
    tc = TrainConfig(seed=0, batch_size=16, lr=1e-3)
    space, _, curve = train_itc(cfg, classes, feats, None, tc, epochs=8)
    assert curve[-1]["loss"] < 0.7 * curve[0]["loss"]
    from retrieval.model.heads import SharedSpace
    before = itc_scores(SharedSpace(cfg, classes), feats)["t2i"]["r1"]
    after = itc_scores(space, feats)["t2i"]["r1"]
    assert after > before + 5  # it learned the training photos


def test_crossfit_pairs_hold_every_positive_once_per_caption(feats, classes):
    tc = TrainConfig(seed=0, batch_size=16, candidates=8)
    caps, photos, itc, label = crossfit_pairs(ModelConfig(), classes, feats, tc, epochs=2)
    assert len(caps) == 240 * 8
    assert np.all(np.bincount(caps[label == 1], minlength=240) == 1)
    assert np.all(photos[label == 1] == feats.caption_image[caps[label == 1]])
    assert np.all(np.abs(itc) <= 1.0 + 1e-5)


def test_crossfit_spaces_borrow_captions_only_from_their_own_training_photos(feats, classes):
    """A held-out photo must not find itself among the look-alikes (its own captions would make
    the reranker's training candidates far easier than search's)."""
    from retrieval.model.neighbours import build_neighbours

    cfg, tc = ModelConfig(neighbour_weight=0.25), TrainConfig(seed=0, batch_size=16)
    seen = []
    for _, held, space, sub in crossfit_spaces(cfg, classes, feats, tc, 1, 3):
        nb = space.neighbours
        rest = np.setdiff1d(np.arange(48), held)
        assert nb is not None and len(nb.photos) == len(rest)
        alone = build_neighbours(feats.pooled[rest], np.zeros((1, 384), np.float32), np.zeros(1, int), tc.neighbour_dims)
        np.testing.assert_allclose(nb.photos, alone.photos, atol=1e-5)
        assert nb.key(sub.pooled).dot(nb.photos.T).max() < 0.999  # no held-out photo is its own look-alike
        seen.extend(held)
    assert sorted(seen) == list(range(48))
    off = next(crossfit_spaces(ModelConfig(), classes, feats, TrainConfig(seed=0, batch_size=16), 1, 3))[2]
    assert off.neighbours is None  # a config without them (every checkpoint before) builds none


def test_head_training_lowers_bce(feats, classes):
    cfg = ModelConfig()
    tc = TrainConfig(seed=0, batch_size=16, candidates=8, itm_epochs=3, itm_patience=5)
    space, _, _ = train_itc(cfg, classes, feats, None, tc, epochs=2)
    pairs = crossfit_pairs(cfg, classes, feats, tc, epochs=2)
    head, curve = train_head("concat-mlp", cfg, feats, pairs, feats, space, tc)
    assert curve[-1]["loss"] < curve[0]["loss"]


def test_a_soup_is_the_average_of_its_runs(feats, classes):
    cfg = ModelConfig()
    tc = TrainConfig(seed=0, batch_size=16, lr=1e-3, soup=3)
    soup, _, _ = train_itc_soup(cfg, classes, feats, None, tc, epochs=3)
    runs = [train_itc(cfg, classes, feats, None, TrainConfig(seed=i, batch_size=16, lr=1e-3), epochs=3)[0]
            for i in range(3)]
    w = [r.image_fc[1].weight.detach() for r in runs]
    assert not np.allclose(w[0].numpy(), w[1].numpy(), atol=1e-4)  # the runs differ (seeded order)
    np.testing.assert_allclose(soup.image_fc[1].weight.detach().numpy(), (sum(w) / 3).numpy(), atol=2e-4)  # float noise between runs
    np.testing.assert_allclose(soup.text_fc.bias.detach().numpy(),
                               (sum(r.text_fc.bias.detach() for r in runs) / 3).numpy(), atol=1e-5)  # biases ~1e-3


@pytest.fixture(scope="module")
def memory(text_encoder):
    from retrieval.model.memory import load_memory

    return load_memory(text_encoder, progress=False)


def test_pseudo_captions_are_the_memory_captions_a_photo_recalls(feats, classes, memory):
    """Demo photos as if uncaptioned: each gets its 3 best-recalled memory captions, which
    read like its real captions (closer to them than to the other photos' captions)."""
    from retrieval.model.checkpoint import load_checkpoint
    from retrieval.training.pseudo import itc_view, pseudo_pairs
    from retrieval.training.features import Photos

    space = load_checkpoint().space
    photos = Photos.of(feats)
    p = pseudo_pairs(space, memory, photos, 3, itc_view(feats))
    assert p.text.shape == (48 * 3, 384) and list(p.caption_image[:6]) == [0, 0, 0, 1, 1, 1]
    assert p.grid.shape == (48, 0, 1280) and p.tokens.shape[:2] == (144, 0)
    np.testing.assert_array_equal(p.pooled, feats.pooled)
    real = feats.text / np.linalg.norm(feats.text, axis=1, keepdims=True)
    sim = p.text @ real.T  # pseudo-caption x real caption, sentence space
    own = np.array([sim[p.caption_image == i][:, feats.caption_image == i].mean() for i in range(48)])
    other = np.array([sim[p.caption_image == i][:, feats.caption_image != i].mean() for i in range(48)])
    assert np.mean(own > other) > 0.9, np.mean(own > other)


def test_the_caption_prior_trades_generic_pseudo_captions_for_specific_ones(feats, classes, memory):
    """With the prior, the demo photos recall fewer captions that many of them share (a
    caption recalled by 5 photos says little about any one), and what they recall still
    reads like their own real captions."""
    from retrieval.model.checkpoint import load_checkpoint
    from retrieval.training.pseudo import itc_view, pseudo_pairs
    from retrieval.training.features import Photos

    space, photos = load_checkpoint().space, Photos.of(feats)
    plain, prior = (pseudo_pairs(space, memory, photos, 3, itc_view(feats), w) for w in (0.0, 0.5))
    assert not np.array_equal(plain.text, prior.text)
    shared = [np.unique(p.text, axis=0, return_counts=True)[1] for p in (plain, prior)]
    assert (shared[1] > 1).sum() < (shared[0] > 1).sum(), [(c > 1).sum() for c in shared]
    real = feats.text / np.linalg.norm(feats.text, axis=1, keepdims=True)
    sim = prior.text @ real.T
    own = np.array([sim[prior.caption_image == i][:, feats.caption_image == i].mean() for i in range(48)])
    other = np.array([sim[prior.caption_image == i][:, feats.caption_image != i].mean() for i in range(48)])
    assert np.mean(own > other) > 0.9, np.mean(own > other)


def test_training_with_uncaptioned_photos_adds_their_pseudo_pairs(feats, classes, memory):
    from retrieval.training.features import Photos

    tc = TrainConfig(seed=0, batch_size=16, max_epochs=2, patience=1, soup=2, pseudo_captions=2, variants=())
    train, val = feats.subset(np.arange(40)), feats.subset(np.arange(40, 48))
    photos = Photos.of(feats).take(np.arange(40, 48))
    with_pseudo = train_all(ModelConfig(), classes, train, val, tc, unlabelled=photos, memory=memory)
    without = train_all(ModelConfig(), classes, train, val, tc)
    assert with_pseudo.history["pseudo_photos"] == 8 and without.history["pseudo_photos"] == 0
    assert not np.allclose(with_pseudo.space.image_fc[1].weight.detach().numpy(),
                           without.space.image_fc[1].weight.detach().numpy())


def test_features_without_cells_and_tokens_keep_what_itc_reads_and_hold_nothing_big():
    rng = np.random.default_rng(0)
    n, m = 4, 8
    f = DatasetFeatures(rng.normal(size=(n, 6)).astype(np.float32), rng.normal(size=(n, 1000)).astype(np.float32),
                        rng.normal(size=(n, 9, 6)).astype(np.float16), rng.normal(size=(m, 5)).astype(np.float32),
                        rng.normal(size=(m, 7, 5)).astype(np.float16), np.ones((m, 7), bool), np.repeat(np.arange(n), 2),
                        rng.normal(size=(n, 1000)).astype(np.float32), rng.normal(size=(n, 3)).astype(np.float32))
    slim = f.without_cells_and_tokens()
    assert slim.grid.shape == (n, 0, 6) and slim.tokens.shape == (m, 0, 5) and slim.mask.shape == (m, 0)
    assert not np.shares_memory(slim.grid, f.grid) and not np.shares_memory(slim.tokens, f.tokens)
    for name in ("pooled", "logits", "text", "caption_image", "cells", "mid"):
        assert np.array_equal(getattr(slim, name), getattr(f, name))
    both = DatasetFeatures.concat([slim, slim.subset(np.array([1, 3]))])
    assert len(both.pooled) == 6 and both.grid.shape == (6, 0, 6) and list(both.caption_image[-4:]) == [4, 4, 5, 5]


def test_a_fusion_head_over_the_shipped_rankings_starts_exactly_at_them(feats, memory):
    """retrieval/evaluation/fusion_rerank.py (issue 32's fusion-classifier road): at weight 0 the
    head leaves search's and describe's rankings as closed_gallery_recall measures them, and a
    head that says something moves them at a large weight."""
    from types import SimpleNamespace

    import torch

    from retrieval.evaluation.closed import DESCRIBE, SHIPPED, closed_gallery_recall
    from retrieval.evaluation.fusion_rerank import head_in_ranking
    from retrieval.model.checkpoint import load_checkpoint
    from retrieval.model.heads import FusionHead

    ck = load_checkpoint(None)
    model = SimpleNamespace(config=ck.config, result=SimpleNamespace(space=ck.space), reranker=ck.reranker,
                            bank=ck.bank.numpy())
    f = feats.subset(np.arange(len(feats.pooled)))
    ref = closed_gallery_recall(model, memory, f, 32)
    torch.manual_seed(0)
    head = FusionHead("cross-attention", ck.config)
    torch.nn.init.normal_(head.mlp[-1].weight, std=1.0)
    grid = head_in_ranking(model, memory, f, head, 32, weights=(0.0, 10.0))
    assert grid["t2i"]["0"] == ref["t2i"][SHIPPED] and grid["i2t"]["0"] == ref["i2t"][DESCRIBE]
    assert grid["t2i"]["10"] != grid["t2i"]["0"] and grid["i2t"]["10"] != grid["i2t"]["0"]


def _small_copy(demo_dir, to, n_photos=3):
    """The demo's first `n_photos` photos and their captions, copied to `to` with fresh file times."""
    import json
    import shutil

    lines = [json.loads(line) for line in (demo_dir / "captions.jsonl").read_text().splitlines() if line.strip()]
    keep = list(dict.fromkeys(obj["image"] for obj in lines))[:n_photos]
    for name in keep:
        (to / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(demo_dir / name, to / name)  # copyfile: new times, as a plain cp -r gives
    (to / "captions.jsonl").write_text("".join(json.dumps(o) + "\n" for o in lines if o["image"] in keep))
    return to


def test_a_copied_dataset_reuses_its_features_and_an_edited_one_does_not(image_encoder, text_encoder,
                                                                          demo_dir, tmp_path):
    cache = tmp_path / "cache"
    first = _small_copy(demo_dir, tmp_path / "first")
    a = dataset_features(load_dataset(first), image_encoder, text_encoder, cache, progress=False)
    moved = _small_copy(demo_dir, tmp_path / "elsewhere" / "first")  # another place, newer times
    b = dataset_features(load_dataset(moved), image_encoder, text_encoder, cache, progress=False)
    assert len(list(cache.glob("*.npz"))) == 1
    np.testing.assert_array_equal(a.pooled, b.pooled)
    (moved / "captions.jsonl").write_text((moved / "captions.jsonl").read_text().replace("a ", "one ", 1))
    dataset_features(load_dataset(moved), image_encoder, text_encoder, cache, progress=False)
    assert len(list(cache.glob("*.npz"))) == 2  # one caption edited: encoded anew
    photo = moved / load_dataset(moved).images[0]
    photo.write_bytes(photo.read_bytes() + b"\0")  # the same photo, one byte longer
    dataset_features(load_dataset(moved), image_encoder, text_encoder, cache, progress=False)
    assert len(list(cache.glob("*.npz"))) == 3
