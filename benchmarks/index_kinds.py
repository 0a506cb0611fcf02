"""What the warm-search goal at 100k photos costs: one synthetic library searched through the
exact index (every vector scanned, float16, the default below 50,000 photos), through the IVF
index with float16 codes (the default from 50,000 to 200,000 photos) and through the IVF index
with 8-bit codes (the default from 200,000), side by side in one run, with how often each IVF
index returns the exact index's answers.

    python benchmarks/index_kinds.py [--size 100000] [--data DIR ...] [--rounds 3]

Warm p50 / p95: a CLI-like process per index kind (encode the query, FAISS, rerank of 32,
paths), the kinds taking turns round after round, as benchmarks/search_speed.py measures.
Agreement: the demo captions and the speed queries as queries, the IVF answers' top 1 and
top 10 against the exact ones (the shipped ranking, rerank included).

Writes benchmarks/results/index_kinds.md and .json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from search_speed import QUERIES, WARM, pct  # noqa: E402
from synthetic import build, real_features  # noqa: E402

from retrieval.data.datasets import load_dataset  # noqa: E402
from retrieval.model.runtime import Runtime  # noqa: E402
from retrieval.query.search import open_searcher  # noqa: E402
from retrieval.store.library import Library  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
KINDS = ("flat", "ivf", "ivf-sq8")


def as_ivf(src: Path, dst: Path, runtime: Runtime, codes: str | None = None) -> str:
    """A copy of the library at `src` whose photo index is IVF, as `fusion index --index ivf`
    leaves it (with `codes`: those codes instead of the size's); returns its description."""
    from retrieval.store.vectors import VectorStore

    shutil.copytree(src, dst)
    lib = Library.open(dst, runtime.fingerprint, runtime.dim, writer=True)
    lib.maintain("ivf")
    if codes:
        ids, vecs = lib._vectors(lib.reader.vectors("photo_features", "photo_id"))
        lib.photos = VectorStore.build("ivf", lib.photos.dim, ids, vecs, codes=codes)
    lib.save()
    return lib.photos.describe()


def warm(dbs: dict, n: int, rounds: int) -> dict:
    times = {k: [] for k in dbs}
    for _ in range(rounds):
        for kind, db in dbs.items():
            out = subprocess.run([sys.executable, "-c", WARM.format(db=str(db), n=n), json.dumps(QUERIES)],
                                 check=True, capture_output=True, text=True, cwd="/").stdout
            times[kind] += json.loads(out)[0]
    return {k: {"p50_ms": pct(t, 0.5), "p95_ms": pct(t, 0.95), "mean_ms": round(statistics.mean(t), 2)}
            for k, t in times.items()}


def cold(dbs: dict, runs: int) -> dict:
    """Median wall seconds of a new `fusion search` process per kind, the kinds taking turns."""
    walls = {k: [] for k in dbs}
    for _ in range(runs):
        for kind, db in dbs.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "retrieval.cli", "search", "a dog on a beach", "--db", str(db)],
                           check=True, capture_output=True, cwd="/")
            walls[kind].append(time.perf_counter() - start)
    return {k: round(statistics.median(w), 3) for k, w in walls.items()}


def agreement(dbs: dict, queries: list[str]) -> dict:
    """Each IVF index's answers against the exact index's, per query: same first photo, the
    share of the exact top 10 that the IVF top 10 holds, and the same ten in the same order."""
    answers = {}
    for kind, db in dbs.items():
        s = open_searcher(db)
        answers[kind] = [[h.path for h in s.text(q, k=10, candidates=32).hits] for q in queries]
    exact, out = answers["flat"], {}
    for kind in KINDS[1:]:
        ivf = answers[kind]
        top1 = sum(a[0] == b[0] for a, b in zip(exact, ivf)) / len(queries)
        top10 = statistics.mean(len(set(a) & set(b)) / len(a) for a, b in zip(exact, ivf))
        same = sum(a == b for a, b in zip(exact, ivf)) / len(queries)
        out[kind] = {"queries": len(queries), "same_top1": round(top1, 4), "top10_overlap": round(top10, 4),
                     "same_top10_in_order": round(same, 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--data", type=Path, action="append", help="real photos the synthetic ones are drawn from")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--queries-per-round", type=int, default=100)
    ap.add_argument("--cold-runs", type=int, default=5, help="new `fusion search` processes per kind")
    ap.add_argument("--name", default="index_kinds", help="results file stem")
    args = ap.parse_args()
    runtime = Runtime()
    data = args.data or [ROOT / "data" / "demo"]
    real = real_features(data, runtime)
    demo = load_dataset(ROOT / "data" / "demo")
    queries = QUERIES + [c.text for c in demo.captions]
    with tempfile.TemporaryDirectory() as tmp:
        dbs = {kind: Path(tmp) / kind for kind in KINDS}
        build_s = build(dbs["flat"], args.size, real, runtime)
        described = {"flat": Library.open(dbs["flat"], runtime.fingerprint, runtime.dim).photos.describe(),
                     "ivf": as_ivf(dbs["flat"], dbs["ivf"], runtime),
                     "ivf-sq8": as_ivf(dbs["flat"], dbs["ivf-sq8"], runtime, codes="sq8")}
        report = {"photos": args.size, "build_s": round(build_s, 1), "index": described,
                  "warm_in_process": warm(dbs, args.queries_per_round, args.rounds),
                  "cold_search_s": cold(dbs, args.cold_runs),
                  "agreement": agreement(dbs, queries), "fingerprint": runtime.fingerprint}
    write(report, data, args.name)


def write(r: dict, data, name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(r, indent=2) + "\n")
    lines = ["# Warm search: the exact index against IVF with float16 and with 8-bit codes", "",
             f"One synthetic library of {r['photos']:,} photos drawn from {', '.join(d.name for d in data)}, "
             "searched through each index in turn (warm: one CLI-like process per kind and round; encoding the query, "
             "FAISS, the rerank of 32, paths; k = 10; cold: the median of new `fusion search` processes), on one "
             "machine in one run. Agreement: each IVF index's "
             f"answers against the exact index's over {r['agreement']['ivf']['queries']} queries (the demo "
             "captions and the speed queries).", "",
             "| index | warm p50 / p95 ms | mean ms | cold `fusion search` s | same first photo | top 10 shared | "
             "same 10 in order |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for kind in KINDS:
        w, a = r["warm_in_process"][kind], r["agreement"].get(kind)
        agree = (f"{a['same_top1']:.1%} | {a['top10_overlap']:.1%} | {a['same_top10_in_order']:.1%}" if a
                 else "– | – | –")
        lines.append(f"| {r['index'][kind]} | {w['p50_ms']} / {w['p95_ms']} | {w['mean_ms']} | "
                     f"{r['cold_search_s'][kind]} | {agree} |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
