"""Read → decode → preprocess in worker threads, overlapped with the forward pass in the
caller's thread; each stage timed."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.scan import FileStat
from retrieval.errors import ImageError
from retrieval.encoders.images import load_many, open_image


@dataclass
class Loaded:
    stat: FileStat
    sha: str  # content hash of the file's bytes
    pixels: np.ndarray | None  # preprocessed photo; None for a rename candidate (not decoded)
    info: dict = field(default_factory=dict)  # width, height, taken_at, camera


@dataclass
class Timing:
    decode_s: float = 0.0  # read + hash + decode + preprocess, summed over worker threads
    forward_s: float = 0.0  # image network + projection
    write_s: float = 0.0  # SQLite transactions + FAISS updates

    def as_dict(self) -> dict:
        return {k: round(v, 3) for k, v in self.__dict__.items()}


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except IsADirectoryError:
        raise ImageError(path, "is a directory, not a photo") from None
    except OSError as e:
        raise ImageError(path, e.strerror or str(e)) from None


def loaded_photos(stats: list[FileStat], encoder, rename_shas: set, timing: Timing, workers: int = 1):
    """Yield (stat, Loaded or ImageError) in order. A file whose content hash is in
    `rename_shas` (a photo that vanished elsewhere under the roots) is not decoded."""

    def load(stat: FileStat) -> Loaded:
        start = time.perf_counter()
        try:
            data = read_bytes(stat.path)
            sha = content_hash(data)
            if sha in rename_shas:
                return Loaded(stat, sha, None)
            info: dict = {}
            image = open_image(stat.path, encoder.config.image_size, data=data, info=info)
            return Loaded(stat, sha, encoder.preprocess(image), info)
        finally:
            timing.decode_s += time.perf_counter() - start

    return load_many(stats, load, workers=workers)


def encode_batch(items: list[Loaded], runtime, timing: Timing, batch_size: int = 4):
    """Rerank features, search vectors and near-duplicate signatures of decoded photos."""
    start = time.perf_counter()
    feats = runtime.image_encoder.encode([it.pixels for it in items], batch_size, normalize=False)
    rows = runtime.index_features(feats)
    timing.forward_s += time.perf_counter() - start
    return rows
