"""Search latency, the two inference engines side by side: cold start of `fusion search` (a
new process) and warm queries with rerank, in process and over `fusion serve`, on synthetic
libraries of the given sizes. Each measurement alternates the engines (FUSION_ENGINE=onnx, the
default, and FUSION_ENGINE=torch), so the machine's drift falls on both alike.

    python benchmarks/search_speed.py [--sizes 10000,100000] [--data DIR ...] [--before DIR]

--before DIR: a checkout of an earlier commit (git worktree add DIR COMMIT), measured beside
the engines (cold start and warm in process) with the same interpreter: the path users had.

Writes benchmarks/results/search_speed.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
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


ENGINES = ("onnx", "torch")


BEFORE: Path | None = None  # --before
BEFORE_IS = ""  # --before-is


def with_engine(engine: str) -> dict:
    if engine == "before":
        env = {**os.environ, "PYTHONPATH": str(BEFORE)}
        env.pop("FUSION_ENGINE", None)
        return env
    return {**os.environ, "FUSION_ENGINE": engine}


def measured() -> tuple:
    return ENGINES + (("before",) if BEFORE else ())


def cold_start(db: Path, runs: int = 5) -> dict:
    walls: dict[str, list[float]] = {e: [] for e in measured()}
    for _ in range(runs):
        for engine in measured():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "retrieval.cli", "search", "a dog on a beach", "--db", str(db)],
                           check=True, capture_output=True, env=with_engine(engine), cwd="/")
            walls[engine].append(time.perf_counter() - start)
    # where the time goes, measured in a fresh process
    probe = ("import sys,time;t0=time.perf_counter();import retrieval.cli;"
             "from retrieval.query.search import open_searcher;t1=time.perf_counter();"
             f"s=open_searcher({str(db)!r});t2=time.perf_counter();s.runtime.query;s.runtime.memory;"
             "t3=time.perf_counter();s.runtime.text_encoder.warm();t4=time.perf_counter();"
             "s.text('a dog on a beach');t5=time.perf_counter();"
             "print(t1-t0,t2-t1,t3-t2,t4-t3,t5-t4,'torch' in sys.modules)")
    parts = ["imports_s", "open_library_s", "query_side_and_memory_s", "load_text_model_s", "first_query_s"]
    out = {}
    for engine in ENGINES:
        got = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True,
                             env=with_engine(engine)).stdout.split()
        out[engine] = {"wall_s_median": round(statistics.median(walls[engine]), 3),
                       "wall_s": [round(w, 3) for w in walls[engine]],
                       "breakdown": {k: round(float(v), 3) for k, v in zip(parts, got)},
                       "torch_imported": got[-1] == "True"}
    if BEFORE:
        out["before"] = {"wall_s_median": round(statistics.median(walls["before"]), 3),
                         "wall_s": [round(w, 3) for w in walls["before"]], "breakdown": {}, "torch_imported": False}
    return out


WARM = """
import json, sys, time
from retrieval.query.search import open_searcher
queries = json.loads(sys.argv[1])
s = open_searcher({db!r})
s.text("warm up")
te = s.runtime.text_encoder
total, encode = [], []
for i in range({n}):
    q = queries[i % len(queries)]
    start = time.perf_counter()
    s.text(q, k=10, candidates=32)
    total.append(1000 * (time.perf_counter() - start))
    start = time.perf_counter()
    te.encode([q], normalize=False)
    encode.append(1000 * (time.perf_counter() - start))
print(json.dumps([total, encode, "torch" in sys.modules]))
"""


def warm(db: Path, n: int = 100, rounds: int = 3) -> dict:
    """p50 / p95 ms of a text query (encode, FAISS, rerank of 32, paths) in a CLI-like process
    per engine (each engine alone in its process: torch's threads would slow ONNX Runtime's
    beside them), the engines taking turns, round after round; and the query's encoding alone."""
    times: dict[str, list] = {e: [[], []] for e in measured()}
    imported = {}
    for _ in range(rounds):
        for engine in measured():
            out = subprocess.run([sys.executable, "-c", WARM.format(db=str(db), n=n), json.dumps(QUERIES)],
                                 check=True, capture_output=True, text=True, env=with_engine(engine), cwd="/").stdout
            total, encode, imported[engine] = json.loads(out)
            times[engine][0] += total
            times[engine][1] += encode
    return {e: {"p50_ms": pct(times[e][0], 0.5), "p95_ms": pct(times[e][0], 0.95),
                "encode_p50_ms": pct(times[e][1], 0.5), "torch_imported": imported[e]} for e in measured()}


def served(db: Path, n: int = 50) -> dict:
    sys.path.insert(0, str(ROOT))
    from tests.serving import running_server

    out = {}
    for engine in ENGINES:
        os.environ["FUSION_ENGINE"] = engine  # the server process inherits it
        try:
            with running_server(db) as root:
                base = root + "/api/search?"
                times = []
                for i in range(n + 5):
                    start = time.perf_counter()
                    urllib.request.urlopen(base + urllib.parse.urlencode({"q": QUERIES[i % len(QUERIES)]})).read()
                    if i >= 5:
                        times.append(1000 * (time.perf_counter() - start))
        finally:
            os.environ.pop("FUSION_ENGINE", None)
        out[engine] = {"p50_ms": pct(times, 0.5), "p95_ms": pct(times, 0.95)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--data", type=Path, action="append", help="real photos the synthetic ones are drawn from")
    ap.add_argument("--before", type=Path, help="a checkout of an earlier commit to measure beside")
    ap.add_argument("--before-is", default="the code before ONNX Runtime, whose searches ran MiniLM in numpy",
                    help="what --before is, for the results' text")
    args = ap.parse_args()
    global BEFORE, BEFORE_IS
    BEFORE = args.before.resolve() if args.before else None
    BEFORE_IS = args.before_is
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
    write(rows, real, data)


def write(rows: dict, real, data) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "search_speed.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["# Search latency: ONNX Runtime against torch", "", f"Synthetic libraries drawn from {len(real[0])} "
             f"real photos ({', '.join(d.name for d in data)}); exact FAISS index; rerank of 32 candidates, k = 10. "
             "Each row's engines took turns (FUSION_ENGINE=onnx, the default, and torch"
             + (f", and `before`: {BEFORE_IS}" if BEFORE else "")
             + "), on one machine in one run. "
             "Warm: in one process, encoding the query, FAISS, the rerank and the paths.", "",
             "| photos | engine | cold `fusion search` s (median of 5) | warm p50 / p95 ms (in process) | "
             "of which the query's encoding, p50 ms | warm p50 / p95 ms (HTTP) | torch imported by a search |",
             "| ---: | --- | ---: | ---: | ---: | ---: | --- |"]
    for n, r in rows.items():
        for e in r["warm_in_process"]:
            c, w, h = r["cold_start"][e], r["warm_in_process"][e], r["warm_http"].get(e)
            served = f"{h['p50_ms']} / {h['p95_ms']}" if h else "-"
            lines.append(f"| {n:,} | {e} | {c['wall_s_median']} | {w['p50_ms']} / {w['p95_ms']} | {w['encode_p50_ms']} | "
                         f"{served} | {'yes' if w['torch_imported'] else 'no'} |")
    lines += ["", "Cold start breakdown (s, one fresh process each):", ""]
    for n, r in rows.items():
        for e in ENGINES:
            lines.append(f"- {n:,}, {e}: " + ", ".join(f"{k} {v}" for k, v in r["cold_start"][e]["breakdown"].items()))
    (RESULTS / "search_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
