"""Caption transfer from look-alike training photos (retrieval/model/neighbours.py): what a photo
borrows, that it borrows only from the photos it was given, and that it survives a checkpoint."""

import numpy as np
import torch

from retrieval.model.checkpoint import load_checkpoint, save_checkpoint
from retrieval.model.embedder import Embedder
from retrieval.model.heads import ModelConfig, SharedSpace
from retrieval.model.neighbours import build_neighbours
from retrieval.model.query_side import l2n
from retrieval.training.features import Photos

RNG = np.random.default_rng(0)


def clusters(n_per=6, dim=32, text=16):
    """Three kinds of photo (look-alike within a kind) whose captions say three different things."""
    centres, words = RNG.normal(size=(3, dim)) * 4, l2n(RNG.normal(size=(3, text)))
    photos = np.concatenate([c + RNG.normal(size=(n_per, dim)) for c in centres]).astype(np.float32)
    kind = np.repeat(np.arange(3), n_per)
    caption_image = np.repeat(np.arange(len(photos)), 2)  # two captions a photo
    captions = l2n(words[kind[caption_image]] + 0.1 * RNG.normal(size=(len(caption_image), text))).astype(np.float32)
    return centres, words, photos, captions, caption_image


def test_a_photo_borrows_the_captions_of_the_photos_it_looks_like():
    centres, words, photos, captions, caption_image = clusters()
    nb = build_neighbours(photos, captions, caption_image)
    new = (centres + RNG.normal(size=centres.shape)).astype(np.float32)  # unseen photos, one of each kind
    got = nb.transfer(new, k=4, tau=0.1)
    assert got.shape == (3, 16) and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert (np.argmax(got @ words.T, axis=1) == [0, 1, 2]).all()  # each borrows its own kind's words
    assert (np.diag(got @ words.T) > 0.95).all()


def test_text_only_captions_are_not_borrowed_and_fewer_dims_keep_the_kinds():
    centres, words, photos, captions, caption_image = clusters()
    stray = l2n(RNG.normal(size=(5, 16))).astype(np.float32)  # captions without a photo (-1)
    nb = build_neighbours(photos, np.concatenate([captions, stray]), np.concatenate([caption_image, np.full(5, -1)]))
    assert np.allclose(nb.captions, build_neighbours(photos, captions, caption_image).captions, atol=1e-6)
    small = build_neighbours(photos, captions, caption_image, dims=4)
    assert small.basis.shape == (32, 4) and small.photos.shape == (18, 4)
    got = small.transfer((centres + RNG.normal(size=centres.shape)).astype(np.float32), k=4, tau=0.1)
    assert (np.argmax(got @ words.T, axis=1) == [0, 1, 2]).all()


def test_search_vectors_move_towards_the_borrowed_captions_and_the_checkpoint_keeps_them(tmp_path):
    centres, words, photos, captions, caption_image = clusters()
    cfg = ModelConfig(image_dim=32, text_dim=16, fusion_dim=8, neighbour_weight=0.5, neighbour_k=4)
    torch.manual_seed(0)
    space = SharedSpace(cfg, torch.nn.functional.normalize(torch.randn(1000, 16), dim=-1))
    new = (centres + RNG.normal(size=centres.shape)).astype(np.float32)
    feats = Photos(new, RNG.normal(size=(3, 1000)).astype(np.float32), RNG.normal(size=(3, 1000)).astype(np.float32),
                   np.zeros((3, 0), np.float32))
    before = Embedder(space, None).photos(feats)
    space.neighbours = build_neighbours(photos, captions, caption_image)
    after = Embedder(space, None).photos(feats)
    assert np.allclose(after.itc, before.itc) and np.allclose(before.search, before.itc)  # ITC is untouched
    gain = np.diag(after.search @ words.T) - np.diag(before.search @ words.T)
    assert (gain > 0.1).all(), gain  # towards its own kind's words
    assert np.allclose(Embedder(space, None, neighbours=0).photos(feats).search, before.search)  # switched off
    path = tmp_path / "ck.safetensors"
    digest = save_checkpoint(path, cfg, space, {}, {}, {})
    ck = load_checkpoint(path)
    assert np.allclose(Embedder(ck.space, None).photos(feats).search, after.search, atol=5e-3)  # float16
    space.neighbours.captions = l2n(space.neighbours.captions[::-1].copy())
    assert save_checkpoint(tmp_path / "other.safetensors", cfg, space, {}, {}, {}) != digest  # in the hash
