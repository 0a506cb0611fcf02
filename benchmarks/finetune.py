"""The roads that fine-tune the encoders' tops, on Flickr8k (issue 32): does training Lite0's
last block and MiniLM's top layer on ~6k photos beat frozen encoders, and does averaging a photo
with its mirror image at index time help?

One small recipe, four arms side by side in one run, each trained on Flickr8k's train split
and ranked on its `dev` 1K (the standard protocol, 1,000 photos and 5,000 captions):

- frozen: both encoders frozen, linear heads on [pooled, mid] and on MiniLM's mean (the
  floor this lab is measured against; the shipped recipe adds the label bridge, the memory,
  the soup and the reranker on top of such heads);
- image: Lite0's last block and head convolution trained too (at a tenth of the heads' rate);
- text: MiniLM's top layer trained too;
- both.

CPU-feasible by caching the input of the first trained block once (retrieval/training/block_inputs.py).

    python benchmarks/finetune.py --flickr ../shared/data/flickr8k [--epochs 12] [--arms frozen,image]

Writes benchmarks/results/finetune.md and .json (--name changes the stem).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flickr8k import split_of  # noqa: E402

from retrieval.training.block_inputs import block_inputs  # noqa: E402
from retrieval.training.tops import train_arm, tune  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class Lab:
    """A Flickr8k folder's cached block inputs, its train / dev split and dev's captions."""

    def __init__(self, ds, ie, te, depth: int = 1, fragment_seed: int | None = None):
        self.depth = depth
        self.maps, self.text = block_inputs(ds, ie, te, depth=depth, fragment_seed=fragment_seed)
        splits = split_of(ds)
        self.caps_of = ds.captions_of()
        self.train_idx, self.dev_idx = np.flatnonzero(splits != "dev"), np.flatnonzero(splits == "dev")
        self.dev_caps = [c for i in self.dev_idx for c in self.caps_of[i]]
        where = {int(p): k for k, p in enumerate(self.dev_idx)}
        self.dev_owner = np.array([where[ds.captions[c].image] for c in self.dev_caps])


def tune_tops(ie, te, flickr_ds, epochs: int, seed: int = 0, all_photos: bool = False, mix: float = 1.0,
              depth: int = 1, fragment_share: float = 0.0):
    """The lab's "both" arm on `flickr_ds`'s non-dev photos, installed into `ie` and `te`:
    Lite0's last block and head convolution and MiniLM's top layer replaced by the tuned ones
    (float16-exact, as fusion train ships them), and every feature and memory cache key marked
    with their digest. `all_photos`: train on dev's photos too (for benchmarks that measure
    elsewhere; the logged dev figures are then on training photos). `mix` < 1 installs weights
    between the pretrained and the tuned ones (interpolate). `depth`: how many of each encoder's
    last blocks / layers are tuned. `fragment_share`: the chance a sampled caption is trained as a
    few of its words (retrieval/training/fragments.py). Returns the arm's dev history."""
    lab = Lab(flickr_ds, ie, te, depth, seed if fragment_share > 0 else None)
    return tune_tops_on(ie, te, lab, np.arange(len(lab.maps)) if all_photos else lab.train_idx, epochs, seed, mix,
                        fragment_share)


def tune_tops_on(ie, te, lab, train_idx, epochs: int, seed: int = 0, mix: float = 1.0, fragment_share: float = 0.0):
    """tune_tops on a Lab's photos `train_idx` (an index may repeat: that photo is drawn so
    many times an epoch)."""
    from retrieval.encoders.tops import install

    history, tops = tune(ie, te, lab.maps, lab.text, lab.caps_of, train_idx, epochs, mix, seed,
                         (lab.dev_idx, lab.dev_caps, lab.dev_owner), depth=lab.depth, fragment_share=fragment_share)
    install(ie.network.net, tops["image"], "image-network")
    install(te.network, tops["text"], "text-encoder")
    ie.tops, te.tops = tops["image"], tops["text"]
    return history


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flickr", type=Path, required=True, help="the Flickr8k dataset folder (train + dev)")
    ap.add_argument("--arms", default="frozen,image,text,both")
    ap.add_argument("--epochs", type=int, default=12, help="passes over the training photos")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-3, help="heads' peak learning rate")
    ap.add_argument("--top-lr", type=float, default=0.1, help="the trained blocks' rate, times --lr")
    ap.add_argument("--wd", type=float, default=1e-4)
    ap.add_argument("--no-crop", dest="crop", action="store_false", help="no random 7x7 crop of the map")
    ap.add_argument("--depth", type=int, default=1,
                    help="how many of each encoder's last blocks / layers are trained (Lite0: its last blocks and "
                         "head convolution; MiniLM: its top layers)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="finetune")
    ap.set_defaults(fragment_share=0.0)  # the arms here train on whole captions (tops.tune takes a share)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from retrieval.encoders.image_encoder import load_image_encoder, run_size
    from retrieval.encoders.text_encoder import load_text_encoder
    from retrieval.data.datasets import load_dataset

    ie = load_image_encoder(image_size=run_size("efficientnet-lite0"))
    te = load_text_encoder()
    lab = Lab(load_dataset(args.flickr), ie, te, args.depth)
    train_idx, dev_idx, dev_caps, dev_owner = lab.train_idx, lab.dev_idx, lab.dev_caps, lab.dev_owner
    maps, text, caps_of = lab.maps, lab.text, lab.caps_of
    runs = {}
    for arm in args.arms.split(","):
        runs[arm] = train_arm(arm, ie, te, maps, text["states"], text["offsets"], caps_of, train_idx, dev_idx,
                              dev_caps, dev_owner, args)[0]
    report = {"train_photos": len(train_idx), "dev_photos": len(dev_idx), "dev_captions": len(dev_caps),
              "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "arms": runs}
    write(report, args.name)


def write(report: dict, name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    f = lambda v: " / ".join(f"{x:.1f}" for x in v)  # noqa: E731
    lines = [f"# Fine-tuning the encoders' tops: Flickr8k dev 1K ({report['train_photos']} training photos)", "",
             "Written by `benchmarks/finetune.py`; options: `" + json.dumps(report["options"]) + "`.", "",
             "| arm | best epoch (by dev t2i R@1) | t2i R@1 / 5 / 10 | i2t R@1 / 5 / 10 | mirror-averaged photos: t2i | i2t | seconds |",
             "| --- | ---: | --- | --- | --- | --- | ---: |"]
    for arm, hist in report["arms"].items():
        b = max(hist, key=lambda r: r["plain"]["t2i"][0])
        lines.append(f"| {arm} | {b['epoch']} of {len(hist)} | {f(b['plain']['t2i'])} | {f(b['plain']['i2t'])} | "
                     f"{f(b['mirror-averaged']['t2i'])} | {f(b['mirror-averaged']['i2t'])} | {hist[-1]['seconds']} |")
    lines += ["", "Last epoch of each arm:", ""]
    for arm, hist in report["arms"].items():
        r = hist[-1]
        lines.append(f"- {arm}: t2i {f(r['plain']['t2i'])}, i2t {f(r['plain']['i2t'])}")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
