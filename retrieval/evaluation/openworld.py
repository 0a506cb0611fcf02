"""The open-world benchmark: k-fold cross-validation over captioned photos, each fold's photos
hidden among uncaptioned distractor photos, so every figure is on photos the model never saw,
in a gallery the size of a real library. Each fold trains the whole model with the same code
as `fusion train` (train_model), on the other folds plus any training-only datasets.

t2i is measured in the real gallery (fold + distractors) and projected to a 5,046-photo
library: the number of other photos outscoring a caption's photo is beta-binomial given how
many of the distractors did. i2t ranks each fold photo's captions among the caption memory's
corpus, which holds no caption of any photo evaluated here (see retrieval.model.memory)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from retrieval.evaluation.i2t import describe_from_memory, i2t_reranked
from retrieval.evaluation.short_queries import keyword_ranks
from retrieval.training.recall import KS, i2t_recall, ranks_of, recall_at
from retrieval.model.embedder import Embedder
from retrieval.model.heads import SharedSpace
from retrieval.model.query_side import LIKELY, likely_count, shares
from retrieval.model.reranker import EVIDENCE
from retrieval.training.features import DatasetFeatures
from retrieval.training.features import Photos
from retrieval.training.rerank import ALPHAS, Candidates, reranked_ranks

PROJECT_TO = 5046  # the photos of the library our users' figures were measured in
NOT_METHODS = ("calibration", "i2t", "i2t_small", "i2t_reranked", "i2t_small_reranked", "no_match",
               "describe_memory")
MEASURED_BETA = 0.5  # the memory weight in search vectors measured beside the shipped one
LIKELY_LEVELS = tuple(sorted({0.5, 0.8, 0.95, LIKELY}))  # likely-set levels measured


def projected_recall(ranks: np.ndarray, gallery: int, size: int = PROJECT_TO) -> dict:
    """Expected recall@k in a gallery of `size` photos drawn like this one: with m of the
    gallery's other photos above the target, the count above among size - 1 others is
    beta-binomial(size - 1, m + 1/2, others - m + 1/2)."""
    from scipy.stats import betabinom

    others = gallery - 1
    a, b = ranks + 0.5, others - ranks + 0.5
    return {f"r{k}": round(100.0 * float(np.mean(betabinom.cdf(k - 1, size - 1, a, b))), 2) for k in KS}


def of(f: DatasetFeatures) -> Photos:
    return Photos.of(f)


def fold_scores(model, memory, fold: DatasetFeatures, distractors: Photos, k: int,
                nonsense: np.ndarray | None = None, own_label: str = "reranked at the model's weight",
                own_weight: float | None = None, captions: list[str] | None = None) -> dict:
    """Ranks of every fold caption's photo by each method, in the open gallery (fold photos,
    then distractors) and in the fold alone (`own_label`: reranked at `own_weight`, else at the
    model's weight); calibration pairs of the pipeline at the model's weight. `captions`: the
    fold's caption texts in fold.text's order, for describing from the memory alone."""
    untrained = Embedder(SharedSpace(model.config, model.result.space.class_embeddings), None)
    emb = Embedder(model.result.space, memory)
    gallery = Photos.concat(of(fold), distractors)
    pv = emb.photos(gallery)
    q_itc, q_sent = emb.texts(fold.text)
    target, n = fold.caption_image, len(fold.pooled)
    bridge = untrained.photos(gallery).itc
    plain = emb.beta == MEASURED_BETA and not emb.neighbour_weight  # pv.search is that vector: recall once
    enhanced = pv.search if plain else Embedder(model.result.space, memory, beta=MEASURED_BETA,
                                                neighbours=0).photos(gallery).search
    sims = {"bridge (no training)": untrained.texts(fold.text)[0] @ bridge.T,
            "itc": q_itc @ pv.itc.T, f"itc + {MEASURED_BETA:g} memory in the search vector": q_itc @ enhanced.T}
    if emb.neighbour_weight and model.result.space.neighbours is not None:
        sims[f"+ {emb.neighbour_weight:g} captions of look-alike training photos"] = q_itc @ pv.search.T
    out = {}
    for name, sim in sims.items():
        out[name] = {"open": ranks_of(sim, target), "small": ranks_of(sim[:, :n], target)}
    for scope, cols in (("open", len(gallery)), ("small", n)):
        sim = (q_itc @ pv.search.T)[:, :cols]
        own = model.config.rerank_weight if own_weight is None else own_weight
        weights = sorted({own, model.config.rerank_weight, *ALPHAS[1:]})
        ranks, probs = _rerank(model, emb, sim, q_itc, q_sent, pv.evidence, target, k, weights)
        out.setdefault(own_label, {})[scope] = ranks[own]
        for w in ALPHAS[1:]:
            out.setdefault(f"reranked at weight {w:g}", {})[scope] = ranks[w]
        if scope == "open":
            out["calibration"] = probs
    # i2t corpus: the memory's captions (none is an evaluated photo's) plus the fold's own
    corpus = (np.concatenate([emb.corpus_itc, q_itc]), np.concatenate([emb.memory.vectors, q_sent]),
              np.concatenate([np.full(len(emb.corpus_itc), -1), target]))
    out["i2t"] = i2t_recall(pv.itc[:n] @ corpus[0].T, corpus[2])
    if memory is not None and model.reranker is not None:
        ev = pv.evidence.take(np.arange(n))
        bank = getattr(model, "bank", None)
        out["i2t_reranked"] = i2t_reranked(model, emb, pv.itc[:n], ev, *corpus, k, bank)
        out["i2t_small_reranked"] = i2t_reranked(model, emb, pv.itc[:n], ev, q_itc, q_sent, target, k, bank)
        if captions is not None:
            out["describe_memory"] = describe_from_memory(model, emb, pv.itc[:n], ev, k, bank, captions, q_sent,
                                                          target)
    out["i2t_small"] = i2t_recall(pv.itc[:n] @ q_itc.T, target)  # the fold's own captions only
    if nonsense is not None and len(distractors):
        out["no_match"] = _no_match(model, emb, fold, distractors, nonsense, k)
    return out


def _no_match(model, emb, fold, distractors, nonsense, k) -> dict:
    """How often search says "no photo matches well": for the fold's captions with their photo
    in the library (a false alarm), with it left out (the library holds no such photo), and
    for made-up queries."""
    from retrieval.training.rerank import top_probabilities

    t = model.config.match_threshold
    inside = top_probabilities(model.reranker, emb, Photos.concat(of(fold), distractors), fold.text, k)
    outside = top_probabilities(model.reranker, emb, distractors, fold.text, k)
    made_up = top_probabilities(model.reranker, emb, distractors, nonsense, k)
    return {"threshold": t, "flagged_in_library": float(np.mean(inside < t)),
            "flagged_not_in_library": float(np.mean(outside < t)), "flagged_made_up": float(np.mean(made_up < t))}


def _rerank(model, emb, sim, q_itc, q_sent, ev, target, k, weights):
    """Ranks after reranking the top k at each weight, and (probability, label) pairs."""
    k = min(k, sim.shape[1])
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    itc = np.take_along_axis(sim, top, 1)
    feats = emb.evidence(itc, q_itc, q_sent, ev.take(top))
    logit = model.reranker.logits(feats)
    c = Candidates(feats, (top == target[:, None]).astype(np.float32), ranks_of(sim, target), sim.shape[1])
    ranks = {w: reranked_ranks(c, itc + w * logit) for w in weights}
    share = shares(itc, logit, model.config.rerank_weight, model.config.share_temperature)
    found = c.label.any(1)  # the share is conditional on the photo being among the candidates
    return ranks, {"probability": (model.reranker.probabilities(logit).ravel(), c.label.ravel()),
                   "share": (share[found].ravel(), c.label[found].ravel()),
                   "likely": likely_sets(share, c.label)}


def likely_sets(share: np.ndarray, label: np.ndarray) -> dict:
    """For each level, each query's likely set (its top results whose shares add up to the
    level, as search draws its line): (size, whether it holds the photo described, whether that
    photo is among the candidates at all); label marks it (a row of zeros: not among them)."""
    order = np.argsort(-share, axis=1, kind="stable")
    ordered, hit = np.take_along_axis(share, order, 1), np.take_along_axis(label, order, 1) > 0
    out = {}
    for level in LIKELY_LEVELS:
        size = np.array([likely_count(row, level) or len(row) for row in ordered])
        out[f"{level:g}"] = (size, np.array([h[:n].any() for h, n in zip(hit, size)]), hit.any(1))
    return out


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict:
    """Reliability table and expected calibration error of match probabilities."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probs, edges) - 1, 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            conf, acc = float(probs[m].mean()), float(labels[m].mean())
            ece += m.mean() * abs(conf - acc)
            table.append({"bin": f"{edges[b]:.1f}-{edges[b + 1]:.1f}", "n": int(m.sum()),
                          "mean_probability": round(conf, 4), "match_rate": round(acc, 4)})
    return {"ece": round(float(ece), 4), "bins": table}


def summarise(folds: list[dict], gallery: int) -> dict:
    """Mean and std over folds of every method's recall in each gallery."""
    methods = [m for m in folds[0] if m not in NOT_METHODS]
    out = {"t2i": {}, "i2t": {}}
    for m in methods:
        for scope, fn in (("open", lambda r: recall_at(r)), ("projected", lambda r: projected_recall(r, gallery)),
                          ("small", lambda r: recall_at(r))):
            key = "open" if scope == "projected" else scope
            vals = [fn(f[m][key]) for f in folds]
            out["t2i"].setdefault(m, {})[scope] = _mean_std(vals)
    out["i2t"]["itc"] = _mean_std([f["i2t"] for f in folds])
    out["i2t"]["itc, fold's own captions only"] = _mean_std([f["i2t_small"] for f in folds])
    if "i2t_reranked" in folds[0]:
        for w in folds[0]["i2t_reranked"]:
            out["i2t"][f"itc reranked at weight {w}"] = _mean_std([f["i2t_reranked"][w] for f in folds])
            out["i2t"][f"fold alone, reranked at weight {w}"] = _mean_std([f["i2t_small_reranked"][w] for f in folds])
    if "describe_memory" in folds[0]:  # the memory alone: % of photos whose first caption agrees, closeness
        out["describe_memory"] = {rule: {
            "first_agrees": _spread([100 * float(np.mean(f["describe_memory"][rule][1])) for f in folds]),
            "closeness": _spread([float(np.mean(f["describe_memory"][rule][2])) for f in folds])}
            for rule in folds[0]["describe_memory"]}
    out["calibration"] = {}
    for kind in ("probability", "share"):
        probs = np.concatenate([f["calibration"][kind][0] for f in folds])
        labels = np.concatenate([f["calibration"][kind][1] for f in folds])
        out["calibration"][kind] = calibration(probs, labels)
    out["likely"] = {}
    for level in folds[0]["calibration"]["likely"]:
        size, held, found = (np.concatenate([f["calibration"]["likely"][level][i] for f in folds]) for i in range(3))
        out["likely"][level] = {"held": round(float(held.mean()), 4), "held_if_candidate": round(float(held[found].mean()), 4),
                                "mean_size": round(float(size.mean()), 2), "median_size": float(np.median(size)),
                                "p90_size": float(np.percentile(size, 90))}
    if "no_match" in folds[0]:
        out["no_match"] = {k: round(float(np.mean([f["no_match"][k] for f in folds])), 4) for k in folds[0]["no_match"]}
    return out


def _mean_std(rows: list[dict]) -> dict:
    return {k: {"mean": round(float(np.mean([r[k] for r in rows])), 2),
                "std": round(float(np.std([r[k] for r in rows])), 2)} for k in rows[0]}


def fold_draws(photos: int, distractors: int, folds: int, seed: int):
    """open_world_report's draws, in its order: (the generator, which continues to draw each
    fold's validation photos), the distractors trained on, and each evaluated photo's fold."""
    rng = np.random.default_rng(seed)
    half = np.sort(rng.permutation(distractors)[: distractors // 2])
    return rng, half, rng.permutation(photos) % folds


def open_world_report(data: list[Path], distractors: Path, train_only: list[Path] = (), folds: int = 5,
                      seed: int = 0, image_encoder: str = "efficientnet-lite0", cache_dir: Path | None = None,
                      candidates: int = 32, tc=None, log=None, encoders=None, only_folds=None,
                      raw: list | None = None, index_encoder=None) -> dict:
    """Cross-validate over the captioned photos of `data`: each fold is held out, the model is
    trained on the rest (plus `train_only` datasets, never evaluated) and evaluated among
    the other distractors. A fixed half of the distractors is training material (the
    reranker's candidates are ranked among them, and they are the uncaptioned photos that
    get pseudo-captions); the evaluation gallery is the fold plus the other half. `encoders`:
    an (image, text) encoder pair to use instead of the named image encoder and MiniLM.
    `only_folds`: evaluate these folds alone (the same folds and draws as a whole run); `raw`:
    a list that receives each evaluated fold's scores (summarise() pools them); `index_encoder`:
    an image encoder the evaluated folds and gallery are indexed with (training keeps ie's)."""
    from retrieval.encoders.image_encoder import load_image_encoder
    from retrieval.encoders.text_encoder import load_text_encoder
    from retrieval.model.memory import load_memory
    from retrieval.data.datasets import load_dataset
    from retrieval.training.features import dataset_features, folder_features
    from retrieval.training.fragments import for_training
    from retrieval.training.loop import TrainConfig
    from retrieval.training.rerank import nonsense_queries
    from retrieval.training.trainer import class_embeddings, image_size, model_config, train_model

    tc = tc or TrainConfig(seed=seed, variants=())
    ie, te = encoders or (load_image_encoder(image_encoder, image_size=image_size(image_encoder, tc)),
                          load_text_encoder())
    slim = (lambda f: f) if tc.variants else DatasetFeatures.without_cells_and_tokens

    def feats_of(ds):  # with the captions' fragments when ITC trains on them
        return for_training(slim(dataset_features(ds, ie, te, cache_dir)), ds, te, tc, cache_dir=cache_dir)

    datasets = [load_dataset(d) for d in data]
    evals = DatasetFeatures.concat([feats_of(ds) for ds in datasets])
    texts = np.array([c.text for ds in datasets for c in ds.captions], object)[evals.caption_image >= 0]
    evals = evals.subset(np.arange(len(evals.pooled)))  # drops the text-only captions, keeps the order
    extra = [feats_of(load_dataset(d)) for d in train_only]
    extra = [e.subset(np.arange(len(e.pooled))) for e in extra]
    others = folder_features(distractors, ie, cache_dir)
    indexed, gallery_photos = evals, others
    if index_encoder is not None:  # its photo fields only (dataset features take the grid from torch)
        paths = [ds.image_path(i) for ds in datasets for i in range(len(ds.images))]
        f, _, errors = index_encoder.encode_files(paths, normalize=False)
        if errors:
            raise errors[0]
        indexed = replace(evals, pooled=f.pooled, logits=f.logits, cells=f.cells, mid=f.mid)
        gallery_photos = folder_features(distractors, index_encoder, cache_dir)
    memory = load_memory(te)
    nonsense = te.encode(nonsense_queries(seed=seed), normalize=False).pooled
    held_out_nonsense = te.encode(nonsense_queries(seed=seed + 1000), normalize=False).pooled
    rng, half, fold_of = fold_draws(len(evals.pooled), len(others), folds, seed)
    train_distractors = others.take(half)
    rest_ = np.setdiff1d(np.arange(len(others)), half)  # never trained on, not even as pseudo pairs
    others = gallery_photos.take(rest_)
    cfg, class_emb = model_config(image_encoder, te, memory, tc), class_embeddings(te)
    results = []
    for f in range(folds):
        rest = np.flatnonzero(fold_of != f)
        val = np.sort(rng.permutation(rest)[:50])
        if only_folds is not None and f not in only_folds:
            continue
        train = DatasetFeatures.concat([evals.subset(np.setdiff1d(rest, val))] + extra)
        model = train_model(cfg, class_emb, train, evals.subset(val), memory, replace(tc, seed=seed + f),
                            train_distractors, nonsense)
        held_photos = np.flatnonzero(fold_of == f)
        held = indexed.subset(held_photos)
        held_texts = list(texts[np.isin(evals.caption_image, held_photos)])
        results.append(fold_scores(model, memory, held, others, candidates, held_out_nonsense,
                                   "reranked at the weight tuned on its training candidates", model.record["tuned_alpha"],
                                   held_texts))
        results[-1].update(keyword_ranks(model, memory, held, others, held_texts,
                                         lambda t: te.encode(t, normalize=False).pooled, candidates))
        if log:
            r = results[-1]
            log({"fold": f, "photos": int(len(held.pooled)), "captions": int(len(held.text)),
                 **{m: recall_at(r[m]["open"]) for m in r if m not in NOT_METHODS}})
    if raw is not None:
        raw.extend(results)
    gallery = int(np.mean([(fold_of == f).sum() for f in range(folds)])) + len(others)
    report = summarise(results, gallery)
    report.update({"folds": folds, "photos": int(len(evals.pooled)), "captions": int(len(evals.text)),
                   "distractors": len(others), "open_gallery": gallery, "projected_to": PROJECT_TO,
                   "data": [str(d) for d in data], "train_only": [str(d) for d in train_only],
                   "memory_captions": len(memory.texts), "candidates": candidates, "evidence": list(EVIDENCE)})
    return report


def _spread(values: list[float]) -> dict:
    return {"mean": round(float(np.mean(values)), 3), "std": round(float(np.std(values)), 3)}
