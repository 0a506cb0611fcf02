"""What storing the look-alike rows as int8 costs: one model, its look-alike training photos
kept in float32 and as the checkpoint stores them (int8 unit rows), Flickr8k dev ranked with
each. The shipped space and reranker are used as they are; the look-alike photos are Flickr8k's
train split only, so no dev photo finds itself. The shipped model trained on dev, so the
absolute figures flatter it: read the difference between the two rows.

    python benchmarks/int8_rows.py --flickr ../shared/data/flickr8k

Writes benchmarks/results/int8_rows.md and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flickr8k import split_of  # noqa: E402

from retrieval.evaluation.closed import DESCRIBE, SHIPPED, closed_gallery_recall  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flickr", type=Path, required=True)
    args = ap.parse_args()
    from retrieval.encoders.image_encoder import load_image_encoder
    from retrieval.encoders.text_encoder import load_text_encoder
    from retrieval.model.checkpoint import int8_rows, load_checkpoint
    from retrieval.model.memory import load_memory
    from retrieval.model.neighbours import Neighbours, build_neighbours
    from retrieval.model.query_side import l2n
    from retrieval.data.datasets import load_dataset
    from retrieval.training.features import dataset_features

    ck = load_checkpoint()
    te = load_text_encoder()
    ds = load_dataset(args.flickr)
    f = dataset_features(ds, load_image_encoder(ck.config.image_encoder, image_size=ck.config.image_size), te)
    f = f.without_cells_and_tokens()
    split = split_of(ds)
    train, dev = f.subset(np.flatnonzero(split == "train")), f.subset(np.flatnonzero(split == "dev"))
    with torch.no_grad():
        caption_itc = ck.space.embed_text(torch.as_tensor(train.text)).numpy()
    exact = build_neighbours(train.pooled, caption_itc, train.caption_image, ck.space.neighbours.basis.shape[1])
    stored = Neighbours(exact.mean, exact.basis,
                        *(l2n(int8_rows(torch.as_tensor(a)).numpy().astype(np.float32)) for a in (exact.photos, exact.captions)))
    memory = load_memory(te)
    rows = {}
    for name, nb in (("float32 rows", exact), ("int8 rows (as stored)", stored)):
        ck.space.neighbours = nb
        model = SimpleNamespace(config=ck.config, result=SimpleNamespace(space=ck.space), reranker=ck.reranker,
                                bank=None if ck.bank is None else ck.bank.numpy())
        r = closed_gallery_recall(model, memory, dev)
        rows[name] = {"t2i": r["t2i"][SHIPPED], "i2t": r["i2t"][DESCRIBE]}
    new = dev.pooled
    cos = np.sum(exact.transfer(new, ck.config.neighbour_k, ck.config.neighbour_tau)
                 * stored.transfer(new, ck.config.neighbour_k, ck.config.neighbour_tau), axis=1)
    out = {"checkpoint": ck.content_hash, "lookalike_photos": int(len(exact.photos)), "rows": rows,
           "transfer_cosine": {"min": float(cos.min()), "mean": float(cos.mean())}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "int8_rows.json").write_text(json.dumps(out, indent=2) + "\n")
    fmt = lambda v: " / ".join(f"{v[k]:.2f}" for k in ("r1", "r5", "r10"))  # noqa: E731
    md = [f"# Look-alike rows in float32 and as stored (int8)", "",
          f"Checkpoint {ck.content_hash}, {len(exact.photos):,} look-alike photos (Flickr8k train), Flickr8k dev "
          f"ranked (the model trained on dev: read the difference). R@1 / 5 / 10.", "",
          "| rows | text → image (search) | image → text (describe) |", "| --- | --- | --- |"]
    md += [f"| {n} | {fmt(v['t2i'])} | {fmt(v['i2t'])} |" for n, v in rows.items()]
    md += ["", f"Borrowed-caption vector of each dev photo, float32 against int8 rows: cosine mean "
               f"{cos.mean():.6f}, min {cos.min():.6f}.", ""]
    (RESULTS / "int8_rows.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
