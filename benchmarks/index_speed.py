"""Indexing throughput and the cost of a no-op re-run.

    python benchmarks/index_speed.py [--data DIR ...] [--workers N] [--processes 0,2,auto]
        [--checkpoint FILE --checkpoint FILE ... [--rounds 3]]

For each dataset folder and each worker-process setting (0: in this process; auto: what
`fusion index` picks): index its photos into a fresh temporary library (end-to-end photos/s,
worker start-up included, with the decode / forward / write split, summed over workers),
then re-run over the unchanged tree. With several --checkpoint files (models to compare, e.g.
the shipped one and the one before it), each is measured in turn, round after round, so the
machine's load falls on both alike. Writes benchmarks/results/index_speed.md and .json (--name).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from indexer.run import index_paths
from retrieval.model.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def measure(data: Path, runtime: Runtime, workers: int, processes: int | None, label: str = "shipped") -> dict:
    images = data / "images" if (data / "images").is_dir() else data
    with tempfile.TemporaryDirectory() as tmp:
        first = index_paths([images], Path(tmp), runtime=runtime, workers=workers, processes=processes)
        start = time.perf_counter()
        again = index_paths([images], Path(tmp), runtime=runtime, workers=workers, processes=processes)
        noop_s = time.perf_counter() - start
    return {"model": label, "data": str(data), "processes": first["processes"], "photos": first["added"],
            "photos_per_s": first["photos_per_s"],
            "timing": first["timing"], "total_s": first["seconds"], "noop_changes":
            again["added"] + again["updated"] + again["renamed"] + again["removed"],
            "noop_s": round(noop_s, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, action="append")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--processes", default="0,auto", help="comma-separated worker-process counts, or auto")
    ap.add_argument("--checkpoint", type=Path, action="append", default=[],
                    help="a model to measure (repeat to compare; default: the shipped one)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds over every model and setting")
    ap.add_argument("--name", default="index_speed", help="results file stem")
    args = ap.parse_args()
    settings = [None if p == "auto" else int(p) for p in args.processes.split(",")]
    models = {}
    for ck in args.checkpoint or [None]:
        runtime = Runtime(ck)
        _ = runtime.image_encoder.network, runtime.checkpoint  # model loading is start-up, not indexing
        models[str(ck) if ck else "shipped"] = runtime
    rows = [measure(d, runtime, args.workers, p, label) for _ in range(args.rounds)
            for d in (args.data or [ROOT / "data" / "demo"]) for p in settings for label, runtime in models.items()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["# Indexing throughput", "", f"{args.workers} decode thread(s), batch 4, exact FAISS index; "
             "decode and forward times are summed over threads and worker processes (they overlap). "
             "Processes 0: everything in one process; N: N worker processes read, decode and encode "
             "(start-up included in photos/s).", "",
             "| model | data | processes | photos | photos/s end to end | total s | decode s | forward s | write s | no-op re-run s (changes) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        t = r["timing"]
        lines.append(f"| {Path(r['model']).name} | {Path(r['data']).name} | {r['processes']} | {r['photos']} | {r['photos_per_s']} | "
                     f"{r['total_s']} | {t['decode_s']} | {t['forward_s']} | {t['write_s']} | {r['noop_s']} ({r['noop_changes']}) |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
