"""The caption prior of photo -> caption ranking (`fusion describe`): a generic caption ("a man
standing in a room") sits close to many photos and wins for photos it barely describes. Each
candidate caption's score is lowered by its mean ITC similarity to its nearest photos in a
bank of uncaptioned photos the checkpoint carries (querybank normalisation, as in QB-Norm,
Bogolin et al. 2022), so a caption ranks high for a photo when it fits that photo better than
it fits photos in general. Numpy only: describe runs it per candidate, never over a corpus."""

from __future__ import annotations

import numpy as np

PRIOR_K = 10  # nearest bank photos a caption's prior averages over
BANK_PHOTOS = 768  # bank size (about the open-world benchmark's 754 training distractors)


def caption_prior(caption_itc: np.ndarray, bank: np.ndarray, k: int = PRIOR_K) -> np.ndarray:
    """(N,) mean cosine of each caption ITC vector (N, d) with its k nearest bank photos (B, d)."""
    if bank is None or len(bank) == 0:
        return np.zeros(len(caption_itc), np.float32)
    sim = np.asarray(caption_itc, np.float32) @ np.asarray(bank, np.float32).T
    k = min(k, sim.shape[1])
    return np.partition(sim, sim.shape[1] - k, axis=1)[:, -k:].mean(1).astype(np.float32)


def bank_rows(n: int, seed: int) -> np.ndarray:
    """Which of `n` photos form a bank: all, or BANK_PHOTOS of them drawn with `seed`. A fixed
    size keeps the prior's scale (a mean over the 10 nearest) what the benchmarks measured."""
    if n <= BANK_PHOTOS:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:BANK_PHOTOS])
