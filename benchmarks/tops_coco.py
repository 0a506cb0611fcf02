"""Issue 32's open road: the fine-tuned tops (Lite0's last block and head convolution,
MiniLM's top layer: benchmarks/finetune.py's "both" arm) tuned on Flickr8k *and* the COCO
photos each open-world fold trains on, so the tops learn both domains. Tuned on Flickr8k
alone they gained 3.8 / 9.3 R@1 on Flickr8k dev but drew on the COCO folds.

Per fold (the same folds and draws as benchmarks/open_world.py): fresh encoders, tuned on
every Flickr8k photo plus the fold's COCO training photos repeated --coco-repeat times an
epoch; then every feature again through them and the shipped recipe on the fold, as
open_world.py --tune-tops does for all folds with Flickr8k alone.

    python benchmarks/tops_coco.py --data S/coco --data S/coco-extra --train-only S/flickr8k \\
        --distractors S/distractors [--only-folds 0,1] [--coco-repeat 4] [--tune-tops 12]

Writes benchmarks/results/NAME.md and .json (--name, default recall-tops-coco).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune import Lab, tune_tops_on  # noqa: E402
from open_world import (RESULTS, add_recipe_options, changed, image_size, recipe, roads_markdown,  # noqa: E402
                        to_markdown)

from retrieval.evaluation.openworld import fold_draws, open_world_report, summarise  # noqa: E402


class MixedLab:
    """Several Labs' cached block inputs as one: photo and caption indices run on from one
    Lab to the next; dev (what train_arm logs) is the first Lab's."""

    def __init__(self, labs: list):
        first = labs[0]
        self.maps = np.concatenate([lab.maps for lab in labs])
        self.starts = np.cumsum([0] + [len(lab.maps) for lab in labs])
        states, offsets, caps_of, cap_base, tok_base = [], [np.zeros(1, np.int64)], [], 0, 0
        for lab in labs:
            states.append(lab.text["states"])
            offsets.append(lab.text["offsets"][1:] + tok_base)
            caps_of += [[c + cap_base for c in caps] for caps in lab.caps_of]
            cap_base += len(lab.text["offsets"]) - 1
            tok_base += len(lab.text["states"])
        self.text = {"states": np.concatenate(states), "offsets": np.concatenate(offsets)}
        self.caps_of = caps_of
        self.dev_idx, self.dev_caps, self.dev_owner = first.dev_idx, first.dev_caps, first.dev_owner


def fold_encoders(args, tc, f: int, fold_of: np.ndarray, datasets: list):
    """Fresh encoders with tops tuned on all of Flickr8k and fold `f`'s COCO training photos."""
    from retrieval.data.datasets import load_dataset
    from retrieval.encoders.image_encoder import load_image_encoder
    from retrieval.encoders.text_encoder import load_text_encoder

    ie = load_image_encoder(args.image_encoder, image_size=image_size(args.image_encoder, tc))
    te = load_text_encoder()
    flickr = Lab(load_dataset(args.train_only[0]), ie, te)
    coco = [Lab(ds, ie, te) for ds in datasets]
    lab = MixedLab([flickr] + coco)
    # evaluated photos are the data folders' photos in order (open_world_report's `evals`)
    coco_train = lab.starts[1] + np.flatnonzero(fold_of != f)
    train = np.concatenate([np.arange(len(flickr.maps))] + [coco_train] * args.coco_repeat)
    print(json.dumps({"fold": f, "tuning_photos": len(flickr.maps) + len(coco_train),
                      "coco_photos": len(coco_train), "draws_per_epoch": len(train)}), file=sys.stderr, flush=True)
    tune_tops_on(ie, te, lab, train, args.tune_tops, tc.seed + f)
    return ie, te


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, action="append", required=True, help="evaluated dataset (repeatable)")
    ap.add_argument("--train-only", type=Path, action="append", required=True, help="the Flickr8k folder")
    ap.add_argument("--distractors", type=Path, required=True)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--only-folds", default="0,1,2,3,4", help="comma-separated folds to run")
    ap.add_argument("--coco-repeat", type=int, default=4, help="draws of each COCO photo per epoch")
    ap.add_argument("--tune-tops", type=int, default=12, metavar="EPOCHS")
    ap.add_argument("--name", default="recall-tops-coco")
    add_recipe_options(ap)
    args = ap.parse_args()
    start = time.perf_counter()
    tc = recipe(args)

    from retrieval.data.datasets import load_dataset
    from retrieval.encoders.image_encoder import load_image_encoder
    from retrieval.training.features import folder_features

    datasets = [load_dataset(d) for d in args.data]
    plain = load_image_encoder(args.image_encoder, image_size=image_size(args.image_encoder, tc))
    n_distractors = len(folder_features(args.distractors, plain).pooled)  # cached by earlier runs
    _, _, fold_of = fold_draws(sum(len(ds.images) for ds in datasets), n_distractors, args.folds, args.seed)
    raw, report = [], {}
    for f in (int(x) for x in args.only_folds.split(",")):
        encoders = fold_encoders(args, tc, f, fold_of, datasets)
        report = open_world_report(args.data, args.distractors, args.train_only, args.folds, args.seed,
                                   args.image_encoder, tc=tc, encoders=encoders, only_folds=[f], raw=raw,
                                   log=lambda e: print(e, file=sys.stderr, flush=True))
    out = summarise(raw, report["open_gallery"])
    out.update({k: report[k] for k in ("photos", "captions", "distractors", "open_gallery", "projected_to", "data",
                                       "train_only", "memory_captions", "candidates", "evidence")})
    out.update(folds=args.folds, only_folds=args.only_folds, coco_repeat=args.coco_repeat, tune_tops=args.tune_tops,
               image_encoder=args.image_encoder, image_size=image_size(args.image_encoder, tc), recipe=changed(tc),
               memory_beta=tc.memory_beta, bridge_cells=tc.bridge_cells, mid_features=tc.mid_features,
               reranker_hidden=tc.reranker_hidden, soup=tc.soup, pseudo_captions=tc.pseudo_captions,
               pseudo_prior=tc.pseudo_prior, rerank_weight=tc.rerank_weight, neighbour_weight=tc.neighbour_weight,
               neighbour_dims=tc.neighbour_dims, seconds=round(time.perf_counter() - start, 1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=2) + "\n")
    main_md = RESULTS / "recall.md"  # its table of every road, as open_world.py keeps it
    if main_md.is_file():
        main_md.write_text(main_md.read_text().split("## Every road measured")[0].rstrip() + "\n\n"
                           + roads_markdown(RESULTS))
    md = to_markdown(out, f"Open-world recall, tops tuned on Flickr8k and each fold's COCO training photos "
                          f"(x{args.coco_repeat} an epoch, {args.tune_tops} epochs; folds {args.only_folds} "
                          f"of {args.folds}; recipe changes: {out['recipe'] or 'none'})")
    (RESULTS / f"{args.name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
