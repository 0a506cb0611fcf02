"""`fusion index` in-process against `fusion index --ray` (a local Ray on this machine), on the
same photos: photos/s (median of --repeats fresh runs), time to the first committed photo,
and the driver's peak memory.

    python benchmarks/ray_index.py --data ../shared/data/flickr8k --data ../shared/data/coco [--repeats 3]

Each run is a fresh process (`fusion index` as a user starts it) into a fresh library, so
model loading and Ray's start-up count. Writes benchmarks/results/ray_index.md and .json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# one run, in a child process: prints a JSON line with its figures
CHILD = r"""
import json, resource, sys, time
from pathlib import Path
start = time.perf_counter()
from indexer.run import index_paths
first = []

class Bar:
    def update(self, n):
        if not first:
            first.append(time.perf_counter() - start)
    def close(self):
        pass

args = json.loads(sys.argv[1])
ray = None
if args["layout"] != "in-process":
    from indexer.on_ray import RayOptions
    ray = RayOptions(actors=args["actors"], cpus_per_actor=args["cpus"])
s = index_paths([Path(p) for p in args["paths"]], Path(args["db"]), bar=lambda total: Bar(), ray=ray)
total = time.perf_counter() - start
print(json.dumps({"photos": s["added"], "skipped": len(s["skipped"]), "total_s": total,
                  "first_s": first[0] if first else None, "timing": s["timing"],
                  "driver_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

LAYOUTS = {  # name: (actors, CPUs per actor)
    "in-process": (None, None),
    "ray: 2 actors x 1 CPU": (2, 1.0),
    "ray: 1 actor x 2 CPUs": (1, 2.0),
}


def run(layout: str, paths: list[Path]) -> dict:
    actors, cpus = LAYOUTS[layout]
    with tempfile.TemporaryDirectory() as tmp:
        args = {"layout": layout, "actors": actors, "cpus": cpus, "paths": [str(p) for p in paths], "db": tmp}
        out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True,
                             cwd=ROOT, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"{layout} failed:\n{out.stderr[-2000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["photos_per_s"] = r["photos"] / r["total_s"]
    # after the first result: the pipeline's pace once models are loaded and Ray is up
    r["steady_per_s"] = (r["photos"] - 32) / (r["total_s"] - r["first_s"]) if r["first_s"] else None
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, action="append", required=True, help="dataset or photo folder (repeatable)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated, from: " + ", ".join(LAYOUTS))
    ap.add_argument("--out", default="ray_index", help="results file name, without .md/.json")
    args = ap.parse_args()
    paths = [d / "images" if (d / "images").is_dir() else d for d in args.data]
    rows = []
    for layout in args.layouts.split(","):
        runs = []
        for i in range(args.repeats):
            runs.append(run(layout, paths))
            print(f"{layout} run {i + 1}: {runs[-1]['photos']} photos, {runs[-1]['photos_per_s']:.1f}/s, "
                  f"first after {runs[-1]['first_s']:.1f} s", flush=True)
        med = lambda k: statistics.median(r[k] for r in runs)  # noqa: E731
        rows.append({"layout": layout, "photos": runs[0]["photos"], "photos_per_s": med("photos_per_s"),
                     "steady_per_s": med("steady_per_s"), "first_s": med("first_s"),
                     "driver_rss_mb": med("driver_rss_mb"), "runs": runs})
    base = rows[0]["photos_per_s"] if rows[0]["layout"] == "in-process" else None
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["# In-process indexing against Ray Data", "",
             f"{rows[0]['photos']} photos ({', '.join(str(d) for d in args.data)}), each run a fresh `fusion index` "
             f"process into a fresh library (model loading and Ray start-up included); median of {args.repeats}. "
             "Steady pace: photos after the first committed batch over the time after it.", "",
             "| layout | photos/s end to end | ratio to in-process | steady photos/s | first result s | driver peak RSS MB |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ratio = f"{r['photos_per_s'] / base:.2f}" if base else "-"
        lines.append(f"| {r['layout']} | {r['photos_per_s']:.1f} | {ratio} | {r['steady_per_s']:.1f} | "
                     f"{r['first_s']:.1f} | {r['driver_rss_mb']:.0f} |")
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
