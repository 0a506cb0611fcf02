"""`fusion train` as a library function: datasets in, a checkpoint file out."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from retrieval.model.checkpoint import save_checkpoint
from retrieval.training.datasets import load_dataset
from retrieval.errors import DatasetError
from retrieval.training.features import DatasetFeatures, dataset_features
from retrieval.encoders.image_encoder import CONFIGS, imagenet_classes, load_image_encoder
from retrieval.model.heads import FUSION_VARIANTS, ModelConfig
from retrieval.encoders.text_encoder import load_text_encoder
from retrieval.training.loop import TrainConfig, train_all


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


def choose_shipped(result) -> str:
    """The head search reranks with: best validation t2i recall at its tuned weight, never the
    separable additive head (it cannot change a ranking); ties go to the head whose features
    cost least to store per photo (FUSION_VARIANTS order: cross-attention needs grid cells)."""
    ranked = [v for v in FUSION_VARIANTS if v in result.heads and v != "additive"]
    val = result.history
    return max(ranked, key=lambda v: sum(val[v]["val_by_alpha"][str(result.alphas[v])]["t2i"].values()))


def train_checkpoint(data: list[Path], out: Path, exclude: list[Path] = (), val_photos: int = 50,
                     seed: int = 0, image_encoder: str = "efficientnet-lite0", image_weights=None,
                     cache_dir: Path | None = None, log=None, tc: TrainConfig | None = None) -> dict:
    """Train the shared space and every fusion head on `data` and write the checkpoint to
    `out`. Returns the training record (also stored in the checkpoint)."""
    tc = tc or TrainConfig(seed=seed)
    ie = load_image_encoder(image_encoder, image_weights)
    te = load_text_encoder()
    datasets = [load_dataset(d) for d in data]
    feats = [dataset_features(ds, ie, te, cache_dir) for ds in datasets]
    held = {Path(p).name for d in exclude for p in load_dataset(d).images}
    train, val = split(feats, [ds.images for ds in datasets], held, val_photos, tc.seed)
    cfg = ModelConfig(image_encoder=image_encoder, image_dim=CONFIGS[image_encoder].feature_dim,
                      text_encoder=te.config.name, text_dim=te.config.dim)
    result = train_all(cfg, class_embeddings(te), train, val, tc, log=log)
    best = choose_shipped(result)
    cfg = ModelConfig(**{**cfg.to_dict(), "rerank": best, "rerank_weight": result.alphas[best]})
    record = {
        "data": [str(d) for d in data], "excluded": [str(d) for d in exclude],
        "train_photos": int(len(train.pooled)), "train_captions": int(len(train.text)),
        "val_photos": int(len(val.pooled)), "train_config": asdict(tc),
        "itc_best_epoch": result.history["itc_best_epoch"], "val_itc": result.history["itc_val"],
        "val_rerank": {v: result.history[v]["val_by_alpha"][str(result.alphas[v])] for v in result.heads},
    }
    record["content_hash"] = save_checkpoint(out, cfg, result.space, result.heads, result.alphas, record)
    return record
