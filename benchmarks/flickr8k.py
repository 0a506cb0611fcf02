"""The standard Flickr8k benchmark: train the whole model as `fusion train` does, without
Flickr8k's `dev` photos, then rank dev's 1,000 photos and 5,000 captions (the standard 1K
protocol): text -> image as search ranks, image -> text as `fusion describe` ranks.

    python benchmarks/flickr8k.py --flickr ../shared/data/flickr8k \
        --data ../shared/data/coco --data ../shared/data/coco-extra \
        --distractors ../shared/data/distractors [--exclude data/demo] [recipe options]

Model choices are made on dev and on the open-world folds (benchmarks/open_world.py), never on
Flickr8k's test split, which no one here sees. Writes benchmarks/results/flickr8k.md and .json
(--name changes the stem; every run, flickr8k*.json and f8-*.json, also joins the table of
runs in flickr8k-runs.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe import add_recipe_options, changed, depth_arg, recipe  # noqa: E402

from retrieval.evaluation.closed import DESCRIBE, SHIPPED, closed_gallery_recall  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
# Published Flickr8k 1K test R@1, text -> image / image -> text, systems on frozen ImageNet
# features or detector regions (the papers' own tables)
PUBLISHED = [
    ("Karpathy & Fei-Fei, BRNN (CVPR 2015)", 11.8, 16.5),
    ("Kiros et al., VSE (2014)", 12.5, 18.0),
    ("Ma et al., m-CNN (ICCV 2015)", 20.3, 24.8),
    ("Klein et al., Fisher vectors, VGG (CVPR 2015)", 21.2, 31.0),
    ("NAA, ResNet", 27.7, 37.2),
    ("MFM", 28.4, 35.6),
    ("Lee et al., SCAN, bottom-up regions (ECCV 2018)", 38.3, 52.2),
    ("Chen et al., IMRAM (CVPR 2020)", 41.0, 54.7),
]


def with_max_pool(f):
    """`f` with each photo's max over its grid cells appended to its mid-level features."""
    from dataclasses import replace

    return replace(f, mid=np.concatenate([f.mid, f.grid.max(1).astype(np.float32)], axis=1))


def distractors_with_max_pool(folder: Path, ie):
    from retrieval.encoders.encode import find_photos
    from retrieval.training.features import Photos

    f, _, _ = ie.encode_files(find_photos([folder]), normalize=False, grid=True)
    return Photos(f.pooled, f.logits, f.cells, np.concatenate([f.mid, f.grid.max(1)], axis=1))


def split_of(ds) -> np.ndarray:
    """Each photo's Flickr8k split (`split` field of its first caption)."""
    out = np.array(["none"] * len(ds.images), dtype=object)
    for c in ds.captions:
        if c.image is not None:
            out[c.image] = c.extra.get("split", "none")
    return out


def run(args) -> dict:
    from retrieval.encoders.image_encoder import load_image_encoder
    from retrieval.encoders.text_encoder import load_text_encoder
    from retrieval.model.memory import load_memory
    from retrieval.data.datasets import load_dataset
    from retrieval.training.features import DatasetFeatures, dataset_features, folder_features
    from retrieval.training.fragments import for_training
    from retrieval.training.rerank import nonsense_queries
    from retrieval.training.trainer import class_embeddings, image_size, model_config, split, train_model

    tc = recipe(args)
    if args.heads:
        from dataclasses import replace

        tc = replace(tc, variants=tuple(args.heads.split(",")))
    ie = load_image_encoder(args.image_encoder, image_size=image_size(args.image_encoder, tc))
    te = load_text_encoder()
    flickr = load_dataset(args.flickr)
    tuned = None
    if args.tune_tops:  # an experiment: the fine-tuning lab's tops first, then the recipe on their features
        from finetune import tune_tops

        tuned = tune_tops(ie, te, flickr, args.tune_tops, tc.seed, mix=args.tune_mix,
                          depth=args.tune_depth, fragment_share=tc.tops_fragment_share)[-1]
    datasets = [load_dataset(d) for d in args.data]
    datasets = [flickr] + datasets if args.val_from_flickr else datasets + [flickr]
    feats = [dataset_features(ds, ie, te) for ds in datasets]
    feats = [for_training(f, ds, te, tc) for f, ds in zip(feats, datasets)]  # caption fragments, if asked
    if not tc.variants and not args.max_pool:  # as fusion train: nothing reads cells and tokens
        feats = [f.without_cells_and_tokens() for f in feats]
    dev = np.flatnonzero(split_of(flickr) == "dev")
    if not len(dev):
        raise SystemExit(f"{args.flickr}: no photo has split 'dev'")
    held = {Path(flickr.images[i]).name for i in dev}
    held |= {Path(p).name for d in args.exclude for p in load_dataset(d).images}
    train, val = split(feats, [ds.images for ds in datasets], held, args.val_photos, tc.seed)
    others = folder_features(args.distractors, ie) if args.distractors else None
    memory = load_memory(te)
    cfg = model_config(args.image_encoder, te, memory, tc)
    if args.max_pool:  # an experiment: max-pooled grid cells beside the mid-level features
        from dataclasses import replace

        train, val, feats = with_max_pool(train), with_max_pool(val), [with_max_pool(f) for f in feats]
        if others is not None:
            others = distractors_with_max_pool(args.distractors, ie)
        cfg = replace(cfg, mid_dim=cfg.mid_dim + cfg.image_dim)
    nonsense = te.encode(nonsense_queries(seed=tc.seed), normalize=False).pooled
    start = time.perf_counter()
    model = train_model(cfg, class_embeddings(te), train, val, memory, tc, others, nonsense,
                        log=lambda e: print(e, file=sys.stderr, flush=True))
    seconds = time.perf_counter() - start
    test = feats[datasets.index(flickr)].subset(dev)
    scores = closed_gallery_recall(model, memory, test, args.candidates)
    from retrieval.evaluation.short_queries import short_query_scores

    in_dev = set(dev.tolist())  # dev's captions in test.text's order (DatasetFeatures.subset keeps it)
    texts = [c.text for c in flickr.captions if c.image is not None and c.image in in_dev]
    scores["short"] = short_query_scores(model, memory, test, texts,
                                         lambda t: te.encode(t, normalize=False).pooled, args.candidates)
    from retrieval.evaluation.fusion_rerank import head_in_ranking
    from retrieval.training.fusion_heads import rerank_recall

    for variant, head in model.result.heads.items():  # fusion classifiers over ITC's top K
        alpha = model.result.alphas[variant]
        r = rerank_recall(head, alpha, test, model.result.space, args.candidates)
        scores["t2i"][f"itc top {args.candidates} reranked by the {variant} fusion head (weight {alpha:g})"] = r["t2i"]
        scores["i2t"][f"itc top {args.candidates} reranked by the {variant} fusion head (weight {alpha:g})"] = r["i2t"]
        grid = head_in_ranking(model, memory, test, head, args.candidates)
        for a, v in grid["t2i"].items():
            if a != "0":
                scores["t2i"][f"shipped ranking + {a} x the {variant} head"] = v
        for a, v in grid["i2t"].items():
            if a != "0":
                scores["i2t"][f"describe's ranking + {a} x the {variant} head"] = v
        scores.setdefault("head_in_ranking", {})[variant] = grid
    return {"photos": int(len(test.pooled)), "captions": int(len(test.text)), "candidates": args.candidates,
            "train_photos": int(len(train.pooled)), "train_captions": int(len(train.text)),
            "val_photos": int(len(val.pooled)), "val_from": "flickr8k" if args.val_from_flickr else str(args.data[0]),
            "itc_best_epoch": model.result.history["itc_best_epoch"],
            "train_seconds": round(seconds, 1), "recipe": changed(tc), "rerank_weight": float(model.config.rerank_weight),
            "tuned_rerank_weight": model.record["tuned_alpha"], "experiment": experiment(args),
            **({"tuned_tops_last_epoch": tuned} if tuned else {}), **scores}


def experiment(args) -> dict:
    """The benchmark's own options that change what is trained (beside the recipe)."""
    out = {"heads": args.heads, "max_pool": args.max_pool, "val_from_flickr": args.val_from_flickr,
           "image_encoder": args.image_encoder if args.image_encoder != "efficientnet-lite0" else None,
           "tune_tops": args.tune_tops, "tune_mix": args.tune_mix if args.tune_tops and args.tune_mix != 1 else None,
           **({"tune_depth": args.tune_depth} if args.tune_depth != 1 else {})}
    out = {k: v for k, v in out.items() if v}
    if args.val_photos != 50:
        out["val_photos"] = args.val_photos
    return out


def fmt(r: dict) -> str:
    return " / ".join(f"{r[k]:.1f}" for k in ("r1", "r5", "r10"))


def to_markdown(r: dict, name: str) -> str:
    lines = [f"# Flickr8k dev 1K ({name})", "",
             f"Trained without the {r['photos']} dev photos ({r['train_photos']:,} training photos, "
             f"{r['train_captions']:,} captions, {r['val_photos']} validation photos from {Path(r['val_from']).name}; recipe changes: "
             f"{r['recipe'] or 'none, the shipped recipe'}; {r['train_seconds']:.0f} s of training). "
             f"Ranked among dev's {r['photos']} photos and {r['captions']:,} captions; rerank of the top "
             f"{r['candidates']}. Recall@1 / 5 / 10 in %.", "",
             "| text → image | R@1 / 5 / 10 |", "| --- | --- |"]
    lines += [f"| {m} | {fmt(v)} |" for m, v in r["t2i"].items()]
    lines += ["", "| image → text | R@1 / 5 / 10 |", "| --- | --- |"]
    lines += [f"| {m} | {fmt(v)} |" for m, v in r["i2t"].items()]
    if "short" in r:
        s = r["short"]
        lines += ["", "Short queries, as search ranks them: each caption cut to its first content words "
                  f"(\"{s['first 3 content words, example']}\"), its own photo's recall R@1 / 5 / 10; and "
                  f"{s['words']} single words, each one that at least 2 captions of some dev photo use, asked "
                  "alone: the share of the first result and of the first 10 that at least 2 of whose captions "
                  f"use it (a random photo: {s['one word, random photo']:.1f}%).", "",
                  "| query | R@1 / 5 / 10 |", "| --- | --- |"]
        lines += [f"| {q} | {fmt(v)} |" for q, v in s.items() if isinstance(v, dict) and "r1" in v]
        lines += ["", f"One word: the first result relevant {s['one word']['p1']:.1f}%, the first 10 "
                  f"{s['one word']['p10']:.1f}%."]
    lines += ["", "Published Flickr8k 1K **test** R@1 (text → image / image → text), for scale:", ""]
    lines += [f"- {who}: {t:.1f} / {i:.1f}" for who, t, i in PUBLISHED]
    return "\n".join(lines) + "\n"


def runs_markdown() -> str:
    rows = ["# Flickr8k dev 1K: every run", "",
            "Each run trained without dev (benchmarks/flickr8k.py); the shipped ranking's text → image and "
            "describe's image → text, R@1 / 5 / 10 in %.", "",
            "| run | recipe changes | t2i | i2t | train s |", "| --- | --- | --- | --- | ---: |"]
    for f in sorted([*RESULTS.glob("flickr8k*.json"), *RESULTS.glob("f8-*.json")]):
        r = json.loads(f.read_text())
        if SHIPPED not in r.get("t2i", {}):
            continue
        what = {**r["recipe"], **r.get("experiment", {})}
        rows.append(f"| `{f.stem}` | {what or 'shipped recipe'} | {fmt(r['t2i'][SHIPPED])} | "
                    f"{fmt(r['i2t'].get(DESCRIBE, {'r1': 0, 'r5': 0, 'r10': 0}))} | {r['train_seconds']:.0f} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flickr", type=Path, required=True, help="the Flickr8k dataset folder (with split fields)")
    ap.add_argument("--data", type=Path, action="append", default=[], help="more training datasets (validation photos come from the first)")
    ap.add_argument("--distractors", type=Path, help="uncaptioned photos (pseudo-captions, reranker candidates)")
    ap.add_argument("--exclude", type=Path, action="append", default=[], help="dataset whose photos never train")
    ap.add_argument("--val-photos", type=int, default=50)
    ap.add_argument("--val-from-flickr", action="store_true",
                    help="validation photos from Flickr8k's train split instead of the first --data")
    ap.add_argument("--candidates", type=int, default=32)
    ap.add_argument("--tune-tops", type=int, default=0, metavar="EPOCHS",
                    help="experiment: first train Lite0's last block and MiniLM's top layer on Flickr8k train "
                         "(benchmarks/finetune.py's 'both' arm) for EPOCHS, then the recipe on their features")
    ap.add_argument("--tune-mix", type=float, default=1.0, metavar="ALPHA",
                    help="with --tune-tops: install (1 - ALPHA) x pretrained + ALPHA x tuned weights (WiSE-FT)")
    ap.add_argument("--tune-depth", type=depth_arg, default=1, metavar="N|IMAGE,TEXT",
                    help="with --tune-tops: tune each encoder's N last blocks / layers (default 1, as fusion train), "
                         "or IMAGE of Lite0's and TEXT of MiniLM's")
    ap.add_argument("--max-pool", action="store_true",
                    help="experiment: image_fc also reads each photo's max over its grid cells")
    ap.add_argument("--heads", default="", help="fusion heads to train and measure, comma-separated "
                    "(additive, multiplicative, concat-mlp, cross-attention)")
    ap.add_argument("--name", default="flickr8k", help="results file stem")
    add_recipe_options(ap)
    args = ap.parse_args()
    r = run(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(r, indent=2) + "\n")
    md = to_markdown(r, args.name)
    (RESULTS / f"{args.name}.md").write_text(md)
    (RESULTS / "flickr8k-runs.md").write_text(runs_markdown())
    print(md)


if __name__ == "__main__":
    main()
