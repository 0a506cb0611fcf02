"""Read → decode → preprocess in worker threads, overlapped with the forward pass in the
caller's thread; each stage timed. `photo_stream` is what the writer consumes, in-process here
and on Ray Data workers in indexer/on_ray.py."""

from __future__ import annotations

import hashlib
import pickle
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
class Encoded:
    """Photos ready for the writer: per photo its rerank evidence, search vector, signature."""
    items: list[Loaded]  # pixels dropped once encoded
    rerank: list[bytes]
    vectors: np.ndarray
    signatures: list[bytes]


@dataclass
class Timing:
    decode_s: float = 0.0  # read + hash + decode + preprocess, summed over worker threads
    forward_s: float = 0.0  # image network + projection and evidence
    network_s: float = 0.0  # the image network alone (part of forward_s)
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
    timing.network_s += time.perf_counter() - start
    rows = runtime.index_features(feats)
    timing.forward_s += time.perf_counter() - start
    return rows


def photo_stream(stats: list[FileStat], runtime, rename_shas: set, timing: Timing, workers: int = 1,
                 batch_size: int = 4, write_batch: int = 32):
    """Yield, in input order, an ImageError per skipped file, a Loaded without pixels per
    rename candidate, and an Encoded per `write_batch` decoded photos."""
    pending: list[Loaded] = []

    def encoded() -> Encoded:
        rerank, vectors, signatures = encode_batch(pending, runtime, timing, batch_size)
        items = [Loaded(it.stat, it.sha, None, it.info) for it in pending]
        pending.clear()
        return Encoded(items, rerank, vectors, signatures)

    for _stat, result in loaded_photos(stats, runtime.image_encoder, rename_shas, timing, workers):
        if isinstance(result, Exception) or result.pixels is None:
            yield result
            continue
        pending.append(result)
        if len(pending) >= write_batch:
            yield encoded()
    if pending:
        yield encoded()


class PhotoEncoder:
    """A worker's encoder (a Ray Data actor, or a process of indexer/processes.py): the model
    loaded once, then a task of files at a time, returning its pickled photo_stream events."""

    def __init__(self, checkpoint, image_weights, rename_shas: set, threads: int, batch_size: int,
                 precision: str | None = None):
        from retrieval.model.runtime import Runtime

        self.runtime = Runtime(checkpoint, image_weights, image_precision=precision)
        if self.runtime.engine == "torch":  # ONNX Runtime's workers never import torch
            import torch

            torch.set_num_threads(threads)
        self.runtime.image_encoder.threads = threads
        self.runtime.image_encoder.warm()
        self.fingerprint = self.runtime.fingerprint
        self.rename_shas, self.batch_size = rename_shas, batch_size

    def __call__(self, batch: dict) -> dict:
        stats = [FileStat(str(path), int(size), int(mtime))
                 for path, size, mtime in zip(batch["path"], batch["size"], batch["mtime_ns"])]
        timing = Timing()
        events = list(photo_stream(stats, self.runtime, self.rename_shas, timing, 1, self.batch_size, len(stats)))
        return {"events": [pickle.dumps(events, protocol=5)], "fingerprint": [self.fingerprint],
                "decode_s": [timing.decode_s], "forward_s": [timing.forward_s], "network_s": [timing.network_s]}
