"""Where a warm text query's time goes at 100k photos, and what bounds each part on this
machine: the exact FAISS scan (float16, one query) against the memory bandwidth numpy reaches
reading the same kind of array, the scan split over two threads, the look-alike evidence
computed in a second thread while the scan runs, and MiniLM's one-query run on ONNX Runtime in
float32 (threads sleeping, as shipped, and spinning) against a dynamically quantised int8 graph (latency and
how faithful its sentence vectors are, on real captions). Each pair of settings alternates
within one run.

    python benchmarks/query_floor.py --db LIBRARY --captions FILE.jsonl [--rounds 200]

LIBRARY: a library of synthetic photos (benchmarks/search_speed.py builds them; synthetic.build).
Writes benchmarks/results/query_floor.md and .json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from retrieval.encoders.onnx_engine import open_session, usable_cpus
from retrieval.model import evidence as E
from retrieval.query.search import open_searcher
from retrieval.store.vectors import VectorStore

RESULTS = Path(__file__).resolve().parent / "results"


def spinning(path: Path):
    """The shipped session's options, but its idle threads spin (retrieval/encoders/onnx_engine.py)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = usable_cpus(), 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def alternating(fns: dict, rounds: int) -> dict:
    """Median ms of each callable, the callables taking turns one call at a time."""
    times: dict = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k].append(1000 * (time.perf_counter() - start))
    return {k: round(float(np.median(v)), 3) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--captions", type=Path, required=True, help="a JSON-lines file with a caption field")
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    import faiss

    s = open_searcher(args.db)
    s.text("warm up")
    s.text("warm up again")
    te, emb = s.runtime.text_encoder, s.runtime.embedder
    q = q_itc = s.runtime.embed_texts(te.encode(["a dog running on a beach"], normalize=False).pooled)
    photos, captions = emb.lookalikes
    mapped = s.lib.photos
    in_memory = VectorStore.load(args.db / "photos.faiss", s.runtime.dim, mmap=False)
    n = len(mapped)
    faiss.omp_set_num_threads(1)

    def proto():
        sim = q_itc @ captions.T
        top = np.argpartition(-sim, E.LOOKALIKES - 1, axis=1)[:, :E.LOOKALIKES]
        z = np.take_along_axis(sim, top, 1) / E.LOOKALIKE_TAU
        w = np.exp(z - z.max(1, keepdims=True))
        return np.einsum("qk,qkd->qd", w / w.sum(1, keepdims=True), photos[top])

    pool = ThreadPoolExecutor(2)

    def both(a, b):
        f, g = pool.submit(a), pool.submit(b)
        f.result(), g.result()

    scan = lambda: mapped.search(q, 32)  # noqa: E731
    fp32 = np.random.default_rng(0).standard_normal((n, s.runtime.dim)).astype(np.float32)
    out = {"photos": n, "dim": s.runtime.dim, "rounds": args.rounds}
    out["scan_ms"] = alternating({"exact scan, float16, memory-mapped (as searches run)": scan,
                                  "exact scan, float16, read into memory": lambda: in_memory.search(q, 32),
                                  "numpy float32 matrix-vector product over the same rows (twice the bytes)":
                                      lambda: fp32 @ q[0]}, args.rounds)
    out["overlap_ms"] = alternating({"two scans, one after the other": lambda: (scan(), scan()),
                                     "two scans in two threads at once": lambda: both(scan, scan),
                                     "scan, then the look-alike evidence": lambda: (scan(), proto()),
                                     "scan and the look-alike evidence in two threads at once":
                                         lambda: both(scan, proto)}, args.rounds)
    out["scan_gb_per_s"] = round(n * s.runtime.dim * 2 / 1e6 / next(iter(out["scan_ms"].values())), 1)
    del fp32

    from onnxruntime.quantization import QuantType, quantize_dynamic

    texts = [json.loads(line)["caption"] for line in args.captions.open()][:2000]
    src = te.graph.ensure()
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "int8.onnx"
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        sessions = {"float32, threads sleeping (shipped)": open_session(src),
                    "float32, threads spinning": spinning(src),
                    "int8 (dynamic quantisation), threads sleeping": open_session(dst)}
        ids, mask, _ = te.token_ids(["a dog running on the beach with a ball"])
        feeds = {"input_ids": ids, "attention_mask": mask}
        out["minilm_query_ms"] = alternating({k: (lambda v=v: v.run(None, feeds)) for k, v in sessions.items()},
                                             args.rounds)
        ref, got = [], []
        for i in range(0, len(texts), 64):
            ids, mask, _ = te.token_ids(texts[i:i + 64])
            feeds = {"input_ids": ids, "attention_mask": mask}
            ref.append(sessions["float32, threads sleeping (shipped)"].run(None, feeds)[0])
            got.append(sessions["int8 (dynamic quantisation), threads sleeping"].run(None, feeds)[0])
    a, b = np.concatenate(ref), np.concatenate(got)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    out["int8_minilm_cosine"] = {"captions": len(texts), "min": round(float(cos.min()), 4),
                                 "mean": round(float(cos.mean()), 4)}
    write(out)


def write(out: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "query_floor.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["# What bounds a warm text query at 100k photos", "",
             f"{out['photos']:,} synthetic photos, {out['dim']} dims; median ms of {out['rounds']} calls each, the "
             "settings of each table taking turns call by call in one run.", "",
             "| FAISS scan of one query | ms |", "| --- | ---: |"]
    lines += [f"| {k} | {v} |" for k, v in out["scan_ms"].items()]
    lines += ["", f"The exact scan reads {out['scan_gb_per_s']} GB/s of float16 codes.", "",
              "| two things at once on the two cores | ms |", "| --- | ---: |"]
    lines += [f"| {k} | {v} |" for k, v in out["overlap_ms"].items()]
    lines += ["", "| MiniLM, one query of 11 word pieces, ONNX Runtime | ms |", "| --- | ---: |"]
    lines += [f"| {k} | {v} |" for k, v in out["minilm_query_ms"].items()]
    c = out["int8_minilm_cosine"]
    lines += ["", f"int8 MiniLM's sentence vectors against float32's on {c['captions']} real captions: cosine min "
                  f"{c['min']}, mean {c['mean']} (the engine's bar for the same vectors: 0.9999)."]
    (RESULTS / "query_floor.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
