"""Caption memory: a corpus of human captions shipped with the model (MS-COCO 2017 val, CC BY
4.0; see memory/ATTRIBUTION.md). Each photo recalls its nearest captions by ITC; their
sentence vectors move the photo's search vector towards words people use for such photos,
and the reranker compares a query with them sentence to sentence, which MiniLM does far
better than it matches class names.

The corpus leaves out every caption of the COCO photos the project trains and benchmarks on
(../shared/data coco/ and coco-extra/, the demo among them), so no evaluated photo can recall
its own captions. Its MiniLM vectors are computed once per machine and cached."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from retrieval.data.cache import memory_cache_dir

CORPUS = "memory/coco-captions.tsv"  # coco_id <TAB> caption_id <TAB> caption, one a line


def corpus_path() -> Path:
    return Path(str(resources.files("retrieval.model").joinpath(CORPUS)))


def corpus_digest(path: Path | None = None) -> str:
    """Content hash of the corpus file: part of the model's fingerprint."""
    return hashlib.sha256((path or corpus_path()).read_bytes()).hexdigest()[:16]


def read_corpus(path: Path | None = None) -> list[str]:
    with open(path or corpus_path(), encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t", 2)[2] for line in f if line.strip()]


@dataclass
class CaptionMemory:
    texts: list[str]  # the corpus captions, in file order
    vectors: np.ndarray  # (N, text_dim) float32 L2-normalised MiniLM sentence vectors
    digest: str  # corpus content hash

    def recall(self, photos: np.ndarray, corpus_itc: np.ndarray, m: int, tau: float,
               offset: np.ndarray | None = None):
        """Each photo's m nearest captions by ITC cosine (photos and corpus_itc L2-normalised)
        plus `offset` (one number per caption, if given), with softmax(score / tau) weights:
        (ids (N, m) int32, weights (N, m) float32), best first."""
        ids = np.zeros((len(photos), m), np.int32)
        weights = np.zeros((len(photos), m), np.float32)
        for s in range(0, len(photos), 256):
            sim = photos[s:s + 256] @ corpus_itc.T
            if offset is not None:
                sim += offset
            top = np.argpartition(-sim, m - 1, axis=1)[:, :m]
            score = np.take_along_axis(sim, top, 1)
            order = np.argsort(-score, axis=1, kind="stable")
            top, score = np.take_along_axis(top, order, 1), np.take_along_axis(score, order, 1)
            w = np.exp((score - score[:, :1]) / tau)
            ids[s:s + 256], weights[s:s + 256] = top, w / w.sum(1, keepdims=True)
        return ids, weights


def _cache_file(text_encoder, cache_dir: Path | None, digest: str) -> Path:
    return (cache_dir or memory_cache_dir()) / f"{digest}-{text_encoder.feature_id}.npy"


def memory_cached(text_encoder, cache_dir: Path | None = None) -> bool:
    """Whether this machine holds the shipped corpus's sentence vectors already."""
    return _cache_file(text_encoder, cache_dir, corpus_digest(corpus_path())).is_file()


def load_memory(text_encoder, cache_dir: Path | None = None, progress: bool = True) -> CaptionMemory:
    """The shipped corpus with its sentence vectors, encoded on first use (about a minute on
    two cores) and cached as float16 under the feature cache."""
    path = corpus_path()
    digest = corpus_digest(path)
    texts = read_corpus(path)
    cache = _cache_file(text_encoder, cache_dir, digest)
    if cache.is_file():
        vectors = np.load(cache).astype(np.float32)
        if vectors.shape == (len(texts), text_encoder.config.dim):
            return CaptionMemory(texts, vectors, digest)
    vectors = _encode(texts, text_encoder, progress)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, vectors.astype(np.float16))
        os.replace(tmp, cache)
    except OSError as e:  # a read-only or full cache costs a re-encode next time, nothing more
        if progress:
            import sys

            print(f"note: caption memory not cached in {cache.parent} ({e.strerror})", file=sys.stderr)
    return CaptionMemory(texts, vectors.astype(np.float16).astype(np.float32), digest)


def _encode(texts: list[str], text_encoder, progress: bool) -> np.ndarray:
    from tqdm import tqdm

    out, step = [], 256
    with tqdm(total=len(texts), desc="caption memory (once)", unit="caption", disable=not progress) as bar:
        for s in range(0, len(texts), step):
            out.append(text_encoder.encode(texts[s:s + step], normalize=True).pooled)
            bar.update(len(texts[s:s + step]))
    return np.concatenate(out).astype(np.float32)
