"""Encode a set of photo files end to end (read, decode, preprocess, forward) and report."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from retrieval.errors import ImageError
from retrieval.encoders.image_encoder import ImageFeatures, load_image_encoder, run_size
from retrieval.encoders.images import is_photo_name


def find_photos(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Photo files named directly or found recursively under folders, sorted, without
    following symlinked folders; files with other suffixes are left alone."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            for root, _dirs, files in os.walk(p):
                found.update(Path(root) / f for f in files if is_photo_name(f))
        else:
            found.add(p)  # named explicitly: let decoding say what is wrong with it
    return sorted(found)


@dataclass
class EncodeReport:
    paths: list[Path]  # the photos that were encoded, in order
    features: ImageFeatures
    errors: list[ImageError]
    seconds: float  # wall time of read + decode + preprocess + forward

    def summary(self) -> dict:
        n = len(self.paths)
        return {
            "encoded": n,
            "skipped": len(self.errors),
            "dim": int(self.features.pooled.shape[1]),
            "seconds": round(self.seconds, 3),
            "photos_per_s": round(n / self.seconds, 2) if self.seconds > 0 else 0.0,
            "errors": [{"path": e.path, "reason": e.reason} for e in self.errors],
        }

    def top_labels(self, k: int, classes: list[str]):
        order = np.argsort(-self.features.logits, axis=1)[:, :k]
        for path, row in zip(self.paths, order):
            yield path, [classes[j] for j in row]


def encode_photos(files: list[Path], encoder_name: str = "efficientnet-lite0", weights=None,
                  batch_size: int = 4, workers: int = 1, progress=None,
                  image_size: int | None = None, engine: str = "onnx") -> EncodeReport:
    """Encode `files` (at `image_size`, default the size the shipped model feeds the encoder),
    skipping (and reporting) those that are not readable photos."""
    encoder = load_image_encoder(encoder_name, weights, image_size=image_size or run_size(encoder_name),
                                 engine=engine)
    encoder.warm()  # load outside the timed region
    start = time.perf_counter()
    feats, kept, errors = encoder.encode_files(files, batch_size, workers, progress=progress)
    seconds = time.perf_counter() - start
    return EncodeReport([files[i] for i in kept], feats, errors, seconds)
