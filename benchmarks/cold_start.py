"""Cold start of `fusion search` on an existing library (e.g. the 1M-photo synthetic one that
benchmarks/scale.py builds): wall time of a new process, median of --runs, where the time goes,
and the photo index read whole vs memory-mapped.

    python benchmarks/cold_start.py --db DIR [--runs 5]

Writes benchmarks/results/cold_start.md and .json.
"""

from __future__ import annotations

import argparse
import json
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
from retrieval.query.search import open_searcher; t2 = time.perf_counter()
s = open_searcher({db!r}); t3 = time.perf_counter()
s.runtime.query; s.runtime.text_encoder.numpy_network; s.runtime.memory; t4 = time.perf_counter()
s.text("a dog on a beach"); t5 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, "torch" in sys.modules, len(s.lib.photos))
"""
READ = """
import faiss, resource, sys, time
t = time.perf_counter(); faiss.read_index({path!r}, {flag}); t = time.perf_counter() - t
print(t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    walls = []
    for _ in range(args.runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "retrieval.cli", "search", "a dog on a beach", "--db", str(args.db)],
                       check=True, capture_output=True)
        walls.append(time.perf_counter() - start)
    out = subprocess.run([sys.executable, "-c", PROBE.format(db=str(args.db))], check=True, capture_output=True,
                         text=True).stdout.split()
    parts = ["import the CLI (click)", "import the query layer (faiss, SQLAlchemy, numpy)",
             "open library (map index, check ids)", "load the query side (numpy) + text model + memory",
             "first query (MiniLM in numpy, FAISS, rerank)"]
    breakdown = {k: round(float(v), 3) for k, v in zip(parts, out)}
    torch_loaded = out[-2] == "True"
    reads = {}
    for name, flag in (("read whole", "0"), ("memory-mapped", "faiss.IO_FLAG_MMAP_IFC")):
        r = subprocess.run([sys.executable, "-c", READ.format(path=str(args.db / "photos.faiss"), flag=flag)],
                           check=True, capture_output=True, text=True).stdout.split()
        reads[name] = {"seconds": round(float(r[0]), 3), "peak_rss_mb": int(r[1]) // 1024}
    report = {"library": str(args.db), "photos": int(out[-1]), "runs": args.runs,
              "wall_s": [round(w, 3) for w in walls], "wall_s_median": round(statistics.median(walls), 3),
              "breakdown_s": breakdown, "torch_imported": torch_loaded, "photo_index": reads,
              "index_bytes": (args.db / "photos.faiss").stat().st_size,
              "self_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cold_start.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Cold start of `fusion search`", "",
             f"{report['photos']:,} photos ({args.db}); a new `fusion search` process each run, the OS file cache "
             f"warm. Median of {args.runs}: **{report['wall_s_median']} s** (runs: "
             f"{', '.join(map(str, report['wall_s']))}).", "",
             f"Where the time goes (one process, timed inside; torch imported: {'yes' if torch_loaded else 'no'}; "
             "the rest of the wall time is Python's own start and exit):", "",
             "| step | s |", "| --- | ---: |"] + [f"| {k} | {v} |" for k, v in breakdown.items()]
    lines += ["", f"The photo index ({report['index_bytes'] / 1e6:.0f} MB):", "",
              "| opened | s | peak RSS MB |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {v['seconds']} | {v['peak_rss_mb']} |" for k, v in reads.items()]
    (RESULTS / "cold_start.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
