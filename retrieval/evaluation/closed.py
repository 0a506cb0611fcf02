"""Recall in a closed gallery (every photo captioned, nothing else in it): text -> image as
search ranks (the search vector's top K reranked at the model's weight) and image -> text as
`fusion describe` ranks (ITC top K, the reranker at its describe weight, minus the caption
prior). `fusion bench recall` and the Flickr8k benchmark both measure through here."""

from __future__ import annotations

from retrieval.evaluation.openworld import NOT_METHODS, fold_scores, recall_at
from retrieval.training.features import DatasetFeatures
from retrieval.training.features import Photos

SHIPPED = "shipped ranking"
DESCRIBE = "describe's ranking"


def closed_gallery_recall(model, memory, f: DatasetFeatures, candidates: int = 32) -> dict:
    """`model` has .config, .result.space, .reranker and .bank (a TrainedModel, or a loaded
    checkpoint wrapped alike). Returns {"t2i": {method: r@k}, "i2t": {method: r@k}}; the
    shipped rankings are under SHIPPED and DESCRIBE, the other rows show what each part adds."""
    w = model.config.rerank_weight
    scores = fold_scores(model, memory, f, Photos.of(f).take(slice(0, 0)), candidates,
                         own_label=f"{SHIPPED} (reranked at weight {w:g})")
    t2i = {name: recall_at(r["small"]) for name, r in scores.items() if name not in NOT_METHODS}
    t2i = {(SHIPPED if name.startswith(SHIPPED) else name): v for name, v in t2i.items()}
    i2t = {"itc (among the dataset's own captions)": scores["i2t_small"]}
    dw, lam = model.config.describe_weight, model.config.describe_prior
    reranked = scores.get("i2t_small_reranked", {})
    if f"{dw:g}, prior {lam:g}" in reranked:
        i2t[DESCRIBE] = reranked[f"{dw:g}, prior {lam:g}"]
    elif f"{dw:g}" in reranked:
        i2t[DESCRIBE] = reranked[f"{dw:g}"]
    for lam_other in (0.25, 1.0):
        key = f"{dw:g}, prior {lam_other:g}"
        if key in reranked and lam_other != lam:
            i2t[f"describe's ranking with caption prior {lam_other:g}"] = reranked[key]
    return {"t2i": t2i, "i2t": i2t, "weights": {"rerank": w, "describe": dw, "describe_prior": lam}}
