"""Caption fragments: short queries cut from training captions ("black dog beach" from "A black dog
runs along the beach"), so that the shared space also learns the few words people type.

Each caption gets FRAGMENTS fragments, each an in-order random pick of 1 to MAX_WORDS of its
content words (retrieval.data.words). train_itc swaps a sampled caption for one of its fragments
with probability TrainConfig.fragment_share, and the tops' tuning (retrieval/training/tops.py)
with probability TrainConfig.tops_fragment_share."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retrieval.data.words import content_words

FRAGMENTS = 2  # fragments per caption
MAX_WORDS = 3  # content words per fragment at most


def cut(caption: str, rng: np.random.Generator, n: int = FRAGMENTS) -> list[str]:
    """`n` fragments of one caption; a caption with no content words is its own fragment."""
    found = content_words(caption)
    if not found:
        return [caption] * n
    out = []
    for _ in range(n):
        k = int(rng.integers(1, min(MAX_WORDS, len(found)) + 1))
        keep = np.sort(rng.choice(len(found), k, replace=False))
        out.append(" ".join(found[i] for i in keep))
    return out


def fragment_texts(captions: list[str], seed: int = 0) -> list[str]:
    """Every caption's FRAGMENTS fragments, flat: caption i's are at i * FRAGMENTS onwards. The
    same seed cuts the same fragments for ITC (fragment_vectors) and the tops (block_inputs)."""
    rng = np.random.default_rng(seed)
    return [f for c in captions for f in cut(c, rng)]


def fragment_vectors(captions: list[str], text_encoder, seed: int = 0, progress: bool = True) -> np.ndarray:
    """(len(captions), FRAGMENTS, dim) float16 raw text vectors of every caption's fragments, in the
    form DatasetFeatures.text holds captions (the encoder's pooled vectors, not normalised)."""
    texts = fragment_texts(captions, seed)
    unique, inverse = np.unique(texts, return_inverse=True)  # one word recurs thousands of times
    from tqdm import tqdm

    vecs = np.zeros((len(unique), text_encoder.config.dim), np.float32)
    step = 4096
    with tqdm(total=len(unique), desc="caption fragments", unit="text", disable=not progress) as bar:
        for s in range(0, len(unique), step):
            vecs[s:s + step] = text_encoder.encode(list(unique[s:s + step]), normalize=False).pooled
            bar.update(len(unique[s:s + step]))
    return vecs[inverse.reshape(-1)].reshape(len(captions), FRAGMENTS, -1).astype(np.float16)


def with_fragments(f, ds, text_encoder, seed: int = 0, progress: bool = True, cache_dir: Path | None = None):
    """Dataset features `f` of `ds` with its captions' fragments attached (features.DatasetFeatures),
    their vectors cached under `cache_dir` [default: the feature cache] by the captions, the text
    encoder (its tops included) and the seed."""
    from dataclasses import replace

    from retrieval.data.cache import cache_key, cached, dataset_fingerprint, default_cache_dir

    ident = [dataset_fingerprint(ds.root, ds.source, ds.images), text_encoder.feature_id, seed, FRAGMENTS, MAX_WORDS,
             len(ds.captions)]
    path = (cache_dir or default_cache_dir()) / f"{ds.root.name}-fragments-{cache_key(ident)}.npz"
    made = cached(path, lambda: {"vectors": fragment_vectors([c.text for c in ds.captions], text_encoder, seed,
                                                             progress)})
    return replace(f, fragments=made["vectors"])


def for_training(f, ds, text_encoder, tc, progress: bool = True, cache_dir: Path | None = None):
    """`f` with its fragments when `tc` (a TrainConfig) trains ITC on them, else `f` as it is."""
    return with_fragments(f, ds, text_encoder, tc.seed, progress, cache_dir) if tc.fragment_share > 0 else f
