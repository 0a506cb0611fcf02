"""`fusion train` as a library function: datasets in, a checkpoint file out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from retrieval.model.checkpoint import save_checkpoint
from retrieval.data.datasets import load_dataset
from retrieval.errors import DatasetError
from retrieval.training.features import DatasetFeatures, dataset_features
from retrieval.encoders.image_encoder import CONFIGS, imagenet_classes, load_image_encoder, run_size
from retrieval.model.heads import ModelConfig
from retrieval.encoders.text_encoder import load_text_encoder
from retrieval.encoders.tops import digest as tops_digest
from retrieval.model.memory import load_memory
from retrieval.model.prior import bank_rows
from retrieval.model.reranker import EVIDENCE, Reranker
from retrieval.training.features import Photos, folder_features
from retrieval.training.fragments import for_training
from retrieval.training.loop import TrainConfig, TrainResult, attach_neighbours
from retrieval.training.stages import train_all
from retrieval.training.rerank import (choose_alpha, crossfit_candidates, fit_reranker,
                                       fit_share_temperature, nonsense_queries, top_probabilities)


def class_embeddings(text_encoder) -> torch.Tensor:
    """MiniLM vectors of the bare ImageNet class names (bare names beat 'a photo of a {}')."""
    return torch.from_numpy(text_encoder.encode(imagenet_classes()).pooled)


def split(feats: list[DatasetFeatures], names: list[list[str]], exclude: set[str], val_photos: int,
          seed: int):
    """Validation = `val_photos` photos of the first dataset; photos whose file name is in
    `exclude` (a held-out test set) are dropped everywhere; the rest trains."""
    parts, val = [], None
    rng = np.random.default_rng(seed)
    for n, (f, files) in enumerate(zip(feats, names)):
        keep = np.array([i for i, p in enumerate(files) if Path(p).name not in exclude], np.int64)
        if n == 0:
            if len(keep) <= val_photos:
                raise DatasetError(f"the first dataset has {len(keep)} usable photos; "
                                   f"--val-photos {val_photos} leaves none to train on")
            perm = rng.permutation(keep)
            val = f.subset(np.sort(perm[:val_photos]))
            keep = np.sort(perm[val_photos:])
        parts.append(f.subset(keep))
    return DatasetFeatures.concat(parts), val


@dataclass
class TrainedModel:
    config: ModelConfig  # with the reranker's weight filled in
    result: TrainResult  # the shared space and the fusion-head baselines
    reranker: Reranker
    record: dict  # the reranker's cross-fitted candidates and weight table
    bank: np.ndarray  # (B, d) ITC vectors of the caption prior's bank photos


def train_model(cfg: ModelConfig, class_emb, train: DatasetFeatures, val: DatasetFeatures, memory,
                tc: TrainConfig, distractors: Photos | None = None, nonsense: np.ndarray | None = None,
                log=None) -> TrainedModel:
    """The whole model from features: ITC (and the fusion-head baselines), then the evidence
    reranker on cross-fitted candidates, its weight, and (given the raw text vectors of
    `nonsense` queries) the match probability below which search says nothing matches well.
    `fusion train` and the open-world benchmark's folds both come through here."""
    result = train_all(cfg, class_emb, train, val, tc, log=log, unlabelled=distractors, memory=memory)
    attach_neighbours(result.space, DatasetFeatures.concat([train] + ([val] if val is not None else [])), tc)
    cands, emb, gallery = crossfit_candidates(cfg, class_emb, train, memory, tc, result.history["itc_best_epoch"],
                                              distractors, log)
    reranker = fit_reranker(cands, tc.reranker_hidden, seed=tc.seed)
    tuned, table = choose_alpha(reranker, cands)
    alpha = tuned if tc.rerank_weight is None else tc.rerank_weight
    temperature = fit_share_temperature(reranker, cands, alpha)
    threshold = 0.0
    if nonsense is not None:
        made_up = top_probabilities(reranker, emb, gallery, nonsense, tc.rerank_candidates)
        real = reranker.probabilities(reranker.logits(cands.feats).max(1))
        threshold = no_match_threshold(real, made_up)
    if log:
        log({"stage": "reranker", "alpha": alpha, "crossfit_t2i": table.get(str(alpha)), "no_match_below": threshold,
             "share_temperature": temperature})
    cfg = replace(cfg, rerank="evidence", rerank_weight=alpha, reranker_hidden=tc.reranker_hidden,
                  match_threshold=round(threshold, 4), describe_weight=tc.describe_weight,
                  describe_prior=tc.describe_prior, share_temperature=round(temperature, 4),
                  memory_describe_weight=tc.memory_describe_weight)
    record = {"queries": int(len(cands.label)), "gallery": cands.gallery, "crossfit_t2i_by_alpha": table,
              "weights": dict(zip(EVIDENCE, np.round(_linear_weights(reranker), 3).tolist())),
              "match_threshold": threshold, "tuned_alpha": tuned, "share_temperature": temperature}
    return TrainedModel(cfg, result, reranker, record, prior_bank(result.space, distractors or train, tc.seed))


def prior_bank(space, photos, seed: int) -> np.ndarray:
    """The caption prior's bank: ITC vectors of up to BANK_PHOTOS uncaptioned photos (the
    distractors), else training photos, in float16 as the checkpoint stores them."""
    pick = bank_rows(len(photos.pooled), seed)
    with torch.no_grad():
        args = [torch.as_tensor(np.asarray(a, np.float32)[pick])
                for a in (photos.pooled, photos.logits, photos.cells, photos.mid)]
        return space.eval().embed_image(*args).numpy().astype(np.float16)


def no_match_threshold(real: np.ndarray, made_up: np.ndarray) -> float:
    """The best-match probability that best tells made-up queries (below it) from real
    captions of photos in the library (above it): the maximum of the share of made-up
    queries flagged minus the share of real ones flagged."""
    cuts = np.unique(np.concatenate([real, made_up]))
    gap = [(np.mean(made_up < c) - np.mean(real < c), -c) for c in cuts]
    return float(-max(gap)[1])


def _linear_weights(reranker: Reranker) -> np.ndarray:
    first = reranker.net[0].weight.detach().numpy()
    return first[0] if first.shape[0] == 1 else np.abs(first).mean(0)


def image_size(image_encoder: str, tc: TrainConfig) -> int:
    """The input side training feeds the image encoder (and the checkpoint then records)."""
    return tc.image_size or run_size(image_encoder)


def model_config(image_encoder: str, text_encoder, memory, tc: TrainConfig, image_tops: str = "") -> ModelConfig:
    return ModelConfig(image_tops=image_tops, text_tops=tops_digest(text_encoder.tops), image_encoder=image_encoder, image_dim=CONFIGS[image_encoder].feature_dim,
                       image_size=image_size(image_encoder, tc),
                       mid_dim=CONFIGS[image_encoder].mid_dim if tc.mid_features else 0,
                       image_hidden=tc.image_hidden, image_bridge=tc.image_bridge,
                       text_hidden=tc.text_hidden,
                       text_encoder=text_encoder.config.name, text_dim=text_encoder.config.dim,
                       bridge_cells=tc.bridge_cells, memory_beta=tc.memory_beta, memory_digest=memory.digest,
                       neighbour_weight=tc.neighbour_weight, neighbour_k=tc.neighbour_k, neighbour_tau=tc.neighbour_tau)


def train_checkpoint(data: list[Path], out: Path, exclude: list[Path] = (), val_photos: int = 50,
                     seed: int = 0, image_encoder: str = "efficientnet-lite0", image_weights=None,
                     cache_dir: Path | None = None, log=None, tc: TrainConfig | None = None,
                     distractors: Path | None = None) -> dict:
    """Train the shared space, the fusion-head baselines and the evidence reranker on `data`
    (ranking training candidates among the photos of `distractors`, if given) and write the
    checkpoint to `out`. Returns the training record (also stored in the checkpoint)."""
    tc = tc or TrainConfig(seed=seed)
    ie = load_image_encoder(image_encoder, image_weights, image_size=image_size(image_encoder, tc))
    te = load_text_encoder()
    held = {Path(p).name for d in exclude for p in load_dataset(d).images}
    tops = None
    if tc.tune_tops:
        if Path(tc.tune_tops).resolve() == Path(data[0]).resolve():
            raise DatasetError(f"--tune-tops {tc.tune_tops}: the first --data folder holds the validation photos; "
                               "put another --data folder first")
        ie, te, tops = tuned_encoders(ie, te, Path(tc.tune_tops), held, tc, cache_dir)
    datasets = [load_dataset(d) for d in data]
    feats = [dataset_features(ds, ie, te, cache_dir) for ds in datasets]
    feats = [for_training(f, ds, te, tc, cache_dir=cache_dir) for f, ds in zip(feats, datasets)]  # fragments, if asked
    if not tc.variants:  # nothing reads cells and tokens then: a third of the memory
        feats = [f.without_cells_and_tokens() for f in feats]
    others = folder_features(distractors, ie, cache_dir) if distractors else None
    train, val = split(feats, [ds.images for ds in datasets], held, val_photos, tc.seed)
    memory = load_memory(te)
    cfg = model_config(image_encoder, te, memory, tc, tops_digest(ie.tops))
    nonsense = te.encode(nonsense_queries(seed=tc.seed), normalize=False).pooled
    model = train_model(cfg, class_embeddings(te), train, val, memory, tc, others, nonsense, log)
    result = model.result
    record = {
        "data": [str(d) for d in data], "excluded": [str(d) for d in exclude],
        "distractors": str(distractors) if distractors else None,
        "train_photos": int(len(train.pooled)), "train_captions": int(len(train.text)),
        "val_photos": int(len(val.pooled)), "train_config": asdict(tc),
        "itc_best_epoch": result.history["itc_best_epoch"], "val_itc": result.history["itc_val"],
        "val_rerank": {v: result.history[v]["val_by_alpha"][str(result.alphas[v])] for v in result.heads},
        "reranker": model.record,
    }
    record["content_hash"] = save_checkpoint(out, model.config, result.space, result.heads, result.alphas,
                                             record, model.reranker, model.bank, tops)
    return record


def tuned_encoders(ie, te, folder: Path, held: set, tc: TrainConfig, cache_dir: Path | None = None):
    """The encoders with their tops fine-tuned on `folder`'s captioned photos (those not named in
    `held`) and moved tc.tops_mix of the way from the pretrained weights: (image encoder, text
    encoder, their tops as the checkpoint stores them). retrieval/training/tops.py."""
    from tqdm import tqdm

    from retrieval.training.block_inputs import block_inputs
    from retrieval.training.tops import RECIPE, tune

    if not ie.config.name.startswith("efficientnet-lite"):
        raise DatasetError(f"--tune-tops tunes EfficientNet-Lite's last block, not {ie.config.name}'s; "
                           "train without --tune-tops")
    ds = load_dataset(folder)
    maps, text = block_inputs(ds, ie, te, cache_dir, tc.tops_depth, tc.seed if tc.tops_fragment_share > 0 else None)
    caps_of = ds.captions_of()
    photos = np.array([i for i, p in enumerate(ds.images) if Path(p).name not in held and caps_of[i]], np.int64)
    if len(photos) < 8:
        raise DatasetError(f"--tune-tops {folder}: {len(photos)} captioned photos to tune on; give a folder with "
                           "hundreds (Flickr8k's thousands tuned the shipped model)")
    batch = min(RECIPE["batch"], len(photos))
    with tqdm(total=tc.tops_epochs * (len(photos) // batch), desc="tuning the encoders' tops",
              unit="batch") as bar:
        def step(loss):
            bar.update()
            bar.set_postfix_str(f"loss {loss:.3f}", refresh=False)

        _, tops = tune(ie, te, maps, text, caps_of, photos, tc.tops_epochs, tc.tops_mix, tc.seed, progress=step,
                       depth=tc.tops_depth, fragment_share=tc.tops_fragment_share)
    return (load_image_encoder(ie.config.name, ie.weights, image_size=ie.config.image_size, tops=tops["image"]),
            load_text_encoder(tops=tops["text"]), tops)
