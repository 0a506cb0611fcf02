"""Near-duplicate threshold: constructed duplicates of real photos (resized to half, JPEG
quality 50, a 5% crop, a colour jitter) against distinct photos, indexed by the real indexer.

    python benchmarks/duplicates.py --photos ../shared/data/coco/images \
        --distinct ../shared/data/distractors [--n 150] [--skip 0] [--name duplicates]

Reports pair precision / recall of "cosine >= T" for a range of T over every pair of photos,
and group precision / recall of `fusion duplicates` at the shipped threshold, on the
signatures the indexer stores. The threshold was chosen on the first 150 COCO photos; `--skip
150` checks it on the others. Writes benchmarks/results/<name>.md, .json and .png.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from indexer.run import index_paths
from retrieval.encoders.encode import find_photos
from retrieval.evaluation.near_duplicates import KINDS, make_set
from retrieval.model.runtime import Runtime
from retrieval.query.duplicates import DEFAULT_THRESHOLD, duplicate_groups, stored_signatures
from retrieval.store.library import Library
from retrieval.store.meta import Photo

RESULTS = Path(__file__).resolve().parent / "results"
THRESHOLDS = [0.75, 0.8, 0.82, 0.84, 0.85, 0.86, 0.88, 0.9, 0.92, 0.95]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, required=True, help="folder of photos to make duplicates of")
    ap.add_argument("--distinct", type=Path, action="append", default=[], help="more distinct photos")
    ap.add_argument("--n", type=int, default=150, help="photos to make duplicates of")
    ap.add_argument("--skip", type=int, default=0, help="leave out the first SKIP photos (a held-out check)")
    ap.add_argument("--name", default="duplicates", help="results file stem")
    ap.add_argument("--precision", choices=("int8", "float32"),
                    help="the image network's precision [default: what fusion index uses for a new library]")
    args = ap.parse_args()
    originals = find_photos([args.photos])[args.skip:args.skip + args.n]
    runtime = Runtime(image_precision=args.precision)
    with tempfile.TemporaryDirectory() as tmp:
        made = Path(tmp) / "dups"
        made.mkdir()
        group = make_set(originals, made)
        start = time.perf_counter()
        s = index_paths([made, *args.distinct], Path(tmp) / "lib", runtime=runtime,
                        processes=None)
        print(f"indexed {s['photos']} photos in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        lib = Library.open(Path(tmp) / "lib", runtime.fingerprint, runtime.dim)
        from sqlalchemy import select

        with lib.session() as ses:
            paths = dict(ses.execute(select(Photo.id, Photo.path)).all())
        ids, vecs = stored_signatures(lib)
        labels = np.array([group.get(paths[i], f"distinct-{i}") for i in ids])
        sims = vecs @ vecs.T
        iu = np.triu_indices(len(ids), 1)
        same = labels[iu[0]] == labels[iu[1]]
        cos = sims[iu]
        rows = []
        for t in THRESHOLDS:
            pred = cos >= t
            tp = int((pred & same).sum())
            rows.append({"threshold": t, "precision": round(tp / max(int(pred.sum()), 1), 4),
                         "recall": round(tp / int(same.sum()), 4), "false_pairs": int((pred & ~same).sum())})
        by_kind = {k: round(float(np.mean([sims[a, b] for a, b in _pairs(ids, paths, group, k)])), 4)
                   for k in KINDS}
        groups = duplicate_groups(lib, DEFAULT_THRESHOLD)
        want = {frozenset(p for p, g in group.items() if g == stem) for stem in set(group.values())}
        got = [frozenset(g.paths) for g in groups]
        exact = sum(1 for g in got if g in want)
        report = {"originals": len(originals), "photos": s["photos"], "true_pairs": int(same.sum()),
                  "pairs": rows, "mean_cosine_to_original": by_kind,
                  "hardest_distinct_pairs": [round(float(x), 4) for x in np.sort(cos[~same])[-5:][::-1]],
                  "threshold": DEFAULT_THRESHOLD,
                  "groups": {"found": len(got), "exact": exact,
                             "precision": round(exact / max(len(got), 1), 4), "recall": round(exact / len(want), 4),
                             "photos_in_wrong_groups": sum(len(g) for g in got if g not in want)}}
    report.update(skip=args.skip, seconds_to_index=s["seconds"], image_precision=runtime.image_precision)
    write(report, args.name)


def _pairs(ids, paths, group, kind):
    pos = {paths[i]: n for n, i in enumerate(ids)}
    for p in group:
        if p.endswith(f"-{kind}.jpg"):
            orig = p[: -len(f"-{kind}.jpg")] + ".jpg"
            yield pos[orig], pos[p]


def write(r: dict, name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(r, indent=2) + "\n")
    g = r["groups"]
    lines = ["# Near-duplicate threshold", "",
             f"{r['originals']} photos, each with 4 constructed duplicates (half size, JPEG quality 50, 5% crop, "
             f"colour jitter; photos {r['skip'] + 1} to {r['skip'] + r['originals']} of the folder), among {r['photos']} "
             f"indexed photos; {r['true_pairs']} true pairs. Cosine of the stored near-duplicate signatures "
             "(retrieval/encoders/signature.py).", "",
             "| threshold | pair precision | pair recall | false pairs |", "| ---: | ---: | ---: | ---: |"]
    lines += [f"| {x['threshold']} | {x['precision']:.3f} | {x['recall']:.3f} | {x['false_pairs']} |" for x in r["pairs"]]
    lines += ["", "Mean cosine of each kind of duplicate to its original: " +
              ", ".join(f"{k} {v:.3f}" for k, v in r["mean_cosine_to_original"].items()) + "; the closest distinct "
              f"pairs: {', '.join(map(str, r['hardest_distinct_pairs']))}.", "",
              f"`fusion duplicates` at its default threshold {r['threshold']}: {g['found']} groups, {g['exact']} exactly "
              f"right: group precision {g['precision']:.3f}, recall {g['recall']:.3f}; {g['photos_in_wrong_groups']} "
              "photos in groups that are not exactly one shot's copies.", ""]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([x["recall"] for x in r["pairs"]], [x["precision"] for x in r["pairs"]], "o-")
    for x in r["pairs"]:
        ax.annotate(str(x["threshold"]), (x["recall"], x["precision"]), fontsize=7)
    ax.set_xlabel("pair recall")
    ax.set_ylabel("pair precision")
    ax.set_title("near-duplicates: cosine threshold")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=110)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
