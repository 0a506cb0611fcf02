"""How close the captions `fusion describe` shows come to what people wrote for a photo, for
photos whose own captions the candidates do not hold (the caption memory and a user's photo):
- agreed words: a shown caption uses a content word (plural folded) that at least `agree` of
  the photo's own captions use, the words its describers agree on;
- closeness: a shown caption's best sentence cosine to the photo's own captions."""

from __future__ import annotations

import numpy as np

from retrieval.data.words import stems


def agreed_words(own: list[str], agree: int = 2) -> set[str]:
    """The content words (plural folded) that at least `agree` of a photo's captions use."""
    counts: dict[str, int] = {}
    for text in own:
        for w in stems(text):
            counts[w] = counts.get(w, 0) + 1
    return {w for w, n in counts.items() if n >= agree}


def uses_agreed_word(shown: str, own: list[str], agree: int = 2) -> bool:
    return bool(stems(shown) & agreed_words(own, agree))


def closeness(shown: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Each shown caption's best cosine to the photo's own captions: (n_shown, d) and (n_own, d)
    sentence vectors, L2-normalised."""
    return (np.asarray(shown, np.float32) @ np.asarray(own, np.float32).T).max(axis=1)
