"""Constructed photo+words cases from a captioned collection: for a photo P and one of its
visual neighbours N, a content word that N's captions use and no caption of P or of P's other
neighbours does (plurals folded, as the word match folds them: "car" in a neighbour's caption
rules out "cars"). `--like P` plus that word should then put N first; alone, neither the photo
(P's neighbours are all alike) nor the word (other photos match it) is enough."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrieval.model.query_side import softmax
from retrieval.query.combine import SHARE_TEMPERATURE, Combined, fuse, pool_scores, ranked
from retrieval.query.results import Filters
from retrieval.data.words import stems, words


@dataclass(frozen=True)
class Case:
    like: str  # path of the photo given as --like
    word: str  # the words given with it
    target: str  # path of the neighbour the words single out


def constructed_cases(searcher, captions: dict[str, list[str]], neighbours: int = 10,
                      support: int = 2, whole_caption: bool = False, pick: str = "first") -> list[Case]:
    """One case per (photo, neighbour) pair that has a singling-out word (used by at least
    `support` of the neighbour's captions), from the library's `similar` neighbours of each
    captioned photo: the first such word in alphabetical order, with `pick="most"` the one
    most of the neighbour's captions use (what its describers agree on; ties alphabetical), or
    with `whole_caption` the neighbour's first caption that holds one."""
    if pick not in ("first", "most"):
        raise ValueError(f"pick must be 'first' or 'most', not {pick!r}")
    cases = []
    for like in sorted(captions):
        near = [h.path for h in searcher.similar(like, neighbours).hits if h.path in captions]
        for target in near:
            others = set().union(*(stems(c) for p in near + [like] if p != target for c in captions[p]))
            counts: dict[str, int] = {}
            for c in captions[target]:
                for w in stems(c):
                    counts[w] = counts.get(w, 0) + 1
            good = sorted(w for w, n in counts.items() if n >= support and w not in others)
            if pick == "most":
                good.sort(key=lambda w: -counts[w])  # stable: ties stay alphabetical
            if good and whole_caption:
                cases.append(Case(like, next(c for c in captions[target] if stems(c) & set(good)), target))
            elif good:  # the word as the captions write it ("dogs" for the folded "dog")
                cases.append(Case(like, min(w for c in captions[target] for w in words(c)
                                            if stems(w) == {good[0]}), target))
    return cases


def rank_of(results, target: str) -> int | None:
    return next((h.rank for h in results.hits if h.path == target), None)


def evaluate(searcher, cases: list[Case], k: int = 50) -> dict:
    """Rank of each case's target for the photo alone, the word alone and both together:
    top-1 rate, recall@5 and mean reciprocal rank (a target outside the top k scores 0)."""
    out = {}
    ways = {"photo alone": lambda c: searcher.similar(c.like, k),
            "words alone": lambda c: searcher.text(c.word, k),
            "photo + words": lambda c: searcher.combined(Combined(c.word, c.like), k)}
    for name, run in ways.items():
        ranks = [rank_of(run(c), c.target) for c in cases]
        out[name] = {"top1": _rate(ranks, 1), "r5": _rate(ranks, 5),
                     "mrr": round(sum(1 / r for r in ranks if r) / max(len(ranks), 1), 4),
                     "ranks": ranks}
    return out


def fusion_grid(searcher, cases: list[Case], settings: list[tuple[float, float]], k: int = 100) -> dict:
    """Top-1 rate and MRR of photo + words for each (word match weight, photo clip) setting,
    over all cases and over each half of the liked photos (alternate ones in path order), so a
    setting chosen on one half can be checked on the other. Each case's parts are scored once
    (as `combined` with k scores them) and fused once per setting."""
    halves = {like: n % 2 for n, like in enumerate(sorted({c.like for c in cases}))}
    ranks = {s: [] for s in settings}
    for c in cases:
        ids, scored, _, _ = pool_scores(searcher, Combined(c.word, c.like), max(k, 32), True, Filters())
        target = next((i for i, path in zip(ids, searcher.paths_of(ids)) if path == c.target), None)
        for s in settings:
            fused = fuse(scored, *s)
            order = ids[ranked(ids, fused)][:k]
            at = np.flatnonzero(order == target) if target is not None else []
            ranks[s].append(int(at[0]) + 1 if len(at) else None)
    out = {}
    for s, rs in ranks.items():
        row = {"top1": _rate(rs, 1), "mrr": round(sum(1 / r for r in rs if r) / max(len(rs), 1), 4)}
        for h in (0, 1):
            part = [r for r, c in zip(rs, cases) if halves[c.like] == h]
            row[f"top1_half{h}"] = _rate(part, 1)
        out[s] = row
    return out


def _rate(ranks, k) -> float:
    return round(100 * sum(1 for r in ranks if r and r <= k) / max(len(ranks), 1), 1)


def share_calibration(searcher, cases: list[Case], candidates: int = 32) -> dict:
    """How well the share a combined query shows predicts its wanted photo, over the cases
    whose photo is among the `candidates` searched: the calibration (evaluation.openworld)
    at the shipped temperature, and the temperature of least cross-entropy."""
    from retrieval.evaluation.openworld import calibration
    from retrieval.training.rerank import best_temperature

    fused, label = [], []
    for c in cases:
        hits = searcher.combined(Combined(c.word, c.like), candidates, candidates).hits
        hit = np.array([h.path == c.target for h in hits])
        if hit.any():
            fused.append(np.array([h.score for h in hits]))
            label.append(hit)
    if not fused:
        return {"cases": 0}
    width = max(len(f) for f in fused)
    pad = lambda rows, v: np.stack([np.pad(r, (0, width - len(r)), constant_values=v) for r in rows])  # noqa: E731
    shown = np.concatenate([softmax(f, SHARE_TEMPERATURE) for f in fused])
    return {"cases": len(fused), "temperature": SHARE_TEMPERATURE,
            "best_temperature": round(best_temperature(pad(fused, -np.inf), pad(label, False)), 2),
            **calibration(shown, np.concatenate(label).astype(float))}
