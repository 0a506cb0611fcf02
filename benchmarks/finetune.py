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

CPU-feasible by caching the input of the first trained block once (the last block's 8x8x192
input map of each photo and of its mirror image, and MiniLM's 5th-layer token states); photos
are augmented at train time by mirror and a random 7x7 crop of that map.

    python benchmarks/finetune.py --flickr ../shared/data/flickr8k [--epochs 12] [--arms frozen,image]

Writes benchmarks/results/finetune.md and .json (--name changes the stem).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flickr8k import split_of  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def cached(path: Path, make):
    if path.is_file():
        z = np.load(path)
        return {k: z[k] for k in z.files}
    out = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def photo_maps(ds, ie) -> dict:
    """Each photo's last-block input map, and its mirror image's: (N, 2, C, S, S) float16."""
    from tqdm import tqdm

    from retrieval.encoders.images import load_many

    net, out = ie.network, []
    paths = [ds.image_path(i) for i in range(len(ds.images))]
    batch: list = []

    def flush():
        with torch.inference_mode():
            x = ie._to_tensor([p for pair in batch for p in pair])
            n = net.net
            h = n._swish(n._bn0(n._conv_stem(x)))
            for block in n._blocks[:-1]:
                h = block(h)
            out.append(h.float().numpy().astype(np.float16).reshape(len(batch), 2, *h.shape[1:]))
        batch.clear()

    for _, pixels in tqdm(load_many(paths, ie.load, workers=1), total=len(paths), desc="photo maps",
                          unit="photo"):
        batch.append((pixels, np.ascontiguousarray(pixels[:, ::-1])))
        if len(batch) == 8:
            flush()
    if batch:
        flush()
    return {"maps": np.concatenate(out)}


def caption_states(ds, te) -> dict:
    """MiniLM's token states entering its top layer, ragged: (T, 384) float16 and offsets."""
    from tqdm import tqdm

    net, texts = te.network, [c.text for c in ds.captions]
    rows, lengths = [], []
    with torch.inference_mode():
        for s in tqdm(range(0, len(texts), 128), desc="caption states", unit="batch"):
            enc, _ = te.tokenize(texts[s:s + 128])
            ids, mask = enc["input_ids"], enc["attention_mask"]
            pos = torch.arange(ids.shape[1])
            x = net.norm(net.word(ids) + net.position(pos)[None] + net.token_type.weight[0])
            keep = mask.bool()[:, None, None, :]
            for layer in net.layers[:-1]:
                x = layer(x, keep)
            for r in range(len(ids)):
                n = int(mask[r].sum())
                rows.append(x[r, :n].numpy().astype(np.float16))
                lengths.append(n)
    return {"states": np.concatenate(rows), "offsets": np.concatenate([[0], np.cumsum(lengths)])}


class ImageTop(nn.Module):
    def __init__(self, ie, dim: int, train_block: bool):
        super().__init__()
        n = ie.network.net
        self.block, self.head = copy.deepcopy(n._blocks[-1]), copy.deepcopy(n._conv_head)
        self.swish = n._swish
        for p in list(self.block.parameters()) + list(self.head.parameters()):
            p.requires_grad_(train_block)
        self.proj = nn.Linear(1280 + ie.config.mid_dim, dim)

    def forward(self, maps):
        fmap = self.swish(self.head(self.block(maps)))
        return F.normalize(self.proj(torch.cat([fmap.mean((2, 3)), maps.mean((2, 3))], 1)), dim=-1)


class TextTop(nn.Module):
    def __init__(self, te, dim: int, train_layer: bool):
        super().__init__()
        self.layer = copy.deepcopy(te.network.layers[-1])
        for p in self.layer.parameters():
            p.requires_grad_(train_layer)
        self.proj = nn.Linear(te.config.dim, dim)

    def forward(self, x, mask):
        h = self.layer(x, mask[:, None, None, :])
        m = mask.unsqueeze(-1).float()
        return F.normalize(self.proj(F.normalize((h * m).sum(1) / m.sum(1), dim=-1)), dim=-1)


def text_batch(states, offsets, idx):
    n = max(int(offsets[i + 1] - offsets[i]) for i in idx)
    x = np.zeros((len(idx), n, states.shape[1]), np.float32)
    mask = np.zeros((len(idx), n), bool)
    for r, i in enumerate(idx):
        a, b = offsets[i], offsets[i + 1]
        x[r, : b - a], mask[r, : b - a] = states[a:b], True
    return torch.from_numpy(x), torch.from_numpy(mask)


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


def train_arm(name, ie, te, maps, states, offsets, caps_of, train_idx, dev_idx, dev_caps, dev_owner, args):
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    itop, ttop = ImageTop(ie, args.dim, name in ("image", "both")), TextTop(te, args.dim, name in ("text", "both"))
    scale = nn.Parameter(torch.tensor(np.log(1 / 0.05), dtype=torch.float32))
    heads = list(itop.proj.parameters()) + list(ttop.proj.parameters()) + [scale]
    tops = [p for m in (itop.block, itop.head, ttop.layer) for p in m.parameters() if p.requires_grad]
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
            iv, tv = itop(torch.from_numpy(np.ascontiguousarray(x))), ttop(*text_batch(states, offsets, caps))
            logits = scale.exp().clamp(max=100) * tv @ iv.T
            target = torch.arange(len(photos))
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            opt.zero_grad(), loss.backward(), opt.step(), sched.step()
        itop.eval(), ttop.eval()
        txt = embed_texts(ttop, states, offsets, dev_caps)
        img = embed_photos(itop, maps, dev_idx, False)
        both = F.normalize(img + embed_photos(itop, maps, dev_idx, True), dim=-1)
        row = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - start, 1),
               "plain": recall(img, txt, dev_owner), "mirror-averaged": recall(both, txt, dev_owner)}
        history.append(row)
        print(name, json.dumps(row), file=sys.stderr, flush=True)
    return history, itop, ttop


class Lab:
    """A Flickr8k folder's cached block inputs, its train / dev split and dev's captions."""

    def __init__(self, ds, ie, te):
        from retrieval.data.cache import default_cache_dir

        src = ds.source.stat()
        ident = f"{ds.source.resolve()}|{src.st_size}|{src.st_mtime_ns}|{ie.feature_id}"
        key = hashlib.sha1(ident.encode()).hexdigest()[:16]
        cache = default_cache_dir() / "finetune"
        self.maps = cached(cache / f"maps-{key}.npz", lambda: photo_maps(ds, ie))["maps"]
        self.text = cached(cache / f"states-{key}.npz", lambda: caption_states(ds, te))
        splits = split_of(ds)
        self.caps_of = ds.captions_of()
        self.train_idx, self.dev_idx = np.flatnonzero(splits != "dev"), np.flatnonzero(splits == "dev")
        self.dev_caps = [c for i in self.dev_idx for c in self.caps_of[i]]
        where = {int(p): k for k, p in enumerate(self.dev_idx)}
        self.dev_owner = np.array([where[ds.captions[c].image] for c in self.dev_caps])


def tune_tops(ie, te, flickr_ds, epochs: int, seed: int = 0, all_photos: bool = False, mix: float = 1.0):
    """The lab's "both" arm on `flickr_ds`'s non-dev photos, installed into `ie` and `te`:
    Lite0's last block and head convolution and MiniLM's top layer replaced by the tuned ones,
    their names (and so every feature and memory cache key) marked with the tuned weights' hash,
    the numpy query path off. `all_photos`: train on dev's photos too (for benchmarks that
    measure elsewhere; the logged dev figures are then on training photos). `mix` < 1 installs
    weights between the pretrained and the tuned ones (below). Returns the arm's dev history."""
    lab = Lab(flickr_ds, ie, te)
    return tune_tops_on(ie, te, lab, np.arange(len(lab.maps)) if all_photos else lab.train_idx, epochs, seed, mix)


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


def tune_tops_on(ie, te, lab, train_idx, epochs: int, seed: int = 0, mix: float = 1.0):
    """tune_tops on a Lab's photos `train_idx` (an index may repeat: that photo is drawn so
    many times an epoch)."""
    from dataclasses import replace

    args = argparse.Namespace(epochs=epochs, batch=128, dim=512, lr=2e-3, top_lr=0.1, wd=1e-4, crop=True, seed=seed)
    history, itop, ttop = train_arm("both", ie, te, lab.maps, lab.text["states"], lab.text["offsets"], lab.caps_of,
                                    train_idx, lab.dev_idx, lab.dev_caps, lab.dev_owner, args)
    n = ie.network.net
    if mix != 1.0:
        for old, new in ((n._blocks[-1], itop.block), (n._conv_head, itop.head), (te.network.layers[-1], ttop.layer)):
            interpolate(old, new, mix)
    n._blocks[-1], n._conv_head, te.network.layers[-1] = itop.block.eval(), itop.head.eval(), ttop.layer.eval()
    h = hashlib.sha256()
    for m in (itop.block, itop.head, ttop.layer):
        for t in m.state_dict().values():
            h.update(t.detach().numpy().tobytes())
        for p in m.parameters():
            p.requires_grad_(False)
    tag = h.hexdigest()[:12]
    ie.config = replace(ie.config, name=f"{ie.config.name}+tuned-{tag}")
    te.config = replace(te.config, name=f"{te.config.name}+tuned-{tag}")
    te.numpy_queries = False
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
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="finetune")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from retrieval.encoders.image_encoder import load_image_encoder, run_size
    from retrieval.encoders.text_encoder import load_text_encoder
    from retrieval.data.datasets import load_dataset

    ie = load_image_encoder(image_size=run_size("efficientnet-lite0"))
    te = load_text_encoder()
    lab = Lab(load_dataset(args.flickr), ie, te)
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
