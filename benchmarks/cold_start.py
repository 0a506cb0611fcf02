"""Cold start of `fusion search` on an existing library (e.g. the 1M-photo synthetic one that
benchmarks/scale.py builds), the two inference engines side by side (FUSION_ENGINE=onnx, the
default, and torch, taking turns run by run): wall time of a new process, median of --runs,
where the time goes, and the photo index read whole vs memory-mapped.

    python benchmarks/cold_start.py --db DIR [--runs 5] [--before DIR]

--before DIR: a checkout of an earlier commit (git worktree add DIR COMMIT), measured beside
them as a third row with the same interpreter: the path users had before.

Writes benchmarks/results/cold_start.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PROBE = """
import sys, time; t0 = time.perf_counter(); import retrieval.cli; t1 = time.perf_counter()
from retrieval.encoders.text_encoder import preload_text_model; preload_text_model()
from retrieval.query.search import open_searcher; t2 = time.perf_counter()
s = open_searcher({db!r}); t3 = time.perf_counter()
s.runtime.query; s.runtime.text_encoder.warm(); s.runtime.memory; t4 = time.perf_counter()
s.text("a dog on a beach"); t5 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, "torch" in sys.modules, len(s.lib.photos))
"""
ENGINES = ("onnx", "torch")


def environments(before: Path | None) -> dict:
    """label -> environment of a measured process: each engine, and the earlier checkout."""
    out = {e: {**os.environ, "FUSION_ENGINE": e} for e in ENGINES}
    if before:
        out["before"] = {**os.environ, "PYTHONPATH": str(before.resolve())}
        out["before"].pop("FUSION_ENGINE", None)
    return out
READ = """
import faiss, resource, sys, time
t = time.perf_counter(); faiss.read_index({path!r}, {flag}); t = time.perf_counter() - t
print(t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--before", type=Path, help="a checkout of an earlier commit to measure beside")
    args = ap.parse_args()
    args.db = args.db.resolve()
    envs = environments(args.before)
    walls: dict[str, list[float]] = {e: [] for e in envs}
    for _ in range(args.runs):
        for engine, env in envs.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "retrieval.cli", "search", "a dog on a beach", "--db", str(args.db)],
                           check=True, capture_output=True, env=env, cwd="/")
            walls[engine].append(time.perf_counter() - start)
    parts = ["import the CLI (click)", "import the query layer (faiss, numpy; MiniLM starts loading)",
             "open library (map index, check ids)", "load the query side (numpy) + text model + memory",
             "first query (MiniLM, FAISS, rerank)"]
    engines = {}
    for engine in ENGINES:
        out = subprocess.run([sys.executable, "-c", PROBE.format(db=str(args.db))], check=True, capture_output=True,
                             text=True, env=envs[engine]).stdout.split()
        engines[engine] = {"wall_s": [round(w, 3) for w in walls[engine]],
                           "wall_s_median": round(statistics.median(walls[engine]), 3),
                           "breakdown_s": {k: round(float(v), 3) for k, v in zip(parts, out)},
                           "torch_imported": out[-2] == "True"}
    if "before" in envs:
        engines["before"] = {"wall_s": [round(w, 3) for w in walls["before"]],
                             "wall_s_median": round(statistics.median(walls["before"]), 3)}
    reads = {}
    for name, flag in (("read whole", "0"), ("memory-mapped", "faiss.IO_FLAG_MMAP_IFC")):
        r = subprocess.run([sys.executable, "-c", READ.format(path=str(args.db / "photos.faiss"), flag=flag)],
                           check=True, capture_output=True, text=True).stdout.split()
        reads[name] = {"seconds": round(float(r[0]), 3), "peak_rss_mb": int(r[1]) // 1024}
    report = {"library": str(args.db), "photos": int(out[-1]), "runs": args.runs, "engines": engines,
              "photo_index": reads, "index_bytes": (args.db / "photos.faiss").stat().st_size,
              "self_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cold_start.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Cold start of `fusion search`: ONNX Runtime against torch", "",
             f"{report['photos']:,} photos ({args.db}); a new `fusion search` process each run, the OS file cache "
             f"warm, the engines taking turns" + (f" with the checkout at {args.before} (`before`: the path "
                                                  "users had, same interpreter)" if args.before else "")
             + f". Median of {args.runs}:", ""]
    lines += [f"- {e}: **{r['wall_s_median']} s** (runs: {', '.join(map(str, r['wall_s']))}"
              + (f"; torch imported: {'yes' if r['torch_imported'] else 'no'})" if "torch_imported" in r else ")")
              for e, r in engines.items()]
    lines += ["", "Where the time goes (one process per engine, timed inside; the rest of the wall time is "
              "Python's own start and exit):", "", "| step | " + " | ".join(ENGINES) + " |",
              "| --- |" + " ---: |" * len(ENGINES)]
    lines += [f"| {k} | " + " | ".join(str(engines[e]["breakdown_s"][k]) for e in ENGINES) + " |" for k in parts]
    lines += ["", f"The photo index ({report['index_bytes'] / 1e6:.0f} MB):", "",
              "| opened | s | peak RSS MB |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {v['seconds']} | {v['peak_rss_mb']} |" for k, v in reads.items()]
    (RESULTS / "cold_start.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
