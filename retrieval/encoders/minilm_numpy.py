"""What the numpy query side and the torch MiniLM share: the exact GELU (the reranker's
activation, run in numpy by retrieval/model/query_side.py) and transformers' BertModel weight
names mapped to ours. (The hand-written numpy MiniLM that lived here is gone: queries run the
same network on ONNX Runtime, retrieval/encoders/onnx_engine.py.)"""

from __future__ import annotations

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
