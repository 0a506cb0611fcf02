"""The training recipe's options, shared by the benchmarks that train whole models
(open_world.py, flickr8k.py), so a road is named the same way in each and lands in
TrainConfig the same way."""

from __future__ import annotations

import argparse

from retrieval.training.loop import TrainConfig

# option -> (TrainConfig field, help); types and defaults come from TrainConfig
NUMBERS = {
    "--image-size": ("image_size", "input side fed to the image encoder (0: as fusion train does, 256 for Lite0)"),
    "--memory-beta": ("memory_beta", "weight of recalled captions in search vectors (0: memory only as rerank evidence)"),
    "--reranker-hidden": ("reranker_hidden", "hidden width of the reranker (0: linear)"),
    "--soup": ("soup", "ITC runs averaged into one (1: one run)"),
    "--pseudo-captions": ("pseudo_captions", "memory captions per uncaptioned photo as pseudo-captions (0: off)"),
    "--pseudo-prior": ("pseudo_prior", "weight of the caption prior when those photos recall their pseudo-captions"),
    "--neighbour-weight": ("neighbour_weight", "weight of captions borrowed from look-alike training photos (0: off)"),
    "--neighbour-k": ("neighbour_k", "look-alike training photos each photo borrows from"),
    "--neighbour-dims": ("neighbour_dims", "principal directions of the image features kept to find look-alikes (0: all)"),
    "--image-hidden": ("image_hidden", "hidden width of image_fc's correction (0: one linear layer)"),
    "--text-hidden": ("text_hidden", "hidden width of text_fc's correction (0: one linear layer; torch side only)"),
    "--hard-weight": ("hard_weight", "weight of VSE++'s max-violation hinge beside InfoNCE (0: off)"),
    "--batch-size": ("batch_size", "photos per contrastive batch"),
    "--lr": ("lr", "AdamW learning rate of the ITC heads"),
    "--weight-decay": ("weight_decay", "AdamW weight decay of the ITC heads"),
    "--patience": ("patience", "ITC epochs without a better validation score before stopping"),
    "--fragment-share": ("fragment_share", "chance ITC trains a sampled caption as a few of its content words (0: off)"),
    "--tops-fragment-share": ("tops_fragment_share", "the same chance in the tops' tuning (with --tune-tops; 0: off)"),
}


def add_recipe_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-encoder", default="efficientnet-lite0")
    ap.add_argument("--no-bridge-cells", action="store_true", help="bridge from pooled logits only")
    ap.add_argument("--no-mid-features", action="store_true",
                    help="image_fc reads the pooled features only, not also the mid-level ones")
    ap.add_argument("--no-bridge", action="store_true",
                    help="a full learned projection of the photo instead of a correction on its ImageNet-label bridge")
    ap.add_argument("--describe-weight", type=float, default=0.0,
                    help="the reranker's weight in photo -> caption, as shipped")
    ap.add_argument("--describe-prior", type=float, default=0.5,
                    help="weight of the caption prior in photo -> caption, as shipped")
    ap.add_argument("--rerank-weight", type=float, default=0.25,
                    help="the reranker's weight in search, as shipped (the weight tuned on training candidates is also measured)")
    for opt, (name, text) in NUMBERS.items():
        default = getattr(TrainConfig, name)
        ap.add_argument(opt, type=type(default), default=default, help=f"{text} [default {default}]")


def recipe(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the options name (no fusion-head baselines: no search uses them)."""
    return TrainConfig(seed=args.seed, variants=(), bridge_cells=not args.no_bridge_cells, image_bridge=not args.no_bridge,
                       mid_features=not args.no_mid_features, describe_weight=args.describe_weight,
                       describe_prior=args.describe_prior, rerank_weight=args.rerank_weight,
                       **{name: getattr(args, name) for name, _ in NUMBERS.values()})


def changed(tc: TrainConfig) -> dict:
    """The recipe's fields that differ from TrainConfig's defaults (what names a road)."""
    base = TrainConfig()
    skip = {"variants", "seed"}
    return {k: v for k, v in tc.__dict__.items() if k not in skip and v != getattr(base, k)}


def depth_arg(text: str):
    """--tune-depth: "2" (both encoders) or "2,1" (the image network's blocks, MiniLM's layers)."""
    try:
        parts = [int(x) for x in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give N or IMAGE,TEXT, e.g. 2 or 2,1")
    return parts[0] if len(parts) == 1 else tuple(parts)
