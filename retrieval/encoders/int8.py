"""The image network in int8: ONNX Runtime's static QDQ quantisation of the exported float32
graph (per-channel int8 weights, uint8 activations), with the layers int8 hurts most kept in
float: the stem and the first block (whose activations' ranges a single scale fits worst: they
alone took the pooled vector's worst-case cosine to float32 from 0.95 to 0.99), the last block,
the head convolution and the classifier. About 1.7x the float32 graph's photos/s on two cores
(benchmarks/results/int8_onnx.md), and the default for new libraries where a calibration ships.

The activations' ranges are calibrated once on real photos and ship in the package
(calibration/<network>-<side>.json, 31 KB: Lite0 at 256 px, on the first 300 photos of
Flickr8k's folder by name); each machine builds the int8 graph from its float32 graph and those
ranges, which gives the same graph bytes every time, so every machine's int8 vectors agree.
`fusion export-onnx --calibrate DIR` makes the ranges again from other photos."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Sequence

from retrieval.errors import WeightsError

PRECISIONS = ("float32", "int8")
KEEP_FLOAT = ("/network/_conv_stem/", "/network/_blocks.0/", "/network/_blocks.15/", "/network/_conv_head/",
              "/network/_fc/", "/_fc/")
_BATCH = 4  # photos per calibration batch (MinMax ranges do not depend on it)


def calibration_file(name: str, side: int) -> Path | None:
    """The shipped ranges of network `name` fed `side` px, or None where none ship."""
    path = Path(str(resources.files("retrieval.encoders").joinpath("calibration", f"{name}-{side}.json")))
    return path if path.is_file() else None


def shipped_ranges(name: str, side: int) -> Path:
    """calibration_file, or a WeightsError naming the fix where none ships."""
    ranges = calibration_file(name, side)
    if ranges is None:
        raise WeightsError(f"no int8 calibration ships for {name} at {side} px; use FUSION_IMAGE_PRECISION=float32")
    return ranges


def default_precision(name: str, side: int, weights, engine: str = "onnx") -> str:
    """FUSION_IMAGE_PRECISION if set, else int8 on ONNX Runtime where a calibration ships for
    the packaged weights at this side, else float32 (FUSION_ENGINE=torch: the float32 torch path)."""
    env = os.environ.get("FUSION_IMAGE_PRECISION")
    if env:
        if env not in PRECISIONS:
            raise WeightsError(f"FUSION_IMAGE_PRECISION={env!r}: use one of {', '.join(PRECISIONS)}")
        return env
    shipped = weights is None and calibration_file(name, side) is not None
    return "int8" if engine == "onnx" and shipped else "float32"


@lru_cache(maxsize=8)
def ranges_digest(name: str, side: int) -> str:
    """What a library's fingerprint names: the shipped calibration the int8 vectors come from
    (read and hashed once a process; WeightsError where none ships)."""
    return hashlib.sha256(shipped_ranges(name, side).read_bytes()).hexdigest()[:8]


def _nodes_digest(model) -> str:
    return hashlib.sha256("\n".join(n.name for n in model.graph.node).encode()).hexdigest()[:16]


def _prepared(float_graph: Path, tmp: Path):
    """The float graph after ONNX Runtime's pre-processing (shape inference, fusions), and its
    node names' digest: the ranges name its tensors."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = tmp / "pre.onnx"
    quant_pre_process(str(float_graph), str(pre))
    return pre, _nodes_digest(onnx.load(str(pre), load_external_data=False))


def _quantise(pre: Path, dst: Path, reader, cache: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    names = [n.name for n in onnx.load(str(pre), load_external_data=False).graph.node]
    quantize_static(str(pre), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                    nodes_to_exclude=[n for n in names if n.startswith(KEEP_FLOAT)],
                    calibration_cache_path=str(cache))


def build_int8(float_graph: Path, ranges: Path, dst: Path) -> Path:
    """Quantise `float_graph` with the calibration `ranges` into `dst` (atomically)."""
    record = json.loads(Path(ranges).read_text())
    with tempfile.TemporaryDirectory(prefix="fusion-int8-") as tmp:
        pre, nodes = _prepared(float_graph, Path(tmp))
        if record.get("keep_float") != list(KEEP_FLOAT):  # the same ranges would name another graph
            raise WeightsError(f"{ranges}: made with other layers kept in float ({record.get('keep_float')}); "
                               "calibrate again: fusion export-onnx --calibrate PHOTO_DIR")
        if nodes != record["graph_nodes"]:
            raise WeightsError(f"{ranges}: its int8 ranges were made for another export of the network "
                               f"(graph {record['graph_nodes']}, this machine's {nodes}); index in float32 "
                               "with FUSION_IMAGE_PRECISION=float32, or calibrate again: fusion export-onnx "
                               "--calibrate PHOTO_DIR")
        cache = Path(tmp) / "ranges.json"
        cache.write_text(json.dumps(record["ort_ranges"]))
        part = Path(tmp) / "int8.onnx"
        _quantise(pre, part, None, cache)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, dst)
    return dst


def calibrate(float_graph: Path, pixels: Sequence, out: Path, source: str = "") -> dict:
    """Ranges of every quantised activation over `pixels` (preprocessed photos, uint8 arrays as
    ImageEncoder.load gives them), written to `out` with what they were made from."""
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader

    if not pixels:
        raise WeightsError("no photos to calibrate on")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"pixels": np.stack(pixels[i:i + _BATCH])} for i in range(0, len(pixels), _BATCH)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="fusion-int8-") as tmp:
        pre, nodes = _prepared(float_graph, Path(tmp))
        cache = Path(tmp) / "ranges.json"
        _quantise(pre, Path(tmp) / "int8.onnx", Reader(), cache)
        record = {"photos": len(pixels), "source": source, "keep_float": list(KEEP_FLOAT), "graph_nodes": nodes,
                  "ort_ranges": json.loads(cache.read_text())}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record
