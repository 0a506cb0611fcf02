"""The fusion-head baselines (ITM heads that see both sides: concat-MLP, cross-attention)
trained on hard negatives that cross-fitted ITC spaces mine, their rerank weight chosen on
validation. `fusion bench recall` measures them beside the evidence reranker search uses."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from retrieval.training.recall import i2t_recall, rerank, t2i_recall
from retrieval.model.heads import GRID_VARIANTS, FusionHead, ModelConfig, SharedSpace
from retrieval.training.features import DatasetFeatures
from retrieval.training.loop import TrainConfig, _t, crossfit_spaces, embed, mine

ALPHAS = (0.0, 0.25, 0.5, 1.0, 2.0)


def crossfit_pairs(cfg, class_emb, train: DatasetFeatures, tc: TrainConfig, epochs: int):
    """Hard-negative pairs for ITM, mined by ITC spaces that never saw the photo."""
    parts = []
    for _, held, space, sub in crossfit_spaces(cfg, class_emb, train, tc, epochs, tc.folds):
        caps, photos, itc, label = mine(space, sub, tc.candidates, force_positive=True)
        cap_global = np.flatnonzero(np.isin(train.caption_image, held))
        parts.append((cap_global[caps], held[photos], itc, label))
    return tuple(np.concatenate(x) for x in zip(*parts))


def head_scores(head: FusionHead, f: DatasetFeatures, caps, photos, itc, batch: int = 4096):
    """ITM logits and residuals h for (caption, photo) pairs of `f`."""
    head.eval()
    out, res = [], []
    with torch.no_grad():
        for s in range(0, len(caps), batch):
            c, p = caps[s:s + batch], photos[s:s + batch]
            args = _pair_inputs(head, f, c, p)
            r = head.residual(*args)
            res.append(r.numpy())
            out.append((head.itc_scale * _t(itc[s:s + batch]) + head.itc_bias + r).numpy())
    return np.concatenate(out), np.concatenate(res)


def _pair_inputs(head: FusionHead, f: DatasetFeatures, caps, photos):
    pooled, text = _t(f.pooled[photos]), _t(f.text[caps])
    if head.variant not in GRID_VARIANTS:
        return pooled, text
    uniq, index = np.unique(photos, return_inverse=True)
    mask = f.mask[caps]
    length = max(1, int(mask.sum(axis=1).max()))  # drop columns that are padding in every row
    return (pooled, text, _t(f.grid[uniq]), _t(f.tokens[caps, :length]),
            torch.as_tensor(mask[:, :length]), torch.as_tensor(index))


def rerank_recall(head, alpha: float, f: DatasetFeatures, space: SharedSpace, k: int,
                  itc_weight: float = 1.0) -> dict:
    """t2i and i2t recall of ITC top-k reranked by itc_weight * itc_scale * itc + alpha * h
    (itc_weight 0 ranks the candidates by the fusion head alone)."""
    img, txt = embed(space, f)
    sim = txt @ img.T

    def rescore(rows, cols, sim_=sim, t2i=True):
        caps, photos = (rows, cols) if t2i else (cols, rows)
        itc = sim_[rows, cols].reshape(-1)
        _, h = head_scores(head, f, caps.reshape(-1), photos.reshape(-1), itc)
        return (itc_weight * float(head.itc_scale.detach()) * itc + alpha * h).reshape(rows.shape)

    t2i = t2i_recall(rerank(sim, k, rescore), f.caption_image)
    i2t = i2t_recall(rerank(sim.T, k, lambda r, c: rescore(r, c, sim.T, False)), f.caption_image)
    return {"t2i": t2i, "i2t": i2t}


def train_head(variant: str, cfg: ModelConfig, train: DatasetFeatures, pairs, val: DatasetFeatures,
               space: SharedSpace, tc: TrainConfig, log=None):
    """BCE on cross-fitted hard-negative pairs; early stopping on validation t2i recall after
    reranking ITC's top-k at alpha = 1."""
    torch.manual_seed(tc.seed)
    gen = torch.Generator().manual_seed(tc.seed)
    head = FusionHead(variant, cfg)
    opt = torch.optim.AdamW(head.parameters(), lr=tc.itm_lr, weight_decay=tc.weight_decay)
    caps, photos, itc, label = pairs
    pos_weight = torch.tensor(float(tc.candidates - 1))
    best, best_state, bad, curve = -1.0, copy.deepcopy(head.state_dict()), 0, []
    # batches of a few photos with all their pairs: each photo's grid is projected once a batch
    by_photo = np.split(np.argsort(photos, kind="stable"), np.cumsum(np.bincount(photos))[:-1])
    by_photo = [g for g in by_photo if len(g)]
    for epoch in range(1, tc.itm_epochs + 1):
        head.train()
        order = torch.randperm(len(by_photo), generator=gen).numpy()
        losses = []
        for s in range(0, len(order), 8):
            i = np.concatenate([by_photo[j] for j in order[s:s + 8]])
            logit = head(_t(itc[i]), *_pair_inputs(head, train, caps[i], photos[i]))
            loss = F.binary_cross_entropy_with_logits(logit, _t(label[i]), pos_weight=pos_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        scores = rerank_recall(head, 1.0, val, space, tc.candidates)
        score = sum(scores["t2i"].values())
        curve.append({"epoch": epoch, "loss": float(np.mean(losses)), "val": scores})
        if log:
            log({"variant": variant, **curve[-1]})
        if score > best:
            best, best_state, bad = score, copy.deepcopy(head.state_dict()), 0
        else:
            bad += 1
            if bad >= tc.itm_patience:
                break
    head.load_state_dict(best_state)
    return head, curve


def choose_alpha(head, val: DatasetFeatures, space: SharedSpace, k: int):
    """The rerank weight with the best validation t2i recall sum; ties keep the smaller
    weight, so a head that does not help ends at 0 (ITC alone)."""
    table = {a: rerank_recall(head, a, val, space, k) for a in ALPHAS}
    best = max(ALPHAS, key=lambda a: (sum(table[a]["t2i"].values()), -a))
    return best, {str(a): v for a, v in table.items()}
