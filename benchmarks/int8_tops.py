"""Do the shipped int8 ranges still serve Lite0 with deeper tuned tops? (issue 32)

The int8 graph quantises every block but the stem, the first and the last (retrieval/encoders/
int8.py) with activation ranges calibrated on the pretrained network. Tuning two blocks deep
(`fusion train --tops-depth 2`) changes block 14, one of the quantised ones. This compares
ONNX Runtime's float32 and int8 graphs on the same photos, for the shipped checkpoint's tops
and for tops tuned `--depth` deep as open_world.py split 0 tunes them (all Flickr8k photos,
seed 0, `--epochs`, half way back: `--mix`):

    python benchmarks/int8_tops.py --flickr ../shared/data/flickr8k --depth 2 [--photos data/demo]

Tuning takes ~12 minutes here at depth 2; `--tops FILE` saves the tuned tops there, or reads
them if the file exists. Writes benchmarks/results/int8-tops-depth<N>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune import tune_tops  # noqa: E402
from int8_onnx import cosine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("pooled", "logits", "cells", "mid")


def compare(tops: dict, photos: list) -> dict:
    """float32 against int8 ONNX Runtime graphs of Lite0 at 256 px with `tops`, on `photos`."""
    from retrieval.encoders.image_encoder import load_image_encoder

    enc = {p: load_image_encoder(image_size=256, engine="onnx", precision=p, tops=tops) for p in ("float32", "int8")}
    pixels = [enc["float32"].load(p) for p in photos]
    f = {p: e.encode(pixels, normalize=False) for p, e in enc.items()}
    out = {k: {"min": round(float(c.min()), 4), "mean": round(float(c.mean()), 4)}
           for k in KINDS for c in [cosine(*(getattr(f[p], k).reshape(len(photos), -1) for p in ("int8", "float32")))]}
    out["top-1 label agrees"] = round(float((f["int8"].logits.argmax(1) == f["float32"].logits.argmax(1)).mean()), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flickr", type=Path, required=True, help="the Flickr8k folder the tops are tuned on")
    ap.add_argument("--depth", type=int, default=2, help="blocks / layers tuned per encoder")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--mix", type=float, default=0.5)
    ap.add_argument("--photos", type=Path, default=Path("data/demo"), help="folder of photos to compare on")
    ap.add_argument("--tops", type=Path, help="npz of the tuned image tops: read if it exists, else saved there")
    args = ap.parse_args()

    from retrieval.data.datasets import load_dataset
    from retrieval.encoders.encode import find_photos
    from retrieval.encoders.image_encoder import load_image_encoder
    from retrieval.encoders.text_encoder import load_text_encoder
    from retrieval.model.checkpoint import load_checkpoint

    if args.tops and args.tops.is_file():
        deep = dict(np.load(args.tops))
    else:
        ie = load_image_encoder(image_size=256)
        tune_tops(ie, load_text_encoder(), load_dataset(args.flickr), args.epochs, 0, all_photos=True, mix=args.mix,
                  depth=args.depth)
        deep = ie.tops
        if args.tops:
            np.savez(args.tops, **deep)
    photos = find_photos([args.photos])
    report = {"photos": len(photos), "depth": args.depth, "epochs": args.epochs, "mix": args.mix,
              "shipped tops (depth 1)": compare(load_checkpoint().tops["image"], photos),
              f"tops tuned {args.depth} deep": compare(deep, photos)}
    name = f"int8-tops-depth{args.depth}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    rows = [f"# int8 against float32 with tuned tops ({len(photos)} photos of {args.photos})", "",
            "Written by `benchmarks/int8_tops.py`: cosine of each int8 feature to float32's, min / mean.", "",
            "| tops | " + " | ".join(KINDS) + " | top-1 label agrees |", "| --- |" + " --- |" * (len(KINDS) + 1)]
    for label in ("shipped tops (depth 1)", f"tops tuned {args.depth} deep"):
        r = report[label]
        rows.append(f"| {label} | " + " | ".join(f"{r[k]['min']:.4f} / {r[k]['mean']:.4f}" for k in KINDS)
                    + f" | {100 * r['top-1 label agrees']:.1f}% |")
    (RESULTS / f"{name}.md").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
