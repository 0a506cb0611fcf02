"""Encoder throughput on this machine: decode + preprocess, forward pass and end to end for
photos (batch 1/4; Lite0 at 224 and 256 px, batch norms folded into the convolutions or
not; channels_last, as shipped), and captions/s for text.

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


VARIANTS = {f"{size}px,{'folded' if fold else 'unfolded'}": (size, fold)
            for size in (224, 256) for fold in (False, True)}  # shipped: 256px,folded


def bench_images(paths: list[Path], batches=(1, 4)) -> dict:
    """Median photos/s of REPEATS runs. The variants alternate inside each repeat, in turned
    order every other repeat: this shared 2-core machine drifts by +-30% over a minute, so
    blocks run one after the other would compare the drift, not the variants."""
    enc = {k: load_image_encoder(image_size=s, fold=f) for k, (s, f) in VARIANTS.items()}
    samples: dict[str, list[float]] = {}
    pixels = {}
    for size in sorted({s for s, _ in VARIANTS.values()}):
        e = next(enc[k] for k, (s, _) in VARIANTS.items() if s == size)
        samples[f"decode_preprocess_1_thread[{size}px]"] = [
            timed(len(paths), lambda: [e.load(p) for p in paths]) for _ in range(REPEATS)]
        pixels[size] = [e.load(p) for p in paths]
    for b in batches:
        for k, e in enc.items():
            e.encode(pixels[VARIANTS[k][0]][: 2 * b], batch_size=b)  # warm-up: oneDNN picks kernels per shape
        for rep in range(REPEATS):
            for k in (list(enc) if rep % 2 == 0 else list(enc)[::-1]):
                e, px = enc[k], pixels[VARIANTS[k][0]]
                samples.setdefault(f"forward[{k},batch={b}]", []).append(
                    timed(len(px), lambda: e.encode(px, batch_size=b)))
                samples.setdefault(f"end_to_end[{k},batch={b}]", []).append(
                    timed(len(paths), lambda: e.encode_files(paths, b, workers=1)))
    return {k: float(np.median(v)) for k, v in sorted(samples.items())}


def bench_text(captions: list[str]) -> dict:
    enc = load_text_encoder()
    enc.encode(captions[:64])
    return {f"text[batch={b}]": float(np.median([
        timed(len(captions), lambda: enc.encode(captions, batch_size=b)) for _ in range(REPEATS)]))
        for b in (16, 64, 256)}


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
        "captions_per_s": {k: round(v, 1) for k, v in bench_text(captions).items()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "encode_speed.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "encode_speed.md").write_text(to_markdown(results))
    print(to_markdown(results))


def to_markdown(r: dict) -> str:
    lines = ["# Encoder throughput", "",
             f"torch {r['machine']['torch']}, {r['machine']['cpus']} threads; "
             f"{r['photos']} photos from `{Path(r['data']).name}`, {r['captions']} captions; "
             f"median of {REPEATS} runs each.", "",
             "| measurement | photos/s |", "| --- | ---: |"]
    lines += [f"| {k} | {v} |" for k, v in r["photos_per_s"].items()]
    lines += ["", "| measurement | captions/s |", "| --- | ---: |"]
    lines += [f"| {k} | {v} |" for k, v in r["captions_per_s"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    np.random.seed(0)
    main()
