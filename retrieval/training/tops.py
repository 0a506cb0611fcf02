"""Fine-tuning the encoders' tops (issue 32): Lite0's last block and head convolution and
MiniLM's top layer trained on captioned photos, CPU-feasible by caching the input of the first
trained block once (the last block's 8x8x192 input map of each photo and of its mirror image,
and MiniLM's 5th-layer token states); photos are augmented at train time by mirror and a random
7x7 crop of that map (the cached inputs: retrieval/training/block_inputs.py). The lab
(benchmarks/finetune.py) compares arms with it."""

from __future__ import annotations

import copy
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retrieval.training.block_inputs import sides
from retrieval.training.fragments import FRAGMENTS


class ImageTop(nn.Module):
    """Lite0's `depth` last blocks and head convolution over their cached input map. The mid-level
    half of the feature is the last block's input (as the encoder's), so at depth 2 it is
    computed here too."""

    def __init__(self, ie, dim: int, train_block: bool, depth: int = 1):
        super().__init__()
        n = ie.network.net
        self.blocks = nn.ModuleList(copy.deepcopy(b) for b in n._blocks[-depth:])
        self.head = copy.deepcopy(n._conv_head)
        self.swish = n._swish
        for p in list(self.blocks.parameters()) + list(self.head.parameters()):
            p.requires_grad_(train_block)
        self.proj = nn.Linear(1280 + ie.config.mid_dim, dim)

    def features(self, maps):
        """(the pooled last feature map, the last block's input map) as the encoder gives them."""
        for block in self.blocks[:-1]:
            maps = block(maps)
        return self.swish(self.head(self.blocks[-1](maps))), maps

    def forward(self, maps):
        fmap, mid = self.features(maps)
        return F.normalize(self.proj(torch.cat([fmap.mean((2, 3)), mid.mean((2, 3))], 1)), dim=-1)


class TextTop(nn.Module):
    def __init__(self, te, dim: int, train_layer: bool, depth: int = 1):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for layer in te.network.layers[-depth:])
        for p in self.layers.parameters():
            p.requires_grad_(train_layer)
        self.proj = nn.Linear(te.config.dim, dim)

    def features(self, x, mask):
        """The caption's mean token state after the top layers, unit length (MiniLM's sentence vector)."""
        for layer in self.layers:
            x = layer(x, mask[:, None, None, :])
        m = mask.unsqueeze(-1).float()
        return F.normalize((x * m).sum(1) / m.sum(1), dim=-1)

    def forward(self, x, mask):
        return F.normalize(self.proj(self.features(x, mask)), dim=-1)


def text_batch(states, offsets, idx):
    n = max(int(offsets[i + 1] - offsets[i]) for i in idx)
    x = np.zeros((len(idx), n, states.shape[1]), np.float32)
    mask = np.zeros((len(idx), n), bool)
    for r, i in enumerate(idx):
        a, b = offsets[i], offsets[i + 1]
        x[r, : b - a], mask[r, : b - a] = states[a:b], True
    return torch.from_numpy(x), torch.from_numpy(mask)


def text_rows(text: dict) -> tuple[np.ndarray, np.ndarray]:
    """block_inputs' caption states with their fragments' after them, as one ragged (states,
    offsets): fragment j of caption i is row M + i * FRAGMENTS + j, M captions."""
    states, offsets = text["states"], text["offsets"]
    return (np.concatenate([states, text["fragment_states"]]),
            np.concatenate([offsets, offsets[-1] + text["fragment_offsets"][1:]]))


def embed_texts(top, states, offsets, idx, bs=256):
    with torch.no_grad():
        order = sorted(idx, key=lambda i: offsets[i + 1] - offsets[i])
        out = {}
        for s in range(0, len(order), bs):
            chunk = order[s:s + bs]
            for i, v in zip(chunk, top(*text_batch(states, offsets, chunk))):
                out[i] = v
        return torch.stack([out[i] for i in idx])


def embed_photos(top, maps, idx, flip: bool, bs=128):
    with torch.no_grad():
        return torch.cat([top(torch.from_numpy(maps[idx[s:s + bs], int(flip)].astype(np.float32)))
                          for s in range(0, len(idx), bs)])


def recall(img, txt, owner) -> dict:
    """Standard 1K: t2i over photos, i2t over captions (a photo's best-ranked own caption)."""
    sim = (txt @ img.T).numpy()
    t_rank = (sim > sim[np.arange(len(owner)), owner][:, None]).sum(1)
    own_best = np.full(len(img), -np.inf)
    np.maximum.at(own_best, owner, sim[np.arange(len(owner)), owner])
    i_rank = (sim.T > own_best[:, None]).sum(1)
    r = lambda ranks, k: float(100 * np.mean(ranks < k))  # noqa: E731
    return {"t2i": [r(t_rank, k) for k in (1, 5, 10)], "i2t": [r(i_rank, k) for k in (1, 5, 10)]}


def train_arm(name, ie, te, maps, states, offsets, caps_of, train_idx, dev_idx, dev_caps, dev_owner, args,
              progress=None):
    """One arm trained on `train_idx`; each epoch ranked on the dev photos `dev_idx` when given.
    `progress`: called after every batch with its loss."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    image_depth, text_depth = sides(args.depth)
    itop = ImageTop(ie, args.dim, name in ("image", "both"), image_depth)
    ttop = TextTop(te, args.dim, name in ("text", "both"), text_depth)
    scale = nn.Parameter(torch.tensor(np.log(1 / 0.05), dtype=torch.float32))
    heads = list(itop.proj.parameters()) + list(ttop.proj.parameters()) + [scale]
    tops = [p for m in (itop.blocks, itop.head, ttop.layers) for p in m.parameters() if p.requires_grad]
    groups = [{"params": heads, "lr": args.lr}] + ([{"params": tops, "lr": args.lr * args.top_lr}] if tops else [])
    opt = torch.optim.AdamW(groups, weight_decay=args.wd)
    steps = args.epochs * (len(train_idx) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=steps,
                                                pct_start=0.1)
    history, start = [], time.perf_counter()
    for epoch in range(args.epochs):
        order = rng.permutation(train_idx)
        itop.train(), ttop.train()
        for s in range(0, len(order) - args.batch + 1, args.batch):
            photos = order[s:s + args.batch]
            flips = rng.integers(0, 2, len(photos))
            x = maps[photos, flips].astype(np.float32)
            if args.crop:
                dy, dx = rng.integers(0, 2, 2)
                x = x[:, :, dy:dy + x.shape[2] - 1, dx:dx + x.shape[3] - 1]
            caps = [caps_of[p][rng.integers(len(caps_of[p]))] for p in photos]
            if args.fragment_share > 0:  # some captions as a few of their words (fragments.py)
                swap, which = rng.random(len(caps)) < args.fragment_share, rng.integers(0, FRAGMENTS, len(caps))
                caps = [args.captions + c * FRAGMENTS + j if w else c for c, w, j in zip(caps, swap, which)]
            iv, tv = itop(torch.from_numpy(np.ascontiguousarray(x))), ttop(*text_batch(states, offsets, caps))
            logits = scale.exp().clamp(max=100) * tv @ iv.T
            target = torch.arange(len(photos))
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            opt.zero_grad(), loss.backward(), opt.step(), sched.step()
            if progress:
                progress(float(loss.detach()))
        itop.eval(), ttop.eval()
        if dev_idx is None:
            continue
        txt = embed_texts(ttop, states, offsets, dev_caps)
        img = embed_photos(itop, maps, dev_idx, False)
        both = F.normalize(img + embed_photos(itop, maps, dev_idx, True), dim=-1)
        row = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - start, 1),
               "plain": recall(img, txt, dev_owner), "mirror-averaged": recall(both, txt, dev_owner)}
        history.append(row)
        print(name, json.dumps(row), file=sys.stderr, flush=True)
    return history, itop, ttop


def interpolate(pretrained: nn.Module, tuned: nn.Module, mix: float) -> None:
    """Weight-space ensembling (WiSE-FT, Wortsman et al. 2022): every float tensor of `tuned`
    (batch-norm statistics included) set to (1 - mix) x pretrained + mix x tuned, in place. Both
    start from the same weights, so the line between them stays a good network, and the
    pretrained end keeps what the fine-tuning data does not teach (here: COCO's world)."""
    before = pretrained.state_dict()
    with torch.no_grad():
        for k, v in tuned.state_dict().items():
            if v.is_floating_point():
                v.copy_((1 - mix) * before[k] + mix * v)


# the lab's recipe for the "both" arm (benchmarks/results/finetune.md): heads at 2e-3, the encoders'
# tops at a tenth of that, 512-d heads, batches of 128 photos, mirror and 7x7-crop augmentation
RECIPE = dict(batch=128, dim=512, lr=2e-3, top_lr=0.1, wd=1e-4, crop=True)


def tune(ie, te, maps, text, caps_of, photos, epochs: int, mix: float = 1.0, seed: int = 0, dev=None,
         progress=None, depth=1, fragment_share: float = 0.0) -> tuple[list, dict]:
    """The "both" arm trained on `photos` (rows of `maps`; a row may repeat) for `epochs`, its
    tops then put `mix` of the way from the pretrained weights (interpolate) and rounded to
    float16, as a checkpoint stores them: (history, {"image": {name: array}, "text": ...}),
    names as in the folded EfficientNet-Lite and in MiniLM (retrieval/encoders/tops.py).
    `dev`: (dev photos, their captions, each caption's photo) to rank every epoch. `depth`: how
    many of each encoder's last blocks / layers are trained, one number or (image, text) (`maps`
    and `text` must enter them). `fragment_share`: the chance a sampled caption is trained as one
    of its fragments (`text` must then hold them: block_inputs' fragment_seed)."""
    import argparse

    args = argparse.Namespace(epochs=epochs, seed=seed, depth=depth, fragment_share=fragment_share,
                              captions=len(text["offsets"]) - 1,
                              **{**RECIPE, "batch": min(RECIPE["batch"], len(photos))})
    dev_idx, dev_caps, dev_owner = dev or (None, None, None)
    states, offsets = text_rows(text) if fragment_share > 0 else (text["states"], text["offsets"])
    history, itop, ttop = train_arm("both", ie, te, maps, states, offsets, caps_of, photos,
                                    dev_idx, dev_caps, dev_owner, args, progress)
    n, layers = ie.network.net, te.network.layers
    image_depth, text_depth = sides(depth)
    first_block, first_layer = len(n._blocks) - image_depth, len(layers) - text_depth
    parts = {"image": tuple((f"_blocks.{first_block + i}.", n._blocks[first_block + i], b)
                            for i, b in enumerate(itop.blocks)) + (("_conv_head.", n._conv_head, itop.head),),
             "text": tuple((f"layers.{first_layer + i}.", layers[first_layer + i], t)
                           for i, t in enumerate(ttop.layers))}
    tops: dict = {}
    for side, modules in parts.items():
        tops[side] = {}
        for prefix, pretrained, tuned in modules:
            if mix != 1.0:
                interpolate(pretrained, tuned, mix)
            for k, v in tuned.state_dict().items():
                if v.is_floating_point():
                    tops[side][prefix + k] = v.detach().to(torch.float16).float().numpy()
    return history, tops
