"""`fusion bench recall`: recall@1/5/10 of a checkpoint on a captioned dataset, for ITC alone,
ITC + the shipped rerank, and every fusion variant."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from retrieval.model.checkpoint import load_checkpoint
from retrieval.training.datasets import load_dataset
from retrieval.errors import DatasetError
from retrieval.training.features import dataset_features
from retrieval.encoders.image_encoder import load_image_encoder
from retrieval.model.heads import SharedSpace
from retrieval.encoders.text_encoder import load_text_encoder
from retrieval.training.loop import head_scores, itc_scores, rerank_recall


def recall_report(data: Path, checkpoint: Path | None = None, candidates: int = 32,
                  image_encoder: str = "efficientnet-lite0", image_weights=None,
                  cache_dir: Path | None = None) -> dict:
    """Embed every photo and caption of `data` and rank: each caption against all photos
    (t2i), each photo against all captions (i2t, any of its captions is a hit)."""
    ck = load_checkpoint(checkpoint, image_encoder=image_encoder)
    ds = load_dataset(data)
    f = dataset_features(ds, load_image_encoder(image_encoder, image_weights), load_text_encoder(), cache_dir)
    f = f.subset(np.arange(len(f.pooled)))  # drops text-only captions: recall needs a photo
    if len(f.pooled) < 2 or len(f.text) == 0:
        raise DatasetError(f"{data}: recall needs captioned photos (found {len(f.pooled)} photos)")
    bridge = SharedSpace(ck.config, ck.space.class_embeddings)  # zero-initialised heads
    report = {
        "images": int(len(f.pooled)), "captions": int(len(f.text)), "candidates": candidates,
        "checkpoint": {"path": str(ck.path), "hash": ck.content_hash, "rerank": ck.config.rerank,
                       "rerank_weight": ck.config.rerank_weight},
    }
    rows = {"bridge (no training)": itc_scores(bridge, f), "itc": itc_scores(ck.space, f)}
    rows["rerank"] = rerank_recall(ck.rerank_head, ck.config.rerank_weight, f, ck.space, candidates)
    for variant, head in ck.heads.items():
        alpha = ck.alphas[variant]
        rows[f"{variant} (itc + {alpha:g} itm)"] = rerank_recall(head, alpha, f, ck.space, candidates)
        rows[f"{variant} (itm alone)"] = rerank_recall(head, 1.0, f, ck.space, candidates, itc_weight=0.0)
    for task in ("t2i", "i2t"):
        report[task] = {name: r[task] for name, r in rows.items()}
    report["rerank_ms_per_query"] = _rerank_ms(ck, f, candidates)
    return report


def _rerank_ms(ck, f, k: int, queries: int = 20) -> float:
    """Median wall time to rescore k candidates of one text query with the shipped head."""
    head, times = ck.rerank_head, []
    k = min(k, len(f.pooled))
    for q in range(min(queries, len(f.text))):
        caps, photos = np.full(k, q), np.arange(k)
        start = time.perf_counter()
        head_scores(head, f, caps, photos, np.zeros(k, np.float32))
        times.append(1000 * (time.perf_counter() - start))
    return round(float(np.median(times)), 2)


def to_markdown(report: dict) -> str:
    lines = [f"Recall@k (%) on {report['images']} photos / {report['captions']} captions; "
             f"rerank of ITC top {report['candidates']} with `{report['checkpoint']['rerank']}` "
             f"(weight {report['checkpoint']['rerank_weight']:g}); "
             f"rerank {report['rerank_ms_per_query']} ms/query.", "",
             "| method | t2i R@1 | t2i R@5 | t2i R@10 | i2t R@1 | i2t R@5 | i2t R@10 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, t in report["t2i"].items():
        i = report["i2t"][name]
        lines.append(f"| {name} | {t['r1']:.1f} | {t['r5']:.1f} | {t['r10']:.1f} | "
                     f"{i['r1']:.1f} | {i['r5']:.1f} | {i['r10']:.1f} |")
    return "\n".join(lines) + "\n"
