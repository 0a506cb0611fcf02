"""Photo + words queries on constructed cases: for a photo P and one of its visual neighbours N,
a word that N's captions use and no caption of P or of P's other neighbours does (the first
such word alphabetically, the one most of N's captions use, or one of N's captions holding
one). `fusion search WORD --like P` should put N first.

    python benchmarks/combined.py [--data data/demo] [--distractors ../shared/data/distractors]
                                  [--word-match W] [--photo-clip C] [--every N] [--name NAME]

Measured on a captioned collection the shipped model never trained on (the demo collection by
default), alone and hidden among uncaptioned distractor photos. Writes
benchmarks/results/combined.md and combined.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from indexer.run import index_paths
from retrieval.evaluation.combined import constructed_cases, evaluate, fusion_grid, share_calibration
from retrieval.model.runtime import Runtime
from retrieval.query import combine
from retrieval.query.combine import Combined
from retrieval.query.search import open_searcher
from retrieval.data.datasets import load_dataset

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
# (label, a whole caption?, which singling-out word)
KINDS = (("one word", False, "first"), ("the most used word", False, "most"), ("a whole caption", True, "first"))
OFF = 100.0  # a photo cap no z-score reaches
# (word match weight, photo cap) settings the fusion grid compares
GRID = [(w, c) for c in (OFF, 1.0, 1.5, 2.0, 2.5) for w in (0.0, 0.125, 0.25, 0.5)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "demo", help="captioned dataset folder")
    ap.add_argument("--distractors", type=Path, help="uncaptioned photos to hide it among")
    ap.add_argument("--word-match", type=float, default=combine.WORD_MATCH,
                    help=f"weight of the words' match against recalled memory captions (shipped: {combine.WORD_MATCH})")
    ap.add_argument("--photo-clip", type=float, default=combine.PHOTO_CLIP,
                    help=f"cap on the photo part's z-score beside words (shipped: {combine.PHOTO_CLIP}; "
                         "a large value such as 100 turns it off)")
    ap.add_argument("--every", type=int, default=1,
                    help="keep the cases of every Nth liked photo (in path order), for a large collection")
    ap.add_argument("--name", default="combined", help="results file name (without .md/.json)")
    args = ap.parse_args()
    combine.WORD_MATCH, combine.PHOTO_CLIP = args.word_match, args.photo_clip
    caps = load_dataset(args.data).texts_by_path()
    kept = set(sorted(caps)[::args.every])
    runtime = Runtime()
    report = {"data": str(args.data), "word_match": args.word_match, "photo_clip": args.photo_clip,
              "photo_slope": combine.PHOTO_SLOPE, "galleries": {}}
    with tempfile.TemporaryDirectory() as tmp:
        galleries = [("alone", [args.data])]
        if args.distractors:
            galleries.append(("among distractors", [args.data, args.distractors]))
        for name, paths in galleries:
            s = index_paths(paths, Path(tmp) / name, runtime=runtime)
            searcher = open_searcher(Path(tmp) / name, runtime)
            # cases come from the collection alone: distractors have no captions to check words against
            searcher_alone = open_searcher(Path(tmp) / "alone", runtime)
            entry = {"photos": s["photos"]}
            for kind, whole, pick in KINDS:
                cases = constructed_cases(searcher_alone, caps, whole_caption=whole, pick=pick)
                cases = [c for c in cases if c.like in kept]
                r = evaluate(searcher, cases, k=100)
                entry[kind] = {"cases": len(cases), **{m: {k: v for k, v in x.items() if k != "ranks"}
                                                        for m, x in r.items()},
                               "share": share_calibration(searcher, cases)}
                if not whole:
                    grid = fusion_grid(searcher, cases, GRID)
                    entry[kind]["grid"] = [{"word_match": w, "photo_clip": c, **grid[(w, c)]} for w, c in GRID]
            example = constructed_cases(searcher_alone, caps)[0]
            entry["example"] = {"like": example.like, "words": example.word, "target": example.target,
                                "results": [h.path for h in searcher.combined(Combined(example.word, example.like), 3).hits]}
            report["galleries"][name] = entry
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Photo + words queries", "",
             f"Constructed from {args.data}: for each photo P and each of its 10 nearest photos N (by "
             "`fusion similar`), a content word (plurals folded) that at least 2 of N's captions use and "
             "no caption of P or of P's other neighbours does; the query is that word (the first such "
             "word alphabetically, or the one most of N's captions use) or N's first caption holding it, "
             "with `--like P`, and N is the photo wanted. Top-1 and recall@5 in %, MRR over the cases. "
             f"Word match weight {args.word_match} (the words' share of the captions each photo recalls "
             "from the caption memory, added to the text part as a z-score); the photo part's z-score "
             f"capped at {args.photo_clip:g} (slope {combine.PHOTO_SLOPE:g} above it).", "",
             "| gallery | words | cases | photo alone top-1 / R@5 / MRR | words alone | photo + words |",
             "| --- | --- | ---: | --- | --- | --- |"]
    for name, e in report["galleries"].items():
        for kind, _, _ in KINDS:
            x = e[kind]
            cell = lambda m: f"{x[m]['top1']} / {x[m]['r5']} / {x[m]['mrr']:.3f}"  # noqa: E731
            lines.append(f"| {name} ({e['photos']} photos) | {kind} | {x['cases']} | {cell('photo alone')} | "
                         f"{cell('words alone')} | {cell('photo + words')} |")
    lines += ["", f"The share a combined result shows (softmax of the fused score over the 32 photos searched, "
              f"temperature {combine.SHARE_TEMPERATURE:g}), over the cases whose wanted photo is among them: "
              "expected calibration error, and the temperature that would have predicted it best.", "",
              "| gallery | words | cases | ECE | best temperature |", "| --- | --- | ---: | ---: | ---: |"]
    for name, e in report["galleries"].items():
        for kind, _, _ in KINDS:
            c = e[kind]["share"]
            lines.append(f"| {name} | {kind} | {c['cases']} | {c.get('ece', float('nan')):.4f} | "
                         f"{c.get('best_temperature', float('nan')):g} |")
    kinds = [(name, kind) for name in report["galleries"] for kind, whole, _ in KINDS if not whole]
    lines += ["", "Fusion settings: photo + words top-1 in % for each word match weight and cap on the photo "
              "part's z-score (off: uncapped, as before the cap), over all cases and, in brackets, over "
              "each half of the liked photos (alternate photos in path order), so that a setting chosen "
              "on one half can be checked on the other. The shipped setting is in bold.", "",
              "| word match | photo cap | " + " | ".join(f"{n}: {k}" for n, k in kinds) + " |",
              "| ---: | ---: | " + " | ".join("---" for _ in kinds) + " |"]
    for i, (w, c) in enumerate(GRID):
        cells = []
        for name, kind in kinds:
            g = report["galleries"][name][kind]["grid"][i]
            cells.append(f"{g['top1']} ({g['top1_half0']} / {g['top1_half1']})")
        mark = "**" if (w, c) == (args.word_match, args.photo_clip) else ""
        cap = "off" if c == OFF else f"{c:g}"
        lines.append(f"| {mark}{w:g}{mark} | {mark}{cap}{mark} | " + " | ".join(cells) + " |")
    lines.append("")
    RESULTS.joinpath(f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
