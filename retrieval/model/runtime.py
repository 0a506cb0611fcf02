"""The model in use: the checkpoint plus its encoders, each loaded on first use (a text query
never loads the image network, nor torch: MiniLM runs on ONNX Runtime and the checkpoint's
query side in numpy), and the fingerprint that libraries record."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retrieval.model.config import ModelConfig
from retrieval.model.query_side import QuerySide

if TYPE_CHECKING:
    from retrieval.model.checkpoint import Checkpoint


class Runtime:
    def __init__(self, checkpoint: Path | None = None, image_weights: Path | None = None,
                 engine: str | None = None, image_precision: str | None = None):
        from retrieval.encoders.onnx_engine import default_engine

        self.checkpoint_path = checkpoint
        self.image_weights = image_weights
        # the encoders' engine: ONNX Runtime unless FUSION_ENGINE=torch. Both give the same
        # vectors within float rounding (cosine >= 0.9999, tests/test_onnx.py), so a library's
        # fingerprint does not name the engine and either searches the other's library.
        self.engine = engine or default_engine()
        # the image network's precision (None: FUSION_IMAGE_PRECISION, else int8 where its
        # calibration ships): int8 vectors are not float32's, so an int8 library's fingerprint
        # names the calibration, and a library is always encoded at the precision it was made with
        self._precision = image_precision

    @property
    def _image_side(self) -> int:
        c = self.config
        if c.image_size:
            return c.image_size
        from retrieval.encoders.image_config import CONFIGS  # checkpoints that predate the record

        return CONFIGS[c.image_encoder].image_size if c.image_encoder in CONFIGS else 0

    @cached_property
    def image_precision(self) -> str:
        from retrieval.encoders.int8 import PRECISIONS, default_precision

        if self._precision is not None:
            if self._precision not in PRECISIONS:
                from retrieval.errors import WeightsError

                raise WeightsError(f"image precision {self._precision!r}: use one of {', '.join(PRECISIONS)}")
            return self._precision
        return default_precision(self.config.image_encoder, self._image_side, self.image_weights, self.engine)

    @cached_property
    def checkpoint(self) -> "Checkpoint":
        """The torch modules (photos, training); a text search needs only `query`."""
        from retrieval.model.checkpoint import load_checkpoint

        return load_checkpoint(self.checkpoint_path)

    @cached_property
    def checkpoint_file(self) -> tuple:
        """(path, metadata, tensors) of the checkpoint, read and checked once in numpy: the query
        side and the photo side both come from it."""
        from retrieval.model.query_side import read_checkpoint

        return read_checkpoint(self.checkpoint_path, "numpy")

    @cached_property
    def query(self) -> QuerySide:
        """The checkpoint's query side in numpy: text_fc, class names, the reranker."""
        return QuerySide.load(self.checkpoint_path, read=self.checkpoint_file)

    @cached_property
    def tops(self) -> dict:
        """The encoders' tuned tops the checkpoint carries (none: the pretrained networks)."""
        from retrieval.model.query_side import tops_of

        return tops_of(self.checkpoint_file[2])

    @property
    def config(self) -> ModelConfig:
        return self.query.config

    @property
    def fingerprint(self) -> str:
        c = self.config
        memory = f"+memory-{c.memory_digest}" if c.memory_digest else ""
        int8 = ""
        if self.image_precision == "int8":
            from retrieval.encoders.int8 import ranges_digest

            int8 = f"+int8-{ranges_digest(c.image_encoder, self._image_side)}"
        return f"{c.image_encoder}+{c.text_encoder}+{self.query.content_hash}{memory}{int8}"

    @property
    def dim(self) -> int:
        return self.config.text_dim

    @cached_property
    def image_encoder(self):
        from retrieval.encoders.image_encoder import load_image_encoder

        return load_image_encoder(self.config.image_encoder, self.image_weights,
                                  image_size=self.config.image_size, engine=self.engine,
                                  precision=self.image_precision, tops=self.tops.get("image"))

    @cached_property
    def text_encoder(self):
        from retrieval.encoders.text_encoder import load_text_encoder

        return load_text_encoder(self.config.text_encoder, self.engine, tops=self.tops.get("text"))

    @cached_property
    def memory(self):
        """The caption memory the checkpoint was trained with (None when it uses none)."""
        from retrieval.errors import CheckpointError
        from retrieval.model.memory import load_memory

        cfg = self.config
        if not cfg.memory_digest:
            return None
        memory = load_memory(self.text_encoder)
        if memory.digest != cfg.memory_digest:
            raise CheckpointError(f"{self.query.path}: trained with caption memory {cfg.memory_digest}, "
                                  f"but the installed one is {memory.digest}; retrain with fusion train")
        return memory

    @cached_property
    def embedder(self):
        from retrieval.model.embedder import Embedder

        photo_side = None
        if self.engine == "onnx":  # the whole photo path without torch: the heads in numpy too
            from retrieval.model.photo_side import PhotoSide

            photo_side = lambda: PhotoSide.load(self.checkpoint_path, read=self.checkpoint_file)  # noqa: E731
        return Embedder(lambda: self.checkpoint.space, self.memory, query=self.query, photo_side=photo_side)

    def photo_vectors(self, feats):
        """Search vectors, plain ITC vectors and rerank evidence of encoded photos."""
        return self.embedder.photos(feats)

    def index_features(self, feats) -> tuple[list[bytes], np.ndarray, list[bytes]]:
        """What the library stores per encoded photo: the reranker's evidence blob, the
        search vector FAISS holds and the near-duplicate signature."""
        from retrieval.encoders import signature

        pv = self.photo_vectors(feats)
        return pv.evidence.pack(), pv.search, signature.pack(signature.signatures(feats.pooled))

    @staticmethod
    def precision_of(fingerprint: str) -> str:
        """The image precision a library with this recorded fingerprint is encoded at."""
        return "int8" if "+int8-" in fingerprint else "float32"

    @staticmethod
    def library_precision(fingerprint: str | None) -> str | None:
        """The precision of the library whose recorded fingerprint this is (recorded_model),
        unless FUSION_IMAGE_PRECISION asks for one (a plain index then refuses the library,
        --rebuild encodes it again); None for a new library (the default)."""
        import os

        if fingerprint is None or os.environ.get("FUSION_IMAGE_PRECISION"):
            return None
        return Runtime.precision_of(fingerprint)

    def embed_texts(self, pooled: np.ndarray) -> np.ndarray:
        """ITC vectors of raw MiniLM pooled vectors (numpy: a search never imports torch)."""
        return self.query.embed_text(pooled)
