"""The encoders' networks exported to ONNX graphs from the same torch weights (torch is needed
here, once per machine and model; ONNX Runtime runs the graphs: retrieval/encoders/onnx_engine.py).

The image graph takes the preprocessed photos as they come from `ImageEncoder.preprocess`
(uint8, batch x side x side x 3) and does the scaling and normalisation itself, then returns
what `ImageEncoder.encode` reads from one pass: the pooled last feature map, the ImageNet
logits, the max over cells of each cell's logits and the pooled mid-level map. The text graph
takes token ids and their attention mask and returns the mask-averaged last hidden states
(MiniLM's sentence vector, before normalisation)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

OPSET = 17
IMAGE_OUTPUTS = ("pooled", "logits", "cells", "mid")


class ImageGraph(nn.Module):
    def __init__(self, network: nn.Module, mean, std):
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

    def forward(self, pixels):
        x = (pixels.permute(0, 3, 1, 2).float() - self.mean) / self.std
        fmap, logits, mid = self.network(x)
        cells = self.network.classifier(fmap.flatten(2).transpose(1, 2)).amax(1)
        return fmap.mean(dim=(2, 3)), logits, cells, mid.mean(dim=(2, 3))


class TextGraph(nn.Module):
    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, input_ids, attention_mask):
        hidden = self.network(input_ids, attention_mask)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _save(module: nn.Module, args: tuple, path: Path, inputs: list, outputs: list, axes: dict) -> Path:
    """Export to a temporary file beside `path`, then rename: a reader (another process building
    the same graph) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(module.eval(), args, str(tmp), input_names=inputs, output_names=outputs,
                              dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_image(encoder, path: Path) -> Path:
    """The image graph of `encoder` (an ImageEncoder: its network with folded batch norms when
    it folds them, at its input side)."""
    import warnings

    net = encoder.network.to(memory_format=torch.contiguous_format)
    try:
        side = encoder.config.image_size
        x = torch.zeros(2, side, side, 3, dtype=torch.uint8)
        axes = {"pixels": {0: "batch"}, **{name: {0: "batch"} for name in IMAGE_OUTPUTS}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _save(ImageGraph(net, encoder.config.mean, encoder.config.std), (x,), path, ["pixels"],
                         list(IMAGE_OUTPUTS), axes)
    finally:
        if encoder.channels_last:
            encoder.network.to(memory_format=torch.channels_last)


def export_text(encoder, path: Path) -> Path:
    """The text graph of `encoder` (a TextEncoder): ids and mask in, the mean-pooled states out."""
    import warnings

    ids = torch.tensor([[101, 2023, 2003, 102, 0], [101, 1037, 3899, 2006, 102]], dtype=torch.long)
    mask = (ids != 0).long()
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
            "pooled": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _save(TextGraph(encoder.network), (ids, mask), path, ["input_ids", "attention_mask"], ["pooled"],
                     axes)


CHECK_TEXTS = ("a dog runs on the beach", "two zebras grazing in a field", "ünïcödé café", "word " * 300)


def _cosine(a, b):
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return float((a * b).sum(1).min())


def check_int8(image_encoder, pixels=None) -> dict:
    """The smallest cosine between the int8 graph's outputs and the float32 graph's, per output
    (on `pixels`, default the synthetic photos of check_graphs)."""
    pixels = pixels or _synthetic(image_encoder.config.image_size)
    feeds = {"pixels": np.stack(pixels)}
    got, want = image_encoder.int8_graph.run(feeds), image_encoder.float_graph.run(feeds)
    return {name: _cosine(g, w) for name, g, w in zip(IMAGE_OUTPUTS, got, want)}


def _synthetic(side: int) -> list:
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    rng = np.random.default_rng(0)
    return [np.clip(np.stack([ramp[None, :] * a + ramp[:, None] * (1 - a), ramp[::-1][None, :]
                              * np.ones((side, 1)), rng.uniform(0, 255, (side, side))], -1), 0, 255)
            .astype(np.uint8) for a in (0.0, 0.3, 0.7, 1.0)]


def check_graphs(image_encoder, text_encoder, pixels=None) -> dict:
    """The smallest cosine between ONNX Runtime's and torch's outputs, per output: on `pixels`
    (preprocessed photos; default: four synthetic ones) and a few captions (one truncated)."""
    pixels = pixels or _synthetic(image_encoder.config.image_size)
    saved = image_encoder.engine, text_encoder.engine, image_encoder.precision
    try:
        image_encoder.precision = "float32"  # the float32 graph against torch
        image_encoder.engine, text_encoder.engine = "torch", "torch"
        want_i, want_t = image_encoder.encode(pixels, normalize=False), text_encoder.encode(CHECK_TEXTS, normalize=False)
        image_encoder.engine, text_encoder.engine = "onnx", "onnx"
        got_i, got_t = image_encoder.encode(pixels, normalize=False), text_encoder.encode(CHECK_TEXTS, normalize=False)
    finally:
        image_encoder.engine, text_encoder.engine, image_encoder.precision = saved
    out = {name: _cosine(getattr(got_i, name), getattr(want_i, name)) for name in IMAGE_OUTPUTS}
    out["text"] = _cosine(got_t.pooled, want_t.pooled)
    return out
