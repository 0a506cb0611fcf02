"""The MiniLM forward pass in numpy, for the few texts of a query: a search then never imports
torch (1.5 s of a cold `fusion search`). The same weights as retrieval/encoders/minilm.py
(which batches of captions use), read from the same safetensors file; tests/test_minilm.py
holds the two equal to float rounding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU as torch's nn.GELU(); erf by Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7,
    so the GELU is off by under |x| * 1e-7), in float64."""
    dtype, x = x.dtype, x.astype(np.float64)
    z = np.abs(x) / np.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = np.sign(x) * (1.0 - poly * np.exp(-z * z))
    return (0.5 * x * (1.0 + erf)).astype(dtype)


def rename(state: dict) -> dict:
    """transformers' BertModel names -> ours (the pooler and position_ids are not used)."""
    table = {"embeddings.word_embeddings.": "word.", "embeddings.position_embeddings.": "position.",
             "embeddings.token_type_embeddings.": "token_type.", "embeddings.LayerNorm.": "norm.",
             "attention.self.query.": "query.", "attention.self.key.": "key.", "attention.self.value.": "value.",
             "attention.output.dense.": "attn_out.", "attention.output.LayerNorm.": "attn_norm.",
             "intermediate.dense.": "inner.", "output.dense.": "out.", "output.LayerNorm.": "out_norm.",
             "encoder.layer.": "layers."}
    out = {}
    for name, tensor in state.items():
        if name.startswith("pooler.") or name.endswith("position_ids"):
            continue
        for old, new in table.items():
            name = name.replace(old, new)
        out[name] = tensor
    return out


class MiniLMNumpy:
    """BERT encoder: token ids (B, N) + attention mask (B, N) in, last hidden states out."""

    def __init__(self, config: dict, weights: dict):
        self.w = {k: np.asarray(v, np.float32) for k, v in weights.items()}
        self.heads, self.eps = config["num_attention_heads"], config["layer_norm_eps"]
        self.layers = config["num_hidden_layers"]

    @classmethod
    def load(cls, folder: Path) -> "MiniLMNumpy":
        from safetensors.numpy import load_file

        return cls(json.loads((folder / "config.json").read_text()), rename(load_file(str(folder / "model.safetensors"))))

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.eps) * self.w[name + ".weight"] + self.w[name + ".bias"]

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        w = self.w
        b, n = ids.shape
        x = self._norm(w["word.weight"][ids] + w["position.weight"][:n][None] + w["token_type.weight"][0], "norm")
        d = x.shape[-1]
        h, dh = self.heads, d // self.heads
        blocked = np.where(mask.astype(bool), 0.0, -np.inf)[:, None, None, :].astype(np.float32)
        for i in range(self.layers):
            p = f"layers.{i}."

            def split(t):
                return t.reshape(b, n, h, dh).transpose(0, 2, 1, 3)

            q, k, v = (split(self._linear(x, p + name)) for name in ("query", "key", "value"))
            att = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh) + blocked
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            a = (att @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
            x = self._norm(x + self._linear(a, p + "attn_out"), p + "attn_norm")
            x = self._norm(x + self._linear(gelu(self._linear(x, p + "inner")), p + "out"), p + "out_norm")
        return x
