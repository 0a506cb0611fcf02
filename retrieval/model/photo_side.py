"""The photo side of a checkpoint in numpy: `image_fc` over the pooled (and mid-level)
features, the ImageNet-label bridge and the look-alike training photos, read straight from the
safetensors file. With ONNX Runtime running the image network, indexing and `fusion similar`
then never import torch (1.5 s, and a worker process's start); training and evaluation keep the
torch SharedSpace, and tests/test_query_side.py holds the two equal."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.encoders.minilm_numpy import gelu
from retrieval.model.config import ModelConfig
from retrieval.model.neighbours import Neighbours
from retrieval.model.query_side import config_of, l2n, read_checkpoint

EPS = 1e-5  # torch LayerNorm's default, as SharedSpace builds it


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + EPS) * w + b


@dataclass
class PhotoSide:
    config: ModelConfig
    norms: dict  # LayerNorm weights and biases: "pooled" and "mid" (SplitNorm), or "all"
    layers: list  # image_fc's linear layers, (weight, bias) each; GELU between two
    class_embeddings: np.ndarray  # (1000, d) the class-name vectors as stored (the bridge mixes them)
    neighbours: Neighbours | None

    @classmethod
    def load(cls, path: Path | None = None, read: tuple | None = None) -> "PhotoSide":
        """As QuerySide.load: from `path`, or from the file as read_checkpoint already read it."""
        path, meta, t = read or read_checkpoint(path, "numpy")
        config = config_of(meta)
        t = {k: v.astype(np.float32) for k, v in t.items() if k.startswith(("space.", "neighbours."))}
        fc = {k[len("space.image_fc."):]: v for k, v in t.items() if k.startswith("space.image_fc.")}
        if config.mid_dim:
            norms = {"pooled": (fc["0.pooled.weight"], fc["0.pooled.bias"]), "mid": (fc["0.mid.weight"], fc["0.mid.bias"])}
        else:
            norms = {"all": (fc["0.weight"], fc["0.bias"])}
        layers = [(fc["1.weight"], fc["1.bias"])] + ([(fc["3.weight"], fc["3.bias"])] if config.image_hidden else [])
        nb = Neighbours.from_tensors({k[len("neighbours."):]: v for k, v in t.items() if k.startswith("neighbours.")})
        return cls(config, norms, layers, t["space.class_embeddings"], nb)

    def labels(self, logits: np.ndarray, cells: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The bridge's ImageNet classes and softmax weights, (N, bridge_top) each, best first
        (SharedSpace.labels)."""
        c = self.config
        logits = np.asarray(logits, np.float32)
        if c.bridge_cells:
            logits = (logits + np.asarray(cells, np.float32)) / 2
        k = c.bridge_top
        part = np.argpartition(-logits, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(logits, part, 1), axis=1, kind="stable")
        idx = np.take_along_axis(part, order, 1)
        top = np.take_along_axis(logits, idx, 1) / c.bridge_temperature
        w = np.exp(top - top[:, :1])
        return idx, (w / w.sum(1, keepdims=True)).astype(np.float32)

    def embed_image(self, pooled, logits, cells=None, mid=None) -> np.ndarray:
        """The photos' ITC vectors (SharedSpace.embed_image)."""
        c = self.config
        x = np.asarray(pooled, np.float32)
        if c.mid_dim:
            if mid is None:
                raise ValueError("this model reads mid-level image features: pass mid")
            x = np.concatenate([layer_norm(x, *self.norms["pooled"]),
                                layer_norm(np.asarray(mid, np.float32), *self.norms["mid"])], -1)
        else:
            x = layer_norm(x, *self.norms["all"])
        for i, (w, b) in enumerate(self.layers):
            x = x @ w.T + b
            if i < len(self.layers) - 1:
                x = gelu(x)
        if not c.image_bridge:
            return l2n(x).astype(np.float32)
        idx, w = self.labels(logits, cells)
        bridge = l2n((w[:, :, None] * self.class_embeddings[idx]).sum(1))
        return l2n(bridge + x).astype(np.float32)
