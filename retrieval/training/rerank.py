"""Training the reranker on cross-fitted candidates: each fold's photos are ranked by an ITC
model (and caption memory recall) trained without them, among distractor photos when given,
so the evidence it learns from looks like the evidence of unseen photos at query time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from retrieval.training.features import Photos
from retrieval.training.recall import KS
from retrieval.model.embedder import Embedder
from retrieval.model.reranker import EVIDENCE, Reranker

ALPHAS = (0.0, 0.03, 0.1, 0.25, 0.5, 1.0, 2.0)




@dataclass
class Candidates:
    feats: np.ndarray  # (Q, K, len(EVIDENCE)) evidence of each query's ITC top-K
    label: np.ndarray  # (Q, K) 1.0 where the candidate is the query's own photo
    first_rank: np.ndarray  # (Q,) 0-based first-stage rank of the own photo in the gallery
    gallery: int  # photos in the gallery ranked


def rank_candidates(emb: Embedder, photos: Photos, text: np.ndarray, target: np.ndarray, k: int) -> Candidates:
    """Rank all `photos` for each caption vector in `text` (raw MiniLM) by the search vector,
    keep the top k with their evidence. `target[i]` is caption i's photo (index in photos)."""
    pv = emb.photos(photos)
    q_itc, q_sent = emb.texts(text)
    sim = q_itc @ pv.search.T
    k = min(k, len(photos))
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    own = sim[np.arange(len(sim)), target][:, None]
    first = ((sim > own) | ((sim == own) & (np.arange(sim.shape[1])[None] < target[:, None]))).sum(1)
    feats = emb.evidence(np.take_along_axis(sim, top, 1), q_itc, q_sent, pv.evidence.take(top))
    return Candidates(feats, (top == target[:, None]).astype(np.float32), first, len(photos))


def fit_reranker(c: Candidates, hidden: int = 0, listwise: float = 1.0, epochs: int = 300,
                 seed: int = 0) -> Reranker:
    """Binary cross-entropy (calibrated probabilities) plus a listwise softmax term over each
    query's candidates (the order), full batch with Adam."""
    torch.manual_seed(seed)
    x, y = torch.from_numpy(c.feats), torch.from_numpy(c.label)
    model = Reranker(len(EVIDENCE), hidden)
    flat = x.reshape(-1, x.shape[-1])
    model.mean.copy_(flat.mean(0))
    model.std.copy_(flat.std(0) + 1e-6)
    opt = torch.optim.Adam(model.parameters(), lr=0.01 if hidden else 0.02, weight_decay=1e-3)
    hit = y.sum(1) > 0
    for _ in range(epochs):
        logit = model(x)
        loss = F.binary_cross_entropy_with_logits(logit, y)
        if listwise and hit.any():
            loss = loss - listwise * (F.log_softmax(logit[hit], 1) * y[hit]).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    _platt(model, x, y)
    return model.eval()


def _platt(model: Reranker, x: torch.Tensor, y: torch.Tensor) -> None:
    """Fit the probability's scale and bias to the labels by binary cross-entropy."""
    with torch.no_grad():
        z = model.eval()(x).reshape(-1)
    ab = torch.tensor([1.0, 0.0], requires_grad=True)
    opt = torch.optim.LBFGS([ab], max_iter=100)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(ab[0] * z + ab[1], y.reshape(-1))
        loss.backward()
        return loss

    opt.step(closure)
    model.prob_scale.fill_(float(ab[0].detach()))
    model.prob_bias.fill_(float(ab[1].detach()))


def reranked_ranks(c: Candidates, scores: np.ndarray) -> np.ndarray:
    """0-based rank of each query's own photo after reordering its top-K by `scores`; photos
    outside the top K keep their first-stage rank."""
    order = np.argsort(-scores, axis=1, kind="stable")
    pos = np.take_along_axis(c.label, order, 1) > 0
    return np.where(pos.any(1), pos.argmax(1), c.first_rank)


def rerank_scores(model: Reranker, c: Candidates, alpha: float) -> np.ndarray:
    """score = itc + alpha * logit, as search computes it."""
    return c.feats[..., EVIDENCE.index("itc")] + alpha * model.logits(c.feats)


def fit_share_temperature(model: Reranker, c: Candidates, alpha: float) -> float:
    """The temperature of the share search shows, softmax((itc + alpha x logit) / T) over each
    query's candidates, fitted on the queries whose photo is among them (0 without any)."""
    hit = c.label.sum(1) > 0
    if not hit.any():
        return 0.0
    return best_temperature(rerank_scores(model, c, alpha)[hit], c.label[hit] > 0)


def best_temperature(score: np.ndarray, label: np.ndarray) -> float:
    """The T for which softmax(score / T) over each row best predicts the row's one True
    `label` (least cross-entropy; golden-section search on log T in [0.001, 10]); rows may
    be padded with -inf."""
    score = np.asarray(score, np.float64)

    def loss(log_t: float) -> float:
        z = score / np.exp(log_t)
        z = z - z.max(1, keepdims=True)
        return float((np.log(np.exp(z).sum(1)) - z[label]).mean())

    lo, hi, g = np.log(1e-3), np.log(10.0), (np.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        lo, hi = (lo, b) if loss(a) < loss(b) else (a, hi)
    return float(np.exp((lo + hi) / 2))


def choose_alpha(model: Reranker, c: Candidates) -> tuple[float, dict]:
    """The weight with the best t2i recall sum on the candidates; ties keep the smaller."""
    table = {}
    for a in ALPHAS:
        r = reranked_ranks(c, rerank_scores(model, c, a))
        table[str(a)] = {f"r{k}": round(100.0 * float(np.mean(r < k)), 2) for k in KS}
    best = max(ALPHAS, key=lambda a: (sum(table[str(a)].values()), -a))
    return best, table


def crossfit_candidates(cfg, class_emb, train, memory, tc, epochs: int, distractors: Photos | None = None,
                        log=None):
    """Candidates of every training caption, each ranked by an ITC model trained on the other
    folds only (with its own memory recall), among its fold's photos and the distractors.
    Also returns the last fold's embedder and gallery, to measure the no-match threshold."""
    from retrieval.training.loop import crossfit_spaces

    parts = []
    for fold, _, space, sub in crossfit_spaces(cfg, class_emb, train, tc, epochs, tc.rerank_folds):
        photos = Photos.of(sub)
        if distractors is not None:
            photos = Photos.concat(photos, distractors)
        emb = Embedder(space, memory)
        parts.append(rank_candidates(emb, photos, sub.text, sub.caption_image, tc.rerank_candidates))
        if log:
            log({"stage": "rerank-crossfit", "fold": fold, "photos": len(photos)})
    k = min(p.label.shape[1] for p in parts)  # tiny folds can hold fewer photos than K
    cands = Candidates(np.concatenate([p.feats[:, :k] for p in parts]), np.concatenate([p.label[:, :k] for p in parts]),
                       np.concatenate([p.first_rank for p in parts]), gallery=int(np.mean([p.gallery for p in parts])))
    return cands, emb, photos


def nonsense_queries(n: int = 200, seed: int = 0) -> list[str]:
    """Strings no photo matches: one to three made-up words of 3 to 8 letters."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return [" ".join("".join(rng.choice(letters, rng.integers(3, 9))) for _ in range(rng.integers(1, 4)))
            for _ in range(n)]


def top_probabilities(model: Reranker, emb: Embedder, photos: Photos, text: np.ndarray, k: int) -> np.ndarray:
    """Each query's best match probability among its ITC top k in `photos`."""
    pv = emb.photos(photos)
    q_itc, q_sent = emb.texts(text)
    sim = q_itc @ pv.search.T
    top = np.argsort(-sim, axis=1, kind="stable")[:, :min(k, len(photos))]
    feats = emb.evidence(np.take_along_axis(sim, top, 1), q_itc, q_sent, pv.evidence.take(top))
    return model.probabilities(model.logits(feats).max(1))
