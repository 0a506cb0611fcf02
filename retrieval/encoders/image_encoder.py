"""Frozen pretrained image encoders: EfficientNet-Lite0 (default, ships with its weights) and
torchvision ResNet-50 (weights file supplied by the user). Preprocessing belongs to the encoder."""

from __future__ import annotations

import os
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

from retrieval.errors import WeightsError
from retrieval.encoders.image_config import (CONFIGS, RUN_SIZES, SIZE_RANGE, ImageEncoderConfig,  # noqa: F401
                                             ImageFeatures, _l2n, concat_features, imagenet_classes, run_size)
from retrieval.encoders.images import open_image
from retrieval.encoders.networks import build_network

DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"


class ImageEncoder:
    """Photos in, pooled vectors + ImageNet logits (+ grid cells) out; the network loads on first use."""

    def __init__(self, config: ImageEncoderConfig, weights: str | os.PathLike | None = None,
                 channels_last: bool = True, fold: bool = True, engine: str = "torch",
                 threads: int | None = None, precision: str = "float32", tops: dict | None = None):
        self.config = config
        self.weights = weights
        self.channels_last = channels_last
        self.fold = fold  # fold batch norms into convolutions where the network can
        self.engine = engine  # "onnx": ONNX Runtime runs the exported network; "torch": the module
        self.threads = threads  # ONNX Runtime's threads (None: every usable core)
        # "int8": the int8 graph (retrieval/encoders/int8.py) on ONNX Runtime, whatever the engine
        self.precision = precision
        # tuned weights of the last block and head convolution (retrieval/encoders/tops.py), by
        # name in the folded EfficientNet-Lite, replacing the pretrained ones
        self.tops = tops or None
        self._tops_memo: dict = {}

    @property
    def tops_id(self) -> str:
        from retrieval.encoders.tops import memo_label

        return memo_label(self.tops, self._tops_memo)

    @property
    def feature_id(self) -> str:
        """What its features depend on: the network, the input side (224 and 256 px differ) and
        folded batch norms (the same up to float rounding, which a bit-exact training hash
        still sees). Feature caches are keyed by it."""
        folded = self.fold and self.config.name.startswith("efficientnet-lite")
        ident = f"{self.config.name}@{self.config.image_size}" + ("-folded" if folded else "") + self.tops_id
        if self.precision != "int8":
            return ident
        from retrieval.encoders.int8 import ranges_digest

        return f"{ident}-int8-{ranges_digest(self.config.name, self.config.image_size)}"

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """Resize the shorter side to the input size and centre-crop: uint8 (S, S, 3)."""
        size = self.config.image_size
        return np.asarray(ImageOps.fit(image, (size, size), Image.BICUBIC), dtype=np.uint8)

    def load(self, path: str | os.PathLike, data: bytes | None = None) -> np.ndarray:
        """Open a photo safely (raises ImageError) and preprocess it; `data`: its bytes,
        already in memory (`path` then only names it)."""
        return self.preprocess(open_image(path, min_side=self.config.image_size, data=data))

    @cached_property
    def network(self):
        import torch

        net = build_network(self.config.name, self.weights).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        if self.fold and hasattr(net, "fold_batch_norms"):
            net.fold_batch_norms()
        if self.tops:
            from retrieval.encoders.tops import install

            install(net.net, self.tops, "image-network")
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net

    @cached_property
    def float_graph(self):
        """The network as a float32 ONNX Runtime graph (exported from the same weights on first use)."""
        from retrieval.encoders.networks import weights_file
        from retrieval.encoders.onnx_engine import Graph, file_identity, graph_path

        c = self.config
        source = Path(weights_file(c.name, self.weights))
        ident = f"{c.name}|{c.image_size}|fold={self.fold}|{file_identity(source)}{self.tops_id}"

        def build(path):
            from retrieval.encoders.onnx_export import export_image

            return export_image(self, path)

        return Graph(graph_path(c.name, ident), build, self.threads, f"the image network ({c.name})", source)

    @property
    def graph(self):
        """The graph ONNX Runtime runs at this precision."""
        return self.int8_graph if self.precision == "int8" else self.float_graph

    @cached_property
    def int8_graph(self):
        """The graph quantised from the float32 one with the shipped calibration (built once per
        machine, beside it)."""
        import onnxruntime

        from retrieval.encoders.int8 import build_int8, ranges_digest, shipped_ranges
        from retrieval.encoders.onnx_engine import Graph, graph_path

        c, fg = self.config, self.float_graph
        ranges = shipped_ranges(c.name, c.image_size)
        ident = f"int8|{fg.path.name}|{ranges_digest(c.name, c.image_size)}|{onnxruntime.__version__}"

        def build(path):
            return build_int8(fg.ensure(), ranges, path)

        return Graph(graph_path(f"{self.config.name}-int8", ident), build, self.threads,
                     f"the int8 image network ({self.config.name})", fg.source)

    def warm(self) -> None:
        """Load the engine now (outside a timed region; a missing graph is exported)."""
        _ = self.graph.session if self.runs_onnx else self.network

    @property
    def runs_onnx(self) -> bool:
        return self.engine == "onnx" or self.precision == "int8"

    def encode(self, pixels: Sequence[np.ndarray], batch_size: int = 4, normalize: bool = True,
               grid: bool = False) -> ImageFeatures:
        """Encode preprocessed photos (from `preprocess`/`load`) in batches; batch size 4 is
        fastest on 2 CPU cores. Results do not depend on the batch size beyond float noise.
        Grid cells (training only) always come from torch, in float32."""
        if self.runs_onnx and not grid:
            return self._encode_onnx(pixels, batch_size, normalize)
        import torch

        pooled, logits, grids, cells, mids = [], [], [], [], []
        with torch.inference_mode():
            for start in range(0, len(pixels), batch_size):
                x = self._to_tensor(pixels[start:start + batch_size])
                fmap, lg, mid = self.network(x)
                pooled.append(fmap.mean(dim=(2, 3)).float())
                mids.append(mid.mean(dim=(2, 3)).float())
                logits.append(lg.float())
                # the classifier on each cell finds objects too small to win the pooled logits
                cells.append(self.network.classifier(fmap.flatten(2).transpose(1, 2)).amax(1).float())
                if grid:
                    grids.append(fmap.flatten(2).transpose(1, 2).float().contiguous())
        d = self.config.feature_dim
        out_pooled = torch.cat(pooled).numpy() if pooled else np.zeros((0, d), np.float32)
        if normalize:
            out_pooled = _l2n(out_pooled)
        out_logits = torch.cat(logits).numpy() if logits else np.zeros((0, 1000), np.float32)
        out_cells = torch.cat(cells).numpy() if cells else np.zeros((0, 1000), np.float32)
        out_mid = torch.cat(mids).numpy() if mids else np.zeros((0, self.config.mid_dim), np.float32)
        out_grid = None
        if grid:
            cells = self.config.grid ** 2
            out_grid = torch.cat(grids).numpy() if grids else np.zeros((0, cells, d), np.float32)
        return ImageFeatures(out_pooled, out_logits, out_grid, out_cells, out_mid)

    def _encode_onnx(self, pixels: Sequence[np.ndarray], batch_size: int, normalize: bool) -> ImageFeatures:
        parts = [self.graph.run({"pixels": np.stack(pixels[i:i + batch_size])})
                 for i in range(0, len(pixels), batch_size)]
        if not parts:
            return concat_features([], self.config)
        pooled, logits, cells, mid = (np.concatenate(p) for p in zip(*parts))
        return ImageFeatures(_l2n(pooled) if normalize else pooled, logits, None, cells, mid)

    def encode_files(self, paths: Sequence, batch_size: int = 4, workers: int = 1,
                     normalize: bool = True, grid: bool = False, progress=None):
        """Decode files in `workers` threads while encoding in this one. Returns the features
        of the photos that opened, their positions in `paths`, and one ImageError per file
        that did not. `progress`, if given, is called with the number of files done."""
        from retrieval.encoders.images import load_many

        parts, kept, errors, chunk, chunk_pos = [], [], [], [], []

        def flush():
            if chunk:
                parts.append(self.encode(chunk, batch_size, normalize, grid))
                kept.extend(chunk_pos)
                if progress:
                    progress(len(chunk))
                chunk.clear(), chunk_pos.clear()

        for pos, (path, result) in enumerate(load_many(paths, self.load, workers)):
            if isinstance(result, Exception):
                errors.append(result)
                if progress:
                    progress(1)
                continue
            chunk.append(result), chunk_pos.append(pos)
            if len(chunk) >= 8 * batch_size:
                flush()
        flush()
        return concat_features(parts, self.config), kept, errors

    def _to_tensor(self, batch: Sequence[np.ndarray]):
        import torch

        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.config.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.config.std).view(1, 3, 1, 1)
        x = (x - mean) / std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def load_image_encoder(name: str = DEFAULT_IMAGE_ENCODER, weights: str | os.PathLike | None = None,
                       channels_last: bool = True, image_size: int | None = None,
                       fold: bool = True, engine: str = "torch", precision: str = "float32",
                       tops: dict | None = None) -> ImageEncoder:
    """The one factory for image encoders. `resnet50` needs `weights`, a torchvision state-dict
    file; EfficientNet-Lite0 uses the weights its package ships unless `weights` is given.
    `image_size`: the input side to feed it (None or 0: the size it was trained at). `engine`:
    "torch" (training: the bit-exact path its hash is reproduced on) or "onnx" (everything a
    user runs: the same vectors within float rounding, about twice as fast). `precision`:
    "float32", or "int8" (ONNX Runtime's int8 graph, where a calibration ships). `tops`: a
    checkpoint's tuned weights of the folded network's last block and head (EfficientNet-Lite)."""
    if name not in CONFIGS:
        raise WeightsError(f"unknown image encoder {name!r}; choose one of {', '.join(CONFIGS)}")
    config = CONFIGS[name]
    if image_size and image_size != config.image_size:
        lo, hi = SIZE_RANGE
        if not (lo <= image_size <= hi and image_size % 32 == 0):
            raise WeightsError(f"image size {image_size}: use a multiple of 32 from {lo} to {hi} px")
        config = replace(config, image_size=image_size, grid=image_size // 32)
    if name == "resnet50" and weights is None:
        raise WeightsError(
            "the resnet50 encoder needs its weights: pass a torchvision ResNet-50 state-dict file "
            "(e.g. --image-weights resnet50.pth); no weights are downloaded"
        )
    if weights is not None and not Path(weights).is_file():
        raise WeightsError(f"{weights}: weights file not found")
    if tops and not (name.startswith("efficientnet-lite") and fold):
        raise WeightsError(f"tuned tops are weights of the folded EfficientNet-Lite, not of {name}"
                           f"{'' if fold else ' unfolded'}; use a checkpoint trained without --tune-tops")
    enc = ImageEncoder(config, weights, channels_last, fold, engine, precision=precision, tops=tops)
    if precision == "int8":
        from retrieval.encoders.int8 import shipped_ranges

        shipped_ranges(name, config.image_size)  # none for this network and side: say so now, in one line
    return enc
