"""Checkpoints: the shared-space heads and every fusion head in one safetensors file (float16),
with the config, training record and a content hash in its metadata and in a JSON file beside
it. The default checkpoint ships inside the package and is loaded by every command."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from retrieval.errors import CheckpointError, disk_full, is_disk_full
from retrieval.model.heads import FusionHead, ModelConfig, SharedSpace
from retrieval.model.neighbours import Neighbours
from retrieval.model.query_side import (FORMAT, config_of, content_hash, default_checkpoint_path,  # noqa: F401
                                        read_checkpoint, tops_of)
from retrieval.model.reranker import Reranker


@dataclass
class Checkpoint:
    config: ModelConfig
    space: SharedSpace
    heads: dict  # fusion variant -> FusionHead
    alphas: dict  # fusion variant -> rerank weight tuned on validation
    record: dict  # training data, seeds, validation scores
    content_hash: str  # sha256 prefix of the tensors: names libraries made with it
    path: Path
    reranker: Reranker | None = None  # the evidence reranker search uses (None: rank by ITC)
    bank: torch.Tensor | None = None  # (B, d) ITC vectors of uncaptioned photos: the caption prior's bank
    tops: dict | None = None  # tuned encoder tops: {"image"|"text": {name: float32 array}} (query_side.tops_of)

    @property
    def rerank_head(self) -> FusionHead:
        return self.heads[self.config.rerank]


# Unit rows that every reader L2-normalises again, so int8 with a per-row scale loses only the
# rounding: the look-alike training photos' keys and mean caption vectors, ~640 bytes a photo
# instead of 1,280 (7.4k training photos since Flickr8k's 6k)
INT8_ROWS = ("neighbours.photos", "neighbours.captions")


def int8_rows(v: torch.Tensor) -> torch.Tensor:
    v = v.detach().float()
    scale = v.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
    return torch.round(v / scale * 127).to(torch.int8).contiguous()


def _tensors(space: SharedSpace, heads: dict, reranker: Reranker | None, bank=None, tops=None) -> dict:
    out = {f"space.{k}": v for k, v in space.state_dict().items()}
    for side, weights in (tops or {}).items():  # the encoders' tuned tops, already float16-exact
        out.update({f"tops.{side}.{k}": torch.as_tensor(v) for k, v in weights.items()})
    if space.neighbours is not None:
        out.update({f"neighbours.{k}": torch.as_tensor(v) for k, v in space.neighbours.tensors().items()})
    if bank is not None:
        out["bank.photos"] = torch.as_tensor(bank)
    for variant, head in heads.items():
        out.update({f"head.{variant}.{k}": v for k, v in head.state_dict().items()})
    if reranker is not None:
        out.update({f"reranker.{k}": v for k, v in reranker.state_dict().items()})
    return {k: int8_rows(v) if k in INT8_ROWS else v.detach().to(torch.float16).contiguous()
            for k, v in out.items()}


def save_checkpoint(path: str | os.PathLike, config: ModelConfig, space: SharedSpace, heads: dict,
                    alphas: dict, record: dict, reranker: Reranker | None = None, bank=None, tops=None) -> str:
    """Write FILE (safetensors) and FILE with .json; returns the content hash. `bank`: the
    caption prior's photo bank, (B, d) ITC vectors; `tops`: the encoders' tuned tops
    ({"image"|"text": {name: array}}, stored in float16: tune them float16-exact)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = _tensors(space, heads, reranker, bank, tops)
    digest = content_hash(tensors)
    meta = {"format": FORMAT, "config": config.to_dict(), "alphas": alphas, "record": record,
            "content_hash": digest}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata={"fusion": json.dumps(meta)})
        os.replace(tmp, path)
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    except BaseException as e:  # an existing checkpoint at `path` stays whole
        tmp.unlink(missing_ok=True)
        if is_disk_full(e):
            raise disk_full(path, e, "run fusion train again") from None
        raise
    return digest


def load_checkpoint(path: str | os.PathLike | None = None, image_encoder: str | None = None,
                    text_encoder: str | None = None) -> Checkpoint:
    """Load a checkpoint (the shipped default when `path` is None). Refuses, naming the fix,
    one made for other encoders than those given, and one whose tensors fail their hash."""
    path, meta, tensors = read_checkpoint(path, "pt")
    config = config_of(meta)
    _check_encoders(path, config, image_encoder, text_encoder)
    return _build(path, config, meta, tensors)


def _check_encoders(path: Path, config: ModelConfig, image_encoder, text_encoder) -> None:
    for role, want, have in (("image", image_encoder, config.image_encoder),
                             ("text", text_encoder, config.text_encoder)):
        if want is not None and want != have:
            raise CheckpointError(
                f"{path}: made for the {role} encoder {have}, not {want}; use a checkpoint "
                f"trained for {want} (fusion train --{role}-encoder {want} ...) or switch back to {have}")


def _build(path: Path, config: ModelConfig, meta: dict, tensors: dict) -> Checkpoint:
    tensors = {k: v.float() for k, v in tensors.items()}
    space = SharedSpace(config, tensors["space.class_embeddings"])
    space.load_state_dict(_prefixed(tensors, "space."))
    space.neighbours = Neighbours.from_tensors({k: v.numpy() for k, v in _prefixed(tensors, "neighbours.").items()})
    heads = {}
    for variant in meta["alphas"]:
        head = FusionHead(variant, config)
        head.load_state_dict(_prefixed(tensors, f"head.{variant}."))
        heads[variant] = head.eval()
    reranker = None
    if any(k.startswith("reranker.") for k in tensors):
        reranker = Reranker(hidden=config.reranker_hidden)
        reranker.load_state_dict(_prefixed(tensors, "reranker."))
        reranker.eval()
    return Checkpoint(config, space.eval(), heads, {k: float(v) for k, v in meta["alphas"].items()},
                      meta.get("record", {}), meta["content_hash"], path, reranker, tensors.get("bank.photos"),
                      tops_of(tensors))


def _prefixed(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
