"""Content words of a text: lower-case words of 3+ letters that are not function words. Used
to match a query's words against the captions a photo recalls from the caption memory, and to
build the constructed photo+words cases of benchmarks/combined.py."""

from __future__ import annotations

import re
from functools import lru_cache

STOP = set("""a an the and or of in on at to with for from by into onto over under near next its it is are
some two three four one many other his her their this that there while has have being looking sitting
standing very small large big little top front back side up down out off against around behind across
through about above below along among between beside toward towards upon each another which what who
where then than just also here them they these those was were been can will had not all""".split())


def content_words(text: str) -> list[str]:
    """The text's content words as written (lower case), in order, repeats kept."""
    return [w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 3 and w not in STOP]


def words(text: str) -> set[str]:
    """The text's content words as written (lower case)."""
    return set(content_words(text))


def fold(word: str) -> str:
    """A plural -s folded ("dogs" -> "dog"; "grass" stays)."""
    return word[:-1] if word.endswith("s") and not word.endswith("ss") else word


@lru_cache(maxsize=1 << 16)
def stems(text: str) -> frozenset[str]:
    """Content words with a plural -s folded ("dogs" and "dog" match; "grass" stays). Cached:
    a served library's combined queries keep meeting the same memory captions."""
    return frozenset(fold(w) for w in words(text))
