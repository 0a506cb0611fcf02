"""Frozen-encoder features of a whole dataset, cached on disk so training and benchmarks
encode each photo and caption once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.data.cache import cache_key, dataset_fingerprint, default_cache_dir
from retrieval.data.datasets import Dataset
from retrieval.errors import DatasetError

MAX_TOKENS = 48  # token states kept per caption for cross-attention (COCO captions are ~14)


@dataclass
class DatasetFeatures:
    pooled: np.ndarray  # (N, image_dim) float32 raw pooled image features
    logits: np.ndarray  # (N, 1000) float32 ImageNet logits
    grid: np.ndarray  # (N, cells, image_dim) float16 grid cells
    text: np.ndarray  # (M, text_dim) float32 raw mean-pooled caption vectors
    tokens: np.ndarray  # (M, MAX_TOKENS, text_dim) float16 token states
    mask: np.ndarray  # (M, MAX_TOKENS) bool
    caption_image: np.ndarray  # (M,) int64 index of each caption's photo, -1 for text-only
    cells: np.ndarray  # (N, 1000) float32 max over grid cells of the per-cell ImageNet logits
    mid: np.ndarray  # (N, mid_dim) float32 pooled mid-level features (image_encoder.ImageFeatures)
    fragments: np.ndarray | None = None  # (M, F, text_dim) float16 caption fragments' vectors (fragments.py)

    def subset(self, images: np.ndarray) -> "DatasetFeatures":
        """The photos at `images` (indices) and only their captions, re-indexed."""
        remap = np.full(len(self.pooled), -1, np.int64)
        remap[images] = np.arange(len(images))
        keep = np.flatnonzero(np.isin(self.caption_image, images))
        return DatasetFeatures(self.pooled[images], self.logits[images], self.grid[images],
                               self.text[keep], self.tokens[keep], self.mask[keep],
                               remap[self.caption_image[keep]], self.cells[images], self.mid[images],
                               None if self.fragments is None else self.fragments[keep])

    def without_cells_and_tokens(self) -> "DatasetFeatures":
        """The same photos and captions without grid cells and token states (only the fusion-head
        baselines read them: 2.5 GB of Flickr8k's 2.6), in arrays of their own, not views that
        would keep the big ones alive."""
        n, m = len(self.pooled), len(self.text)
        return DatasetFeatures(self.pooled, self.logits, np.zeros((n, 0) + self.grid.shape[2:], self.grid.dtype),
                               self.text, np.zeros((m, 0) + self.tokens.shape[2:], self.tokens.dtype),
                               np.zeros((m, 0), bool), self.caption_image, self.cells, self.mid, self.fragments)

    @staticmethod
    def concat(parts: list["DatasetFeatures"]) -> "DatasetFeatures":
        offsets = np.cumsum([0] + [len(p.pooled) for p in parts[:-1]])
        cap = [np.where(p.caption_image >= 0, p.caption_image + o, -1) for p, o in zip(parts, offsets)]
        have = [p.fragments for p in parts if p.fragments is not None]
        frags = None
        if have:  # a part without fragments (pseudo-captions) has each caption as its own fragments
            frags = np.concatenate([p.fragments if p.fragments is not None else np.repeat(
                p.text[:, None].astype(have[0].dtype), have[0].shape[1], 1) for p in parts])
        return DatasetFeatures(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                                 ("pooled", "logits", "grid", "text", "tokens", "mask")),
                               np.concatenate(cap), *(np.concatenate([getattr(p, f) for p in parts])
                                                      for f in ("cells", "mid")), frags)


def _cache_key(ds: Dataset, image_name: str, text_name: str) -> str:
    ident = [dataset_fingerprint(ds.root, ds.source, ds.images), image_name, text_name,
             MAX_TOKENS, len(ds.images), len(ds.captions), "cells", "mid"]
    return cache_key(ident)


def dataset_features(ds: Dataset, image_encoder, text_encoder, cache_dir: Path | None = None,
                     progress: bool = True) -> DatasetFeatures:
    """Encode every photo and caption of `ds` (or read them from the cache)."""
    cache_dir = cache_dir or default_cache_dir()
    key = _cache_key(ds, image_encoder.feature_id, text_encoder.feature_id)
    path = cache_dir / f"{ds.root.name}-{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            return DatasetFeatures(**{k: z[k] for k in z.files})
    feats = _encode(ds, image_encoder, text_encoder, progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **{k: v for k, v in feats.__dict__.items() if v is not None})
    os.replace(tmp, path)  # never leave a half-written cache behind
    return feats


def _encode(ds: Dataset, image_encoder, text_encoder, progress: bool) -> DatasetFeatures:
    from tqdm import tqdm

    paths = [ds.image_path(i) for i in range(len(ds.images))]
    with tqdm(total=len(paths), desc=f"photos {ds.root.name}", unit="photo", disable=not progress) as bar:
        f, kept, errors = image_encoder.encode_files(paths, normalize=False, grid=True, progress=bar.update)
    if errors:
        raise DatasetError(f"{ds.source}: {len(errors)} photos could not be read, first: {errors[0]}")
    texts = [c.text for c in ds.captions]
    text_pooled, tokens, mask = [], [], []
    step = 512
    for start in tqdm(range(0, len(texts), step), desc=f"captions {ds.root.name}", unit="batch",
                      disable=not progress):
        t = text_encoder.encode(texts[start:start + step], normalize=False, tokens=True)
        text_pooled.append(t.pooled)
        tokens.append(_fit_tokens(t.tokens).astype(np.float16))
        mask.append(_fit_tokens(t.mask))
    caption_image = np.array([-1 if c.image is None else c.image for c in ds.captions], np.int64)
    return DatasetFeatures(f.pooled, f.logits, f.grid.astype(np.float16), np.concatenate(text_pooled),
                           np.concatenate(tokens), np.concatenate(mask), caption_image, f.cells, f.mid)


@dataclass
class Photos:
    """Frozen features of photos without captions (distractors): what the image tower
    gives (image_encoder.ImageFeatures without the grid)."""
    pooled: np.ndarray
    logits: np.ndarray
    cells: np.ndarray
    mid: np.ndarray

    def __len__(self) -> int:
        return len(self.pooled)

    def take(self, idx) -> "Photos":
        return Photos(*(getattr(self, k)[idx] for k in PHOTO_FIELDS))

    @staticmethod
    def of(f) -> "Photos":
        """The photo features of anything that has them (DatasetFeatures, ImageFeatures)."""
        return Photos(*(getattr(f, k) for k in PHOTO_FIELDS))

    @staticmethod
    def concat(*parts: "Photos") -> "Photos":
        return Photos(*(np.concatenate([getattr(p, k) for p in parts]) for k in PHOTO_FIELDS))


PHOTO_FIELDS = ("pooled", "logits", "cells", "mid")


def _fit_tokens(a: np.ndarray) -> np.ndarray:
    out = np.zeros((a.shape[0], MAX_TOKENS) + a.shape[2:], a.dtype)
    n = min(MAX_TOKENS, a.shape[1])
    out[:, :n] = a[:, :n]
    return out


def folder_features(folder: Path, image_encoder, cache_dir: Path | None = None, progress: bool = True):
    """Pooled features, logits and per-cell-max logits of every photo under `folder`
    (uncaptioned distractors), cached like dataset features. Unreadable files are skipped."""
    from retrieval.encoders.encode import find_photos

    paths = find_photos([folder])
    if not paths:
        raise DatasetError(f"{folder}: no photos found")
    ident = [dataset_fingerprint(folder, None, [str(p.relative_to(folder)) for p in paths]),
             image_encoder.feature_id, "cells", "mid"]
    key = cache_key(ident)
    path = (cache_dir or default_cache_dir()) / f"{Path(folder).name}-photos-{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            return Photos(z["pooled"], z["logits"], z["cells"], z["mid"])
    from tqdm import tqdm

    with tqdm(total=len(paths), desc=f"photos {Path(folder).name}", unit="photo", disable=not progress) as bar:
        f, _, _ = image_encoder.encode_files(paths, normalize=False, progress=bar.update)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, pooled=f.pooled, logits=f.logits, cells=f.cells, mid=f.mid)
    os.replace(tmp, path)
    return Photos.of(f)
