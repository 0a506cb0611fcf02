"""One result per shot: a camera RAW and the JPEG beside it are one photo to a user."""

from __future__ import annotations

import os.path

from retrieval.encoders.raw import RAW_SUFFIXES


def one_per_shot(hits: list) -> list:
    """A camera RAW and the JPEG (or HEIC...) of the same shot, same folder and name stem, show
    once: the better-ranked file, with the other in `also` and its share added (the chance the
    shot is the photo described). Ranks are renumbered."""
    first: dict = {}
    out = []
    for h in hits:  # os.path, not pathlib: a query's 32 paths cost 0.5 ms as Path objects
        folder, name = os.path.split(h.path)
        stem, suffix = os.path.splitext(name)
        key = (folder, stem.lower())
        kept = first.get(key)
        if kept is not None and (suffix.lower() in RAW_SUFFIXES
                                 or os.path.splitext(kept.path)[1].lower() in RAW_SUFFIXES):
            kept.also.append(h.path)
            if kept.share is not None and getattr(h, "share", None) is not None:
                kept.share += h.share
            continue
        first.setdefault(key, h)
        out.append(h)
    for n, h in enumerate(out, start=1):
        h.rank = n
    return out
