"""Encoder throughput on this machine, the two inference engines side by side: decode +
preprocess, forward pass and end to end for photos (Lite0 at 256 px as shipped, batch norms
folded; torch with channels_last, ONNX Runtime on the graph exported from the same weights,
and on its int8 graph, retrieval/encoders/int8.py), captions/s and a single query's latency
for text.

    python benchmarks/encode_speed.py [--data DIR] [--photos N]

Writes benchmarks/results/encode_speed.md and .json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from retrieval.data.datasets import load_dataset
from retrieval.encoders.image_encoder import load_image_encoder
from retrieval.encoders.text_encoder import load_text_encoder

REPEATS = 3
RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent


def timed(n: int, fn) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


VARIANTS = {"torch": "torch", "onnx": "onnx"}  # engine per variant; both Lite0 at 256 px, folded
# the image network also in int8 on ONNX Runtime, what fusion index runs for a new library
IMAGE_VARIANTS = {"torch": ("torch", "float32"), "onnx": ("onnx", "float32"), "onnx-int8": ("onnx", "int8")}


def bench_images(paths: list[Path], batches=(1, 4, 8)) -> dict:
    """Median photos/s of REPEATS runs. The engines alternate inside each repeat, in turned
    order every other repeat: this shared 2-core machine drifts by +-30% over a minute, so
    blocks run one after the other would compare the drift, not the engines."""
    enc = {k: load_image_encoder(image_size=256, engine=e, precision=p) for k, (e, p) in IMAGE_VARIANTS.items()}
    for e in enc.values():
        e.warm()
    e = enc["torch"]
    samples: dict[str, list[float]] = {"decode_preprocess_1_thread[256px]": [
        timed(len(paths), lambda: [e.load(p) for p in paths]) for _ in range(REPEATS)]}
    pixels = [e.load(p) for p in paths]
    for b in batches:
        for e in enc.values():
            e.encode(pixels[: 2 * b], batch_size=b)  # warm-up: kernels are picked per shape
        for rep in range(REPEATS):
            for k in (list(enc) if rep % 2 == 0 else list(enc)[::-1]):
                e = enc[k]
                samples.setdefault(f"forward[{k},batch={b}]", []).append(
                    timed(len(pixels), lambda: e.encode(pixels, batch_size=b)))
                samples.setdefault(f"end_to_end[{k},batch={b}]", []).append(
                    timed(len(paths), lambda: e.encode_files(paths, b, workers=1)))
    return {k: float(np.median(v)) for k, v in sorted(samples.items())}


def bench_text(captions: list[str], queries: int = 200) -> tuple[dict, dict]:
    """captions/s in batches, and a one-text query's p50 latency in ms, per engine."""
    enc = {k: load_text_encoder(engine=e) for k, e in VARIANTS.items()}
    rates: dict[str, list[float]] = {}
    latency: dict[str, list[float]] = {k: [] for k in enc}
    for e in enc.values():
        e.encode(captions[:64])
    for rep in range(REPEATS):
        for k in (list(enc) if rep % 2 == 0 else list(enc)[::-1]):
            rates.setdefault(f"text[{k},batch=64]", []).append(
                timed(len(captions), lambda: enc[k].encode(captions, batch_size=64)))
    for i in range(queries):
        for k, e in enc.items():
            start = time.perf_counter()
            e.encode([captions[i % len(captions)]], normalize=False)
            latency[k].append(1000 * (time.perf_counter() - start))
    return ({k: float(np.median(v)) for k, v in rates.items()},
            {f"query[{k}]": float(np.median(v)) for k, v in latency.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "demo",
                    help="a dataset folder of COCO-size JPEGs (default: the demo collection)")
    ap.add_argument("--photos", type=int, default=96, help="photos per measurement (cycled)")
    args = ap.parse_args()
    ds = load_dataset(args.data)
    paths = [ds.image_path(i) for i in range(len(ds.images))]
    paths = (paths * (args.photos // len(paths) + 1))[: args.photos]
    captions = [c.text for c in ds.captions][:2000]
    results = {
        "machine": {"cpus": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "cpu": platform.processor()},
        "data": str(args.data), "photos": len(paths), "captions": len(captions),
        "photos_per_s": {k: round(v, 1) for k, v in bench_images(paths).items()},
    }
    rates, latency = bench_text(captions)
    results["captions_per_s"] = {k: round(v, 1) for k, v in rates.items()}
    results["query_p50_ms"] = {k: round(v, 2) for k, v in latency.items()}
    import onnxruntime

    results["machine"]["onnxruntime"] = onnxruntime.__version__
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "encode_speed.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "encode_speed.md").write_text(to_markdown(results))
    print(to_markdown(results))


def to_markdown(r: dict) -> str:
    lines = ["# Encoder throughput: ONNX Runtime against torch", "",
             f"torch {r['machine']['torch']} and ONNX Runtime {r['machine']['onnxruntime']}, "
             f"{r['machine']['cpus']} threads each, engines alternating; Lite0 at 256 px; "
             f"{r['photos']} photos from `{Path(r['data']).name}`, {r['captions']} captions; "
             f"median of {REPEATS} runs each.", "",
             "| measurement | photos/s |", "| --- | ---: |"]
    lines += [f"| {k} | {v} |" for k, v in r["photos_per_s"].items()]
    lines += ["", "| measurement | captions/s |", "| --- | ---: |"]
    lines += [f"| {k} | {v} |" for k, v in r["captions_per_s"].items()]
    lines += ["", "| one text query (encode only) | p50 ms |", "| --- | ---: |"]
    lines += [f"| {k} | {v} |" for k, v in r["query_p50_ms"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    np.random.seed(0)
    main()
