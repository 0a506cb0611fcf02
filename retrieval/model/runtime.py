"""The model in use: the checkpoint plus its encoders, each loaded on first use (a text query
never loads the image network), and the fingerprint that libraries record."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from retrieval.model.checkpoint import Checkpoint, load_checkpoint


class Runtime:
    def __init__(self, checkpoint: Path | None = None, image_weights: Path | None = None):
        self.checkpoint_path = checkpoint
        self.image_weights = image_weights

    @cached_property
    def checkpoint(self) -> Checkpoint:
        return load_checkpoint(self.checkpoint_path)

    @property
    def fingerprint(self) -> str:
        c = self.checkpoint.config
        return f"{c.image_encoder}+{c.text_encoder}+{self.checkpoint.content_hash}"

    @property
    def dim(self) -> int:
        return self.checkpoint.config.text_dim

    @cached_property
    def image_encoder(self):
        from retrieval.encoders.image_encoder import load_image_encoder

        return load_image_encoder(self.checkpoint.config.image_encoder, self.image_weights)

    @cached_property
    def text_encoder(self):
        from retrieval.encoders.text_encoder import load_text_encoder

        return load_text_encoder(self.checkpoint.config.text_encoder)

    @property
    def needs_grid(self) -> bool:
        """Whether the shipped reranker reads grid cells (then the indexer stores them)."""
        return self.checkpoint.config.rerank == "cross-attention"

    def embed_images(self, pooled: np.ndarray, logits: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.checkpoint.space.embed_image(torch.from_numpy(pooled), torch.from_numpy(logits)).numpy()

    def rerank_features(self, feats) -> np.ndarray:
        """The shipped head's projection of photos' features: what the library stores."""
        import torch

        grid = None if feats.grid is None else torch.from_numpy(feats.grid)
        with torch.no_grad():
            return self.checkpoint.rerank_head.project_image(torch.from_numpy(feats.pooled), grid).numpy()

    def embed_texts(self, pooled: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.checkpoint.space.embed_text(torch.from_numpy(pooled)).numpy()
