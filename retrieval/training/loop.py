"""Training on cached frozen-encoder features: the shared space (ITC) with early stopping on a
validation split, then every fusion head (ITM, retrieval/training/fusion_heads.py) on hard
negatives mined from ITC space."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from retrieval.training.recall import i2t_recall, t2i_recall
from retrieval.training.features import DatasetFeatures
from retrieval.model.heads import FUSION_VARIANTS, ModelConfig, SharedSpace


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0  # fixes photo order, caption sampling, folds and initialisation
    batch_size: int = 128  # photos per contrastive batch (one random caption each)
    lr: float = 2e-4  # AdamW learning rate of the ITC heads (1e-4 until the 7.4k-photo re-tune: 2e-4
    # gained ~1 R@1 on Flickr8k dev and describe, a draw on the COCO folds; docs/quality.md)
    weight_decay: float = 0.05
    max_epochs: int = 40  # ITC epochs at most; early stopping usually ends far sooner
    patience: int = 4  # epochs without a better validation score before stopping
    candidates: int = 8  # ITC top-K each caption's ITM negatives come from
    folds: int = 2  # hard negatives are mined by ITC models that did not see those photos
    itm_lr: float = 3e-4
    itm_epochs: int = 4  # every head peaked on validation within 1-3 epochs, then overfit
    itm_patience: int = 1
    variants: tuple = FUSION_VARIANTS  # fusion heads to train (benchmark baselines)
    bridge_cells: bool = True  # bridge from pooled and per-cell-max logits (False: pooled only)
    mid_features: bool = True  # image_fc also reads the pooled mid-level features
    image_hidden: int = 0  # hidden width of image_fc's correction (0: linear)
    text_hidden: int = 0  # hidden width of text_fc's correction (0: linear; an experiment)
    image_bridge: bool = True  # photos start at their ImageNet-label bridge (False: a full projection)
    hard_weight: float = 0.0  # weight of VSE++'s max-violation hinge beside InfoNCE (0: off)
    image_size: int = 0  # input side fed to the image encoder (0: its run_size, 256 px for Lite0)
    memory_beta: float = 0.5  # weight of recalled captions in a photo's search vector (0: ITC)
    rerank_folds: int = 5  # cross-fitting folds for the reranker's training candidates
    rerank_candidates: int = 32  # ITC top-K the reranker learns to sort (search's default)
    reranker_hidden: int = 0  # hidden width of the reranker (0: linear)
    rerank_weight: float | None = None  # fixed weight (e.g. tuned on the open-world folds); None: tune
    describe_weight: float = 0.0  # the reranker's weight for photo -> caption (tuned on the folds)
    describe_prior: float = 0.0  # weight of the caption prior in photo -> caption (tuned on the folds)
    memory_describe_weight: float | None = None  # the reranker's weight when describe ranks the caption
    # memory (a library without captions); None: search's rerank weight
    soup: int = 5  # ITC runs (seeds) whose weights are averaged into the shipped space (1: one run)
    pseudo_captions: int = 3  # memory captions per uncaptioned photo as its pseudo-captions (0: off)
    pseudo_prior: float = 0.0  # caption prior's weight when they recall them (0: plain ITC; 0.5 measured a draw)
    neighbour_weight: float = 0.25  # captions of look-alike training photos in search vectors (0: off)
    neighbour_k: int = 20
    neighbour_tau: float = 0.1
    tune_tops: str = ""  # dataset folder the encoders' tops are fine-tuned on first ('': frozen encoders)
    tops_epochs: int = 12  # passes over its photos (retrieval/training/tops.py)
    tops_mix: float = 0.5  # how far the tops move from the pretrained weights to the tuned (WiSE-FT)
    tops_depth: int = 1  # how many of each encoder's last blocks / layers are tuned (2: docs/quality.md)
    fragment_share: float = 0.0  # chance ITC trains a sampled caption as one of its fragments (fragments.py)
    tops_fragment_share: float = 0.0  # the same chance in the tops' tuning (retrieval/training/tops.py)
    neighbour_dims: int = 256  # principal directions of the image features kept for look-alikes (0: all;
    # 256 measured within 0.3 R@1 of all 1,280 on split 0, and 2.7 instead of 5.3 MB in the checkpoint)


@dataclass
class TrainResult:
    space: SharedSpace
    heads: dict  # variant -> FusionHead
    alphas: dict  # variant -> rerank weight chosen on validation
    history: dict = field(default_factory=dict)  # per-stage curves and validation scores


def _t(a, dtype=torch.float32):
    return torch.as_tensor(np.asarray(a), dtype=dtype)


def embed(space: SharedSpace, f: DatasetFeatures):
    """ITC embeddings (numpy) of every photo and caption of `f`."""
    space.eval()
    with torch.no_grad():
        img = space.embed_image(_t(f.pooled), _t(f.logits), _t(f.cells), _t(f.mid)).numpy()
        txt = space.embed_text(_t(f.text)).numpy()
    return img, txt


def itc_scores(space: SharedSpace, f: DatasetFeatures) -> dict:
    """Recall of ITC alone on `f` (t2i and i2t)."""
    img, txt = embed(space, f)
    sim = txt @ img.T
    return {"t2i": t2i_recall(sim, f.caption_image), "i2t": i2t_recall(sim.T, f.caption_image)}


def rsum(scores: dict) -> float:
    return sum(scores["t2i"].values()) + sum(scores["i2t"].values())


def train_itc(cfg: ModelConfig, class_emb: torch.Tensor, train: DatasetFeatures,
              val: DatasetFeatures | None, tc: TrainConfig, epochs: int | None = None, log=None,
              init_seed: int | None = None):
    """Symmetric InfoNCE with learnable temperature; keeps the epoch with the best validation
    recall sum (or runs `epochs` epochs when there is no validation set). `init_seed` seeds
    the heads' initial weights (a soup's runs share it, so their average is meaningful)."""
    gen = torch.Generator().manual_seed(tc.seed)
    torch.manual_seed(tc.seed if init_seed is None else init_seed)
    space = SharedSpace(cfg, class_emb)
    opt = torch.optim.AdamW(space.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    caps = [np.flatnonzero(train.caption_image == i) for i in range(len(train.pooled))]
    pooled, logits, cells, mid, text = (_t(a) for a in (train.pooled, train.logits, train.cells, train.mid, train.text))
    frags = None if train.fragments is None or tc.fragment_share <= 0 else _t(train.fragments)
    best, best_state, best_epoch, bad, curve = -1.0, None, 0, 0, []
    n_epochs = epochs or tc.max_epochs
    for epoch in range(1, n_epochs + 1):
        space.train()
        order = torch.randperm(len(caps), generator=gen).numpy()
        pick = np.array([c[torch.randint(len(c), (1,), generator=gen).item()] for c in caps])
        losses = []
        for s in range(0, len(order), tc.batch_size):
            idx = order[s:s + tc.batch_size]
            if len(idx) < 2:
                continue
            img = space.embed_image(pooled[idx], logits[idx], cells[idx], mid[idx])
            words = text[pick[idx]]
            if frags is not None:  # short queries: some captions trained as a few of their words
                swap = torch.rand(len(idx), generator=gen) < tc.fragment_share
                which = torch.randint(frags.shape[1], (len(idx),), generator=gen)
                words = torch.where(swap[:, None], frags[pick[idx], which], words)
            loss = space.loss(img, space.embed_text(words), tc.hard_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        entry = {"epoch": epoch, "loss": float(np.mean(losses))}
        if val is not None:
            entry["val"] = itc_scores(space, val)
            score = rsum(entry["val"])
            if score > best:
                best, best_state, best_epoch, bad = score, copy.deepcopy(space.state_dict()), epoch, 0
            else:
                bad += 1
        curve.append(entry)
        if log:
            log(entry)
        if val is not None and bad >= tc.patience:
            break
    if best_state is not None:
        space.load_state_dict(best_state)
    else:
        best_epoch = n_epochs
    return space, best_epoch, curve


def train_itc_soup(cfg: ModelConfig, class_emb, train: DatasetFeatures, val: DatasetFeatures | None,
                   tc: TrainConfig, epochs: int | None = None, log=None):
    """A model soup: `tc.soup` ITC runs that differ in seed (photo order and caption picks; the
    heads start at zero) with their weights averaged. The heads are linear, so the average is
    one model of the same size, and it beat single runs on the open-world folds (ITC R@1
    12.1 -> 13.2 with 5 runs)."""
    if tc.soup <= 1:
        run = train_itc(cfg, class_emb, train, val, tc, epochs, log)
        if log:
            log({"stage": "itc-run", "run": 1, "of": 1, "best_epoch": run[1]})
        return run
    runs = []
    for i in range(tc.soup):
        runs.append(train_itc(cfg, class_emb, train, val, replace(tc, seed=tc.seed * 100 + i), epochs,
                              log if i == 0 else None, init_seed=tc.seed))
        if log:
            log({"stage": "itc-run", "run": i + 1, "of": tc.soup, "best_epoch": runs[-1][1]})
    space = runs[0][0]
    states = [r[0].state_dict() for r in runs]
    space.load_state_dict({k: sum(s[k] for s in states) / len(states) if v.is_floating_point() else v
                           for k, v in states[0].items()})
    return space, round(float(np.mean([r[1] for r in runs]))), runs[0][2]


def mine(space: SharedSpace, f: DatasetFeatures, k: int, force_positive: bool):
    """For each caption, its ITC top-k photos: (caption, photo, itc cosine, label) arrays.
    With force_positive the true photo replaces the last candidate when ITC missed it."""
    img, txt = embed(space, f)
    sim = txt @ img.T
    k = min(k, sim.shape[1])
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    if force_positive:
        missing = ~(top == f.caption_image[:, None]).any(axis=1)
        top[missing, -1] = f.caption_image[missing]
    caps = np.repeat(np.arange(len(sim)), k)
    photos = top.reshape(-1)
    return caps, photos, sim[caps, photos].astype(np.float32), (photos == f.caption_image[caps]).astype(np.float32)


def crossfit_spaces(cfg, class_emb, train: DatasetFeatures, tc: TrainConfig, epochs: int, folds: int):
    """For each of `folds` random folds of the photos: (fold, its photo indices, an ITC space
    trained on the other folds only, the fold's features). What such a space scores looks like
    what the shipped one scores for unseen photos (seen photos score too well)."""
    rng = np.random.default_rng(tc.seed)
    fold_of = rng.permutation(len(train.pooled)) % folds
    for fold in range(folds):
        held = np.flatnonzero(fold_of == fold)
        rest = train.subset(np.flatnonzero(fold_of != fold))
        space, _, _ = train_itc(cfg, class_emb, rest, None, tc, epochs)
        attach_neighbours(space, rest, tc)  # it borrows captions from its own training photos only
        yield fold, held, space, train.subset(held)


def attach_neighbours(space: SharedSpace, f: DatasetFeatures, tc: TrainConfig) -> None:
    """Give `space` the look-alike training photos of `f` and their captions to borrow
    (retrieval/model/neighbours.py), when the space's config uses them."""
    from retrieval.model.neighbours import build_neighbours

    if not space.config.neighbour_weight:
        return
    with torch.no_grad():
        caption_itc = space.embed_text(_t(f.text)).numpy()
    space.neighbours = build_neighbours(f.pooled, caption_itc, f.caption_image, tc.neighbour_dims)
