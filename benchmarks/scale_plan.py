"""The measured inputs of docs/scale-out.md: what one core does per photo, what one writer
commits per second, and what an IVF-PQ index costs per vector and per query.

    python benchmarks/scale_plan.py [--library DIR] [--photo FILE]

1. Decode cost of a phone-sized photo: a demo photo upscaled to 12 MP (4000x3000) and saved as
   JPEG q90, decoded as the indexer does (draft mode to the network's input, EXIF, preprocess).
2. The writer's ceiling: Writer.write of 32-photo batches with real-sized rows (384-d float16
   vector, rerank evidence, signature, metadata) into a fresh library; no model involved.
3. IVF-PQ at 1M real-like vectors (the 1M synthetic library from benchmarks/scale.py, or
   fresh synthetic vectors): code bytes, train and add time, single-query latency and
   recall@10 against exact search at several nprobe; the scan rate per code that the 100M
   plan extrapolates from.
Writes benchmarks/results/scale_plan.md and .json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def decode_cost(photo: Path, repeats: int = 20) -> dict:
    from PIL import Image

    from indexer.pipeline import Timing, loaded_photos
    from indexer.scan import FileStat
    from retrieval.model.runtime import Runtime

    enc = Runtime().image_encoder
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "12mp.jpg"
        Image.open(photo).convert("RGB").resize((4000, 3000), Image.BICUBIC).save(big, quality=90)
        st = os.stat(big)
        stat = FileStat(str(big), st.st_size, st.st_mtime_ns)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            next(loaded_photos([stat], enc, set(), Timing()))
            times.append(time.perf_counter() - t)
        return {"file_mb": round(st.st_size / 1e6, 2), "decode_ms_median": round(1000 * statistics.median(times), 1)}


def writer_ceiling(batches: int = 300) -> dict:
    from indexer.pipeline import Loaded, Timing
    from indexer.scan import FileStat
    from indexer.writer import Writer
    from retrieval.model.runtime import Runtime
    from retrieval.store.library import Library

    rt = Runtime()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        lib = Library.open(Path(tmp), rt.fingerprint, rt.dim, create=True, writer=True)
        w = Writer(lib, Timing())
        start = time.perf_counter()
        for b in range(batches):
            items = [Loaded(FileStat(f"/archive/{b:06d}/IMG_{n:04d}.jpg", 3_000_000, 1), f"{b:06d}{n:04d}" * 4, None,
                            {"width": 4000, "height": 3000, "taken_at": 1.7e9, "camera": "Phone"}) for n in range(32)]
            vecs = rng.standard_normal((32, rt.dim)).astype(np.float32)
            w.write(items, [os.urandom(176)] * 32, vecs, [os.urandom(256)] * 32, {})
        seconds = time.perf_counter() - start
        lib.save()
        size = sum(f.stat().st_size for f in Path(tmp).iterdir())
    rows = batches * 32
    return {"rows": rows, "rows_per_s": round(rows / seconds), "bytes_per_row_on_disk": round(size / rows)}


def planner_cost(library: Path) -> dict:
    """What `fusion index` holds in memory to plan a run: every photo row of the library."""
    import resource

    from sqlalchemy import func, select

    from indexer.scan import plan
    from retrieval.model.runtime import Runtime
    from retrieval.store.library import Library
    from retrieval.store.meta import Photo

    rt = Runtime()
    lib = Library.open(library, rt.fingerprint, rt.dim, mmap=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with lib.session() as s:
        n = s.scalar(select(func.count(Photo.id)))
        todo = plan(s, [], [Path("/")], [])
    seconds = time.perf_counter() - start
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    assert len(todo.missing) == n
    return {"photos": n, "seconds": round(seconds, 1), "bytes_per_photo": round(grown / n)}


def library_vectors(library: Path | None, n: int) -> np.ndarray:
    if library and (library / "library.sqlite").is_file():
        con = sqlite3.connect(f"file:{library / 'library.sqlite'}?mode=ro", uri=True)
        blobs = con.execute("select vector from photo_features limit ?", (n,)).fetchall()
        return np.frombuffer(b"".join(b for (b,) in blobs), "<f2").astype(np.float32).reshape(len(blobs), -1)
    rng = np.random.default_rng(0)  # clustered like photos: 2,000 themes plus noise
    centres = rng.standard_normal((2000, 384)).astype(np.float32)
    x = centres[rng.integers(0, 2000, n)] + 0.6 * rng.standard_normal((n, 384)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ivfpq(x: np.ndarray, nlist: int = 4096, m: int = 48, queries: int = 200) -> dict:
    import faiss

    rng = np.random.default_rng(1)
    q = x[rng.choice(len(x), queries, replace=False)] + 0.05 * rng.standard_normal((queries, x.shape[1])).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = faiss.IndexFlatIP(x.shape[1])
    exact.add(x)
    _, truth = exact.search(q, 10)
    index = faiss.index_factory(x.shape[1], f"IVF{nlist},PQ{m}", faiss.METRIC_INNER_PRODUCT)
    t = time.perf_counter()
    index.train(x[rng.choice(len(x), min(len(x), 32 * nlist), replace=False)])  # faiss: 30-256 x nlist
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    index.add(x)
    add_s = time.perf_counter() - t
    faiss.omp_set_num_threads(1)  # one query on one core, as a server answers it
    rows = []
    for nprobe in (16, 32, 64, 128):
        for refine in (0, 200):  # 200: PQ finds candidates, their float16 vectors re-score them
            index.nprobe = nprobe
            times, found = [], 0
            for i in range(queries):
                t = time.perf_counter()
                _, ids = index.search(q[i:i + 1], refine or 10)
                if refine:
                    cand = ids[0][ids[0] >= 0]
                    exact_scores = x[cand].astype(np.float16).astype(np.float32) @ q[i]
                    ids = cand[np.argsort(-exact_scores)[:10]][None]
                times.append(time.perf_counter() - t)
                found += len(set(ids[0]) & set(truth[i]))
            ms = 1000 * statistics.median(times)
            scanned = nprobe * len(x) / nlist
            rows.append({"nprobe": nprobe, "refine": refine, "ms_p50": round(ms, 3),
                         "recall_at_10": round(found / (10 * queries), 3), "codes_scanned": int(scanned),
                         "ns_per_code": round(1e6 * ms / scanned, 2)})
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return {"vectors": len(x), "dim": x.shape[1], "index": f"IVF{nlist},PQ{m}", "code_bytes": m,
            "train_s": round(train_s, 1), "add_s": round(add_s, 1), "search": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--library", type=Path, help="a large library to take real-like vectors from (e.g. benchmarks/scale.py's 1M)")
    ap.add_argument("--photo", type=Path, default=ROOT / "data" / "demo" / "images" / "000000358427.jpg")
    ap.add_argument("--vectors", type=int, default=1_000_000)
    args = ap.parse_args()
    out = {"decode_12mp": decode_cost(args.photo)}
    print(out, flush=True)
    out["writer"] = writer_ceiling()
    print(out["writer"], flush=True)
    if args.library:
        out["planner"] = planner_cost(args.library)
        print(out["planner"], flush=True)
    out["ivfpq"] = ivfpq(library_vectors(args.library, args.vectors))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale_plan.json").write_text(json.dumps(out, indent=2) + "\n")
    d, w, p = out["decode_12mp"], out["writer"], out["ivfpq"]
    lines = ["# Inputs of the 100M plan (docs/scale-out.md)", "",
             f"- Decode + preprocess of a 12 MP JPEG ({d['file_mb']} MB, q90), one core: **{d['decode_ms_median']} ms** median",
             f"- Writer ceiling (SQLite + FAISS add, 32-photo transactions, real-sized rows): **{w['rows_per_s']:,} rows/s**, "
             f"{w['bytes_per_row_on_disk']:,} bytes per photo on disk",
             f"- {p['index']} on {p['vectors']:,} {p['dim']}-d vectors: {p['code_bytes']} code bytes + 8 id bytes per vector, "
             f"train {p['train_s']} s, add {p['add_s']} s (2 cores)"]
    if "planner" in out:
        pl = out["planner"]
        lines.append(f"- Planning a run over a {pl['photos']:,}-photo library (every row loaded): {pl['seconds']} s, "
                     f"**{pl['bytes_per_photo']:,} bytes of driver memory per photo**")
    lines += ["",
             "Single queries on one core; refine 200: the 200 best by PQ re-scored with their float16 vectors "
             "(in RAM here; at 100M read from SQLite or a mapped file).", "",
             "| nprobe | refine | codes scanned | p50 ms (1 core) | ns per code | recall@10 vs exact |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in p["search"]:
        lines.append(f"| {r['nprobe']} | {r['refine'] or '-'} | {r['codes_scanned']:,} | {r['ms_p50']} | "
                     f"{r['ns_per_code']} | {r['recall_at_10']} |")
    (RESULTS / "scale_plan.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
