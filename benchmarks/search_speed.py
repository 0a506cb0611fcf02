"""Search latency: cold start of `fusion search` (a new process) and warm queries with rerank,
in process and over `fusion serve`, on synthetic libraries of the given sizes.

    python benchmarks/search_speed.py [--sizes 10000,100000] [--data DIR ...]

Writes benchmarks/results/search_speed.md and .json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import build, real_features  # noqa: E402

from retrieval.model.runtime import Runtime  # noqa: E402
from retrieval.query.search import open_searcher  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
QUERIES = ["a dog on a beach", "two people riding bikes", "a plate of food", "a red bus on a street",
           "a cat sleeping on a couch", "children playing football", "a snowy mountain", "a kitchen with a sink",
           "an airplane in the sky", "a man surfing a wave"]


def pct(xs, q):
    return round(sorted(xs)[min(len(xs) - 1, int(q * len(xs)))], 2)


def cold_start(db: Path, runs: int = 3) -> dict:
    walls = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "retrieval.cli", "search", "a dog on a beach", "--db", str(db)],
                       check=True, capture_output=True)
        walls.append(time.perf_counter() - start)
    # where the time goes, measured in a fresh process
    probe = ("import time;t0=time.perf_counter();import torch;t1=time.perf_counter();"
             "from retrieval.query.search import open_searcher;t2=time.perf_counter();"
             f"s=open_searcher({str(db)!r});t3=time.perf_counter();s.runtime.checkpoint;t4=time.perf_counter();"
             "s.runtime.text_encoder.network;t5=time.perf_counter();s.text('a dog on a beach');t6=time.perf_counter();"
             "print(t1-t0,t2-t1,t3-t2,t4-t3,t5-t4,t6-t5)")
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout.split()
    parts = ["import_torch_s", "import_rest_s", "open_library_s", "load_checkpoint_s", "load_text_model_s", "first_query_s"]
    return {"wall_s_median": round(statistics.median(walls), 3),
            "breakdown": {k: round(float(v), 3) for k, v in zip(parts, out)}}


def warm(db: Path, n: int = 50) -> dict:
    s = open_searcher(db)
    s.text("warm up")
    times = []
    for i in range(n):
        start = time.perf_counter()
        s.text(QUERIES[i % len(QUERIES)], k=10, candidates=32)
        times.append(1000 * (time.perf_counter() - start))
    return {"p50_ms": pct(times, 0.5), "p95_ms": pct(times, 0.95)}


def served(db: Path, n: int = 50) -> dict:
    sys.path.insert(0, str(ROOT))
    from tests.serving import running_server

    with running_server(db) as root:
        base = root + "/api/search?"
        times = []
        for i in range(n + 5):
            start = time.perf_counter()
            urllib.request.urlopen(base + urllib.parse.urlencode({"q": QUERIES[i % len(QUERIES)]})).read()
            if i >= 5:
                times.append(1000 * (time.perf_counter() - start))
        return {"p50_ms": pct(times, 0.5), "p95_ms": pct(times, 0.95)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--data", type=Path, action="append", help="real photos the synthetic ones are drawn from")
    args = ap.parse_args()
    runtime = Runtime()
    data = args.data or [ROOT / "data" / "demo"]
    real = real_features(data, runtime)
    rows = {}
    for n in [int(x) for x in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp)
            build_s = build(db, n, real, runtime)
            rows[n] = {"build_s": round(build_s, 1), "cold_start": cold_start(db), "warm_in_process": warm(db),
                       "warm_http": served(db)}
            print(n, rows[n], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "search_speed.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["# Search latency", "", f"Synthetic libraries drawn from {len(real[0])} real photos "
             f"({', '.join(d.name for d in data)}); exact FAISS index; rerank of 32 candidates, k = 10.", "",
             "| photos | cold `fusion search` s | warm p50 / p95 ms (in process) | warm p50 / p95 ms (HTTP) |",
             "| ---: | ---: | ---: | ---: |"]
    for n, r in rows.items():
        lines.append(f"| {n:,} | {r['cold_start']['wall_s_median']} | {r['warm_in_process']['p50_ms']} / "
                     f"{r['warm_in_process']['p95_ms']} | {r['warm_http']['p50_ms']} / {r['warm_http']['p95_ms']} |")
    lines += ["", "Cold start breakdown (s):", ""]
    for n, r in rows.items():
        lines.append(f"- {n:,}: " + ", ".join(f"{k} {v}" for k, v in r["cold_start"]["breakdown"].items()))
    (RESULTS / "search_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
