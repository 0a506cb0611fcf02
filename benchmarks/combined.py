"""Photo + words queries on constructed cases: for a photo P and one of its visual neighbours N,
a word that N's captions use and no caption of P or of P's other neighbours does (the first
such word alphabetically, the one most of N's captions use, or one of N's captions holding
one). `fusion search WORD --like P` should put N first.

    python benchmarks/combined.py [--data data/demo] [--distractors ../shared/data/distractors]
                                  [--word-match W --name combined-word-match-W]

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
from retrieval.evaluation.combined import constructed_cases, evaluate, share_calibration
from retrieval.model.runtime import Runtime
from retrieval.query import combine
from retrieval.query.combine import Combined
from retrieval.query.search import open_searcher
from retrieval.training.datasets import load_dataset

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
# (label, a whole caption?, which singling-out word)
KINDS = (("one word", False, "first"), ("the most used word", False, "most"), ("a whole caption", True, "first"))


def captions_by_path(data: Path) -> dict[str, list[str]]:
    ds = load_dataset(data)
    out: dict[str, list[str]] = {}
    for c in ds.captions:
        out.setdefault(str(ds.image_path(c.image).resolve()), []).append(c.text)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "demo", help="captioned dataset folder")
    ap.add_argument("--distractors", type=Path, help="uncaptioned photos to hide it among")
    ap.add_argument("--word-match", type=float, default=combine.WORD_MATCH,
                    help=f"weight of the words' match against recalled memory captions (shipped: {combine.WORD_MATCH})")
    ap.add_argument("--name", default="combined", help="results file name (without .md/.json)")
    args = ap.parse_args()
    combine.WORD_MATCH = args.word_match
    caps = captions_by_path(args.data)
    runtime = Runtime()
    report = {"data": str(args.data), "word_match": args.word_match, "galleries": {}}
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
                r = evaluate(searcher, cases, k=100)
                entry[kind] = {"cases": len(cases), **{m: {k: v for k, v in x.items() if k != "ranks"}
                                                        for m, x in r.items()},
                               "share": share_calibration(searcher, cases)}
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
             "from the caption memory, added to the text part as a z-score).", "",
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
    lines.append("")
    RESULTS.joinpath(f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
