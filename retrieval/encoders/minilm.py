"""A plain-torch BERT encoder (the architecture of transformers' BertModel, without its pooler)
that reads the MiniLM weights straight from their safetensors file.

Why: `import transformers` costs 2.3 s on our 2-core machines (it pulls in torch.distributed,
dynamo and scipy), more than everything else a `fusion search` does. The forward pass here is
tested to match transformers' BertModel on the same weights (tests/test_minilm.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.encoders.minilm_numpy import rename


class _Layer(nn.Module):
    def __init__(self, d: int, heads: int, inner: int, eps: float):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.attn_out, self.attn_norm = nn.Linear(d, d), nn.LayerNorm(d, eps=eps)
        self.inner, self.out, self.out_norm = nn.Linear(d, inner), nn.Linear(inner, d), nn.LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t):
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        a = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)),
                                           attn_mask=keep)
        x = self.attn_norm(x + self.attn_out(a.transpose(1, 2).reshape(b, n, d)))
        return self.out_norm(x + self.out(F.gelu(self.inner(x))))


class MiniLM(nn.Module):
    """BERT encoder: token ids + attention mask in, last hidden states out."""

    def __init__(self, config: dict):
        super().__init__()
        d, eps = config["hidden_size"], config["layer_norm_eps"]
        self.word = nn.Embedding(config["vocab_size"], d)
        self.position = nn.Embedding(config["max_position_embeddings"], d)
        self.token_type = nn.Embedding(config["type_vocab_size"], d)
        self.norm = nn.LayerNorm(d, eps=eps)
        self.layers = nn.ModuleList(
            _Layer(d, config["num_attention_heads"], config["intermediate_size"], eps)
            for _ in range(config["num_hidden_layers"]))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        pos = torch.arange(n, device=input_ids.device)
        x = self.norm(self.word(input_ids) + self.position(pos)[None] + self.token_type.weight[0])
        keep = attention_mask.bool()[:, None, None, :]  # (b, 1, 1, n): attend to real tokens only
        for layer in self.layers:
            x = layer(x, keep)
        return x

    @classmethod
    def load(cls, folder: Path) -> "MiniLM":
        from safetensors.torch import load_file

        model = cls(json.loads((folder / "config.json").read_text()))
        model.load_state_dict(rename(load_file(str(folder / "model.safetensors"))))
        return model.eval()
