"""`fusion train`'s stages in order: the ITC soup (again with pseudo-captions when there are
unlabelled photos and a caption memory), then the optional fusion-head baselines."""

from __future__ import annotations

from retrieval.model.heads import ModelConfig
from retrieval.training.features import DatasetFeatures
from retrieval.training.fusion_heads import choose_alpha, crossfit_pairs, train_head
from retrieval.training.loop import TrainConfig, TrainResult, itc_scores, train_itc_soup
from retrieval.training.pseudo import itc_view, pseudo_pairs


def train_all(cfg: ModelConfig, class_emb, train: DatasetFeatures, val: DatasetFeatures,
              tc: TrainConfig, log=None, unlabelled=None, memory=None) -> TrainResult:
    """ITC (a soup; with `unlabelled` photos and the caption memory, trained again on the
    real pairs plus their pseudo-captions), then the fusion-head baselines on real pairs."""
    itc_train, pseudo = itc_view(train), 0
    if unlabelled is not None and len(unlabelled) and memory is not None and tc.pseudo_captions:
        first, _, _ = train_itc_soup(cfg, class_emb, itc_train, val, tc, log=log)
        extra = pseudo_pairs(first, memory, unlabelled, tc.pseudo_captions, itc_train, tc.pseudo_prior, tc.seed)
        itc_train, pseudo = DatasetFeatures.concat([itc_train, extra]), len(extra.pooled)
    space, best_epoch, curve = train_itc_soup(cfg, class_emb, itc_train, val, tc, log=log)
    history = {"itc": curve, "itc_best_epoch": best_epoch, "itc_val": itc_scores(space, val),
               "pseudo_photos": pseudo}
    pairs = crossfit_pairs(cfg, class_emb, train, tc, best_epoch) if tc.variants else None
    heads, alphas = {}, {}
    for variant in tc.variants:
        head, hcurve = train_head(variant, cfg, train, pairs, val, space, tc, log=log)
        alpha, table = choose_alpha(head, val, space, tc.candidates)
        heads[variant], alphas[variant] = head, alpha
        history[variant] = {"curve": hcurve, "alpha": alpha, "val_by_alpha": table}
        if log:
            log({"variant": variant, "alpha": alpha, "val": table[str(alpha)]})
    return TrainResult(space, heads, alphas, history)
