"""Which layers may run in int8? Static int8 quantisation of the exported Lite0 graph (ONNX
Runtime's QDQ format, per-channel weights, activations calibrated on real photos): every layer,
the first shipped choice (the stem, last block, head convolution and classifier kept in float),
and the shipped one (retrieval/encoders/int8.py: the first block in float too), each calibrated
on --calibrate, plus the graph built from the ranges that ship. Measured side by side with the
float32 graph: forward photos/s (2 threads, batch 4, alternating rounds) and how faithful each
is on held-out photos (cosine to float32 per output, min and mean; same top-1 ImageNet label).

    python benchmarks/int8_onnx.py --calibrate DIR --held-out DIR [--photos 300]

Writes benchmarks/results/int8_onnx.md and .json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from retrieval.encoders.encode import find_photos
from retrieval.encoders.image_encoder import load_image_encoder
from retrieval.encoders.int8 import KEEP_FLOAT as SHIPPED_FLOAT
from retrieval.encoders.onnx_engine import open_session

RESULTS = Path(__file__).resolve().parent / "results"
FIRST_FLOAT = tuple(k for k in SHIPPED_FLOAT if k != "/network/_blocks.0/")
OUTPUTS = ("pooled", "logits", "cells", "mid")


def quantise(src: Path, dst: Path, calibration: list[np.ndarray], keep_float: tuple) -> list[str]:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"pixels": np.stack(calibration[i:i + 8])} for i in range(0, len(calibration), 8)])

        def get_next(self):
            return next(self.batches, None)

    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre))
    names = [n.name for n in onnx.load(str(pre)).graph.node]
    excluded = [n for n in names if n.startswith(keep_float)] if keep_float else []
    quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, nodes_to_exclude=excluded)
    return excluded


def run(session, pixels: list[np.ndarray]) -> list[np.ndarray]:
    parts = [session.run(None, {"pixels": np.stack(pixels[i:i + 4])}) for i in range(0, len(pixels), 4)]
    return [np.concatenate(p) for p in zip(*parts)]


def cosine(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calibrate", type=Path, required=True, help="photos to calibrate activations on")
    ap.add_argument("--held-out", type=Path, required=True, help="other photos to compare outputs on")
    ap.add_argument("--photos", type=int, default=300, help="photos from each folder")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    enc = load_image_encoder(image_size=256, engine="onnx")
    src = enc.graph.ensure()
    calib = [enc.load(p) for p in find_photos([args.calibrate])[:args.photos]]
    held = [enc.load(p) for p in find_photos([args.held_out])[:args.photos]]
    sessions = {"float32": open_session(src, 2)}
    excluded = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, keep in (("int8, all layers", ()), ("int8, stem, last block, head and classifier in float",
                                                     FIRST_FLOAT),
                           ("int8, also the first block in float (shipped)", SHIPPED_FLOAT)):
            dst = Path(tmp) / f"{len(sessions)}.onnx"
            excluded[name] = len(quantise(src, dst, calib, keep))
            sessions[name] = open_session(dst, 2)
        shipped = load_image_encoder(image_size=256, engine="onnx", precision="int8")
        sessions["int8 as shipped (the package's ranges)"] = open_session(shipped.graph.ensure(), 2)
        ref = run(sessions["float32"], held)
        rows = {}
        for name, s in sessions.items():
            out = run(s, held)
            rows[name] = {o: {"min": float(cosine(a, b).min()), "mean": float(cosine(a, b).mean())}
                          for o, a, b in zip(OUTPUTS, out, ref)}
            rows[name]["top1_same"] = float((out[1].argmax(1) == ref[1].argmax(1)).mean())
            rows[name]["excluded_nodes"] = excluded.get(name, 0)
        speed: dict[str, list[float]] = {k: [] for k in sessions}
        bench = held[:96]
        for s in sessions.values():
            run(s, bench[:8])
        for rep in range(args.rounds):
            for name in (list(sessions) if rep % 2 == 0 else list(sessions)[::-1]):
                start = time.perf_counter()
                run(sessions[name], bench)
                speed[name].append(len(bench) / (time.perf_counter() - start))
    for name in rows:
        rows[name]["photos_per_s"] = round(max(speed[name]), 1)
    report = {"calibration_photos": len(calib), "held_out_photos": len(held), "calibrate": str(args.calibrate),
              "held_out": str(args.held_out), "keep_float": list(SHIPPED_FLOAT), "variants": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "int8_onnx.json").write_text(json.dumps(report, indent=2) + "\n")
    base = rows["float32"]["photos_per_s"]
    lines = ["# int8 image network on ONNX Runtime", "",
             f"Lite0 at 256 px; static QDQ int8, per-channel weights, activations calibrated on {len(calib)} photos of "
             f"`{Path(args.calibrate).name}`; outputs compared with float32 on {len(held)} other photos of "
             f"`{Path(args.held_out).name}`; forward photos/s on {min(96, len(held))} of them, 2 threads, batch 4, best of "
             f"{args.rounds} alternating rounds.", "",
             "| graph | photos/s | x float32 | pooled cosine min / mean | logits | per-cell logits | mid | same top-1 label |",
             "| --- | ---: | ---: | --- | --- | --- | --- | ---: |"]
    for name, r in rows.items():
        cells = " | ".join(f"{r[o]['min']:.4f} / {r[o]['mean']:.4f}" for o in OUTPUTS)
        lines.append(f"| {name} | {r['photos_per_s']} | {r['photos_per_s'] / base:.2f} | {cells} | {r['top1_same']:.1%} |")
    (RESULTS / "int8_onnx.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
