"""`fusion bench recall`: recall@1/5/10 of a checkpoint on a captioned dataset, for ITC alone,
ITC + the shipped rerank, and every fusion variant."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from retrieval.model.checkpoint import load_checkpoint
from retrieval.data.datasets import load_dataset
from retrieval.errors import DatasetError
from retrieval.training.features import dataset_features
from retrieval.encoders.image_encoder import load_image_encoder
from retrieval.encoders.text_encoder import load_text_encoder
from retrieval.training.fusion_heads import rerank_recall


def recall_report(data: Path, checkpoint: Path | None = None, candidates: int = 32,
                  image_encoder: str = "efficientnet-lite0", image_weights=None,
                  cache_dir: Path | None = None) -> dict:
    """Embed every photo and caption of `data` and rank: each caption against all photos
    (t2i), each photo against all captions (i2t, any of its captions is a hit)."""
    from retrieval.evaluation.closed import closed_gallery_recall
    from retrieval.model.memory import load_memory

    ck = load_checkpoint(checkpoint, image_encoder=image_encoder)
    ds = load_dataset(data)
    te = load_text_encoder(tops=ck.tops.get("text"))
    ie = load_image_encoder(image_encoder, image_weights, image_size=ck.config.image_size, tops=ck.tops.get("image"))
    f = dataset_features(ds, ie, te, cache_dir)
    f = f.subset(np.arange(len(f.pooled)))  # drops text-only captions: recall needs a photo
    if len(f.pooled) < 2 or len(f.text) == 0:
        raise DatasetError(f"{data}: recall needs captioned photos (found {len(f.pooled)} photos)")
    memory = load_memory(te) if ck.config.memory_digest else None
    bank = None if ck.bank is None else ck.bank.numpy()
    model = SimpleNamespace(config=ck.config, result=SimpleNamespace(space=ck.space), reranker=ck.reranker, bank=bank)
    report = {
        "images": int(len(f.pooled)), "captions": int(len(f.text)), "candidates": candidates,
        "checkpoint": {"path": str(ck.path), "hash": ck.content_hash, "rerank": ck.config.rerank,
                       "rerank_weight": ck.config.rerank_weight},
        **closed_gallery_recall(model, memory, f, candidates),
    }
    for variant, head in ck.heads.items():
        alpha = ck.alphas[variant]
        r = rerank_recall(head, alpha, f, ck.space, candidates)
        report["t2i"][f"{variant} head (itc + {alpha:g} itm)"] = r["t2i"]
    report["rerank_ms_per_query"] = _rerank_ms(ck, memory, f, candidates)
    return report


def _rerank_ms(ck, memory, f, k: int, queries: int = 20) -> float:
    """Median wall time to compute evidence and match logits for k candidates of one query."""
    from retrieval.model.embedder import Embedder

    emb = Embedder(ck.space, memory)
    pv = emb.photos(f)
    k = min(k, len(f.pooled))
    times = []
    for q in range(min(queries, len(f.text))):
        start = time.perf_counter()
        q_itc, q_sent = emb.texts(f.text[q:q + 1])
        itc = q_itc @ pv.search[:k].T
        ck.reranker.logits(emb.evidence(itc, q_itc, q_sent, pv.evidence.take(np.arange(k)[None])))
        times.append(1000 * (time.perf_counter() - start))
    return round(float(np.median(times)), 2)


def to_markdown(report: dict) -> str:
    lines = [f"Recall@k (%) on {report['images']} photos / {report['captions']} captions (a closed gallery: "
             f"every photo is captioned; see benchmarks/open_world.py for a real library's size); "
             f"rerank of the top {report['candidates']} at weight {report['checkpoint']['rerank_weight']:g}, "
             f"{report['rerank_ms_per_query']} ms/query.", "",
             "| method | t2i R@1 | t2i R@5 | t2i R@10 |", "| --- | ---: | ---: | ---: |"]
    for name, t in report["t2i"].items():
        lines.append(f"| {name} | {t['r1']:.1f} | {t['r5']:.1f} | {t['r10']:.1f} |")
    lines += ["", "| method | i2t R@1 | i2t R@5 | i2t R@10 |", "| --- | ---: | ---: | ---: |"]
    for name, i in report["i2t"].items():
        lines.append(f"| {name} | {i['r1']:.1f} | {i['r5']:.1f} | {i['r10']:.1f} |")
    return "\n".join(lines) + "\n"
