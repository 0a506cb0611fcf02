"""Indexing throughput, the two inference engines side by side, and the cost of a no-op re-run.

    python benchmarks/index_speed.py [--data DIR ...] [--large-from DIR --large N]
        [--runs onnx-int8:0,onnx:0,torch:auto,...] [--rounds 2] [--checkpoint FILE ...]

The photos: every photo of each --data folder, plus the N largest of --large-from (e.g. 100 of
the distractors' 947x710 COCO photos beside the 270 of coco/: 370 COCO-size photos). Each run
is ENGINE:PROCESSES (onnx-int8: ONNX Runtime with the int8 image network, what `fusion index`
runs for a new library; onnx: ONNX Runtime in float32; torch: the torch modules, float32; 0: in
this process, N: N worker processes, auto: what `fusion index` picks for that engine): index the photos into a fresh temporary library
(end-to-end photos/s, decode and writes included, worker start-up included) with the time
split (decode, the network alone, the network plus the projection and evidence, writes; summed
over threads and workers, so they overlap), then re-run over the unchanged tree. Runs take
turns round after round, so the machine's drift falls on all alike. In the same run, the bare
network's photos/s (forward only, on the photos already decoded, batch 4) for each engine: the
yardstick that end-to-end photos/s is set against. With several --checkpoint files (models to
compare), each is measured with each run. Writes benchmarks/results/index_speed.md and .json
(--name).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from indexer.run import index_paths
from retrieval.model.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
ENGINES = {"onnx-int8": ("onnx", "int8"), "onnx": ("onnx", "float32"), "torch": ("torch", "float32")}
RESULTS = ROOT / "benchmarks" / "results"


def photo_set(data: list[Path], large_from: Path | None, large: int) -> list[Path]:
    from PIL import Image

    from retrieval.encoders.encode import find_photos

    photos = find_photos([d / "images" if (d / "images").is_dir() else d for d in data])
    if large_from and large:
        extra = find_photos([large_from / "images" if (large_from / "images").is_dir() else large_from])

        def area(p):
            with Image.open(p) as im:
                return im.size[0] * im.size[1]

        photos += sorted(extra, key=lambda p: (-area(p), p))[:large]
    return photos


def measure(photos: list[Path], runtime: Runtime, processes: int | None, label: str, engine: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        first = index_paths(photos, Path(tmp), runtime=runtime, processes=processes)
        start = time.perf_counter()
        again = index_paths(photos, Path(tmp), runtime=runtime, processes=processes)
        noop_s = time.perf_counter() - start
    return {"model": label, "engine": engine, "processes": first["processes"],
            "asked": "auto" if processes is None else processes, "photos": first["added"],
            "photos_per_s": first["photos_per_s"], "timing": first["timing"], "total_s": first["seconds"],
            "noop_changes": again["added"] + again["updated"] + again["renamed"] + again["removed"],
            "noop_s": round(noop_s, 3)}


def bare_network(photos: list[Path], runtimes: dict, rounds: int) -> dict:
    """Forward-only photos/s of each engine's image network on the decoded photos, batch 4."""
    pixels = None
    rates: dict[str, list[float]] = {}
    for _ in range(rounds):
        for engine, rt in runtimes.items():
            enc = rt.image_encoder
            pixels = pixels or [enc.load(p) for p in photos]
            enc.encode(pixels[:8])
            start = time.perf_counter()
            enc.encode(pixels, batch_size=4, normalize=False)
            rates.setdefault(engine, []).append(len(pixels) / (time.perf_counter() - start))
    return {e: round(max(v), 1) for e, v in rates.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, action="append")
    ap.add_argument("--large-from", type=Path, help="a folder to add the largest photos of")
    ap.add_argument("--large", type=int, default=0, help="how many of --large-from's largest photos")
    ap.add_argument("--runs", default="onnx-int8:0,onnx:0,torch:0,torch:auto",
                    help="comma-separated ENGINE:PROCESSES (processes a number or auto)")
    ap.add_argument("--checkpoint", type=Path, action="append", default=[],
                    help="a model to measure (repeat to compare; default: the shipped one)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds over every model and run")
    ap.add_argument("--name", default="index_speed", help="results file stem")
    args = ap.parse_args()
    runs = [(e, None if p == "auto" else int(p)) for e, p in (r.split(":") for r in args.runs.split(","))]
    if any(e not in ENGINES for e, _ in runs):
        ap.error(f"--runs: engines are {', '.join(ENGINES)}")
    photos = photo_set(args.data or [ROOT / "data" / "demo"], args.large_from, args.large)
    models = {}
    for ck in args.checkpoint or [None]:
        for engine in sorted({e for e, _ in runs}):
            runtime = Runtime(ck, engine=ENGINES[engine][0], image_precision=ENGINES[engine][1])
            runtime.image_encoder.warm()  # model loading is start-up, not indexing
            _ = runtime.checkpoint, runtime.memory
            models[(str(ck) if ck else "shipped", engine)] = runtime
    bare = bare_network(photos, {e: rt for (m, e), rt in models.items() if m == next(iter(models))[0]},
                        args.rounds)
    rows = []
    for _ in range(args.rounds):
        for engine, processes in runs:
            for (label, e), runtime in models.items():
                if e == engine:
                    rows.append(measure(photos, runtime, processes, label, engine))
                    print(json.dumps(rows[-1]), flush=True)
    report = {"photos": len(photos), "data": [str(d) for d in args.data or []],
              "large_from": str(args.large_from) if args.large_from else None, "large": args.large,
              "cpus": os.cpu_count(), "bare_network_photos_per_s": bare, "runs": rows}
    write(report, args.name)


def write(report: dict, name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    bare = report["bare_network_photos_per_s"]
    yard = bare.get("torch")
    sources = ", ".join(Path(d).name for d in report["data"]) or "demo"
    if report["large"]:
        sources += f" + the {report['large']} largest of {Path(report['large_from']).name}"
    lines = ["# Indexing throughput: ONNX Runtime against torch", "",
             f"{report['photos']} photos ({sources}); exact FAISS index, batch 4, one decode thread per process. "
             "Decode, network and forward times are summed over threads and worker processes (they overlap); "
             "forward = the network plus the projection and the rerank evidence. Processes 0: everything in one "
             "process; N: N worker processes read, decode and encode (their start-up counted in photos/s). "
             "The runs took turns, round after round, in one run of this script.", "",
             "Bare image network in the same run (forward only, photos already decoded, batch 4): "
             + ", ".join(f"{e} {v} photos/s" for e, v in bare.items()) + ".", "",
             "| engine | processes (asked) | photos | photos/s end to end | x bare torch network | total s | "
             "decode s | network s | forward s | write s | no-op re-run s (changes) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["runs"]:
        t = r["timing"]
        ratio = f"{r['photos_per_s'] / yard:.2f}" if yard else "-"
        model = "" if r["model"] == "shipped" else f" ({Path(r['model']).name})"
        lines.append(f"| {r['engine']}{model} | {r['processes']} ({r['asked']}) | {r['photos']} | {r['photos_per_s']} | "
                     f"{ratio} | {r['total_s']} | {t['decode_s']} | {t.get('network_s', '-')} | {t['forward_s']} | "
                     f"{t['write_s']} | {r['noop_s']} ({r['noop_changes']}) |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
