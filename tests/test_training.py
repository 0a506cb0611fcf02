"""Training on real features of a small real subset (the demo photos, not the shipped model)."""

import numpy as np
import pytest

from retrieval.training.datasets import load_dataset
from retrieval.training.features import dataset_features
from retrieval.model.heads import ModelConfig
from retrieval.training.trainer import class_embeddings
from retrieval.training.loop import TrainConfig, crossfit_pairs, itc_scores, train_head, train_itc


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


def test_head_training_lowers_bce(feats, classes):
    cfg = ModelConfig()
    tc = TrainConfig(seed=0, batch_size=16, candidates=8, itm_epochs=3, itm_patience=5)
    space, _, _ = train_itc(cfg, classes, feats, None, tc, epochs=2)
    pairs = crossfit_pairs(cfg, classes, feats, tc, epochs=2)
    head, curve = train_head("concat-mlp", cfg, feats, pairs, feats, space, tc)
    assert curve[-1]["loss"] < curve[0]["loss"]
