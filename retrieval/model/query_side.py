"""The query side of a checkpoint in numpy: `text_fc`, the class-name vectors and the evidence
reranker, read straight from the safetensors file. A text search needs nothing else from the
model, and `import torch` alone takes 1.5 s of a 3.3 s cold search at 1M photos
(benchmarks/results/cold_start.md). The torch modules (retrieval/model/checkpoint.py) load the
same file for indexing and training; tests/test_query_side.py holds the two equal."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

import numpy as np

from retrieval.encoders.minilm_numpy import gelu
from retrieval.errors import CheckpointError
from retrieval.model.config import ModelConfig
from retrieval.model.evidence import LEGACY

FORMAT = "fusion-checkpoint/1"


def default_checkpoint_path() -> Path:
    return Path(str(resources.files("retrieval.model").joinpath("checkpoints/default.safetensors")))


def content_hash(tensors: dict) -> str:
    """sha256 prefix over the sorted names and stored bytes (torch tensors or numpy arrays)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(np.asarray(tensors[name]).tobytes())
    return h.hexdigest()[:16]


def read_checkpoint(path: Path | None, framework: str) -> tuple[Path, dict, dict]:
    """(path, metadata, tensors) of a checkpoint file, checked: format and content hash."""
    from safetensors import safe_open

    path = Path(path) if path else default_checkpoint_path()
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; train one with "
                              "`fusion train --data DIR --out FILE`")
    try:
        with safe_open(str(path), framework=framework) as f:
            meta = json.loads((f.metadata() or {}).get("fusion", "null"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from None
    made = meta.get("format") if isinstance(meta, dict) else None
    if isinstance(made, str) and made.startswith(FORMAT.split("/")[0] + "/") and made != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {made}, but this fusion reads {FORMAT}; "
                              "use the fusion that made it, or re-train with this one (fusion train)")
    if made != FORMAT:
        raise CheckpointError(f"{path}: not a Fusion Retrieval checkpoint (no {FORMAT} metadata)")
    if content_hash(tensors) != meta["content_hash"]:
        raise CheckpointError(f"{path}: damaged checkpoint (content hash mismatch); re-train it")
    return path, meta, tensors


def tops_of(tensors: dict) -> dict:
    """The tuned encoder tops a checkpoint carries: {"image": {name: float32 array}, "text": ...},
    each present only where the checkpoint has it (retrieval/encoders/tops.py)."""
    out: dict = {}
    for key, value in tensors.items():
        if key.startswith("tops."):
            _, side, name = key.split(".", 2)
            array = value.float().numpy() if hasattr(value, "float") else np.asarray(value, np.float32)
            out.setdefault(side, {})[name] = array
    return out


def shipped_text_tops() -> str:
    """The shipped checkpoint's text_tops digest, read from its header alone (what a cold search
    preloads MiniLM for before it opens the library); '' where it cannot be read."""
    from safetensors import safe_open

    try:
        with safe_open(str(default_checkpoint_path()), framework="numpy") as f:
            return json.loads(f.metadata()["fusion"])["config"].get("text_tops", "")
    except Exception:  # noqa: BLE001 (the real load reports a damaged checkpoint)
        return ""


def config_of(meta: dict) -> ModelConfig:
    known = {f.name for f in fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in meta["config"].items() if k in known})


def shares(itc: np.ndarray, logit: np.ndarray, weight: float, temperature: float) -> np.ndarray:
    """Each candidate's share of one query's candidates (the last axis): the chance it is the
    photo described, if that photo is among them. A softmax of the ranking score itc + weight
    x logit over `temperature` (fitted on cross-fitted candidates, so shares fall with rank);
    checkpoints without a temperature (0) give the softmax of the logit alone, as before."""
    if temperature > 0:
        return softmax(np.asarray(itc, np.float64) + weight * np.asarray(logit, np.float64), temperature)
    return softmax(logit)


LIKELY = 0.9  # the share the photos above search's "likely ends here" line hold together


def likely_count(ordered_shares, level: float = LIKELY) -> int | None:
    """How many results, from the top, it takes for their shares (in rank order) to add up to
    `level`: the photo described is among them that often, if it is among the candidates
    (benchmarks/results/recall.md measures it). None when all of them add up to less (only a
    part of the candidates was given)."""
    total = np.cumsum(np.asarray(ordered_shares, np.float64))
    n = int(np.searchsorted(total, level - 1e-9)) + 1
    return n if n <= len(total) else None


def softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax of z / temperature over the last axis."""
    z = np.asarray(z, np.float64) / temperature
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def l2n(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass
class QuerySide:
    config: ModelConfig
    content_hash: str
    path: Path
    text_w: np.ndarray  # text_fc: (d, d) weight and (d,) bias
    text_b: np.ndarray
    classes: np.ndarray  # (1000, d) ImageNet class-name vectors, L2-normalised
    rerank: dict | None  # the evidence reranker's arrays (None: the checkpoint has none)
    bank: np.ndarray | None = None  # (B, d) the caption prior's photo bank (retrieval/model/prior.py)
    lookalikes: tuple | None = None  # the training photos' keys and mean caption vectors (evidence.lookalike)

    @classmethod
    def load(cls, path: Path | None = None, read: tuple | None = None) -> "QuerySide":
        """From the checkpoint at `path`, or from `read`, what read_checkpoint(path, "numpy")
        already returned (the Runtime reads the file once for both of its numpy sides)."""
        path, meta, t = read or read_checkpoint(path, "numpy")
        if config_of(meta).text_hidden:
            raise CheckpointError(f"{path}: its text_fc has a hidden layer, which only training reads "
                                  "(an experiment); train the checkpoint without it")
        used = ("space.text_fc.", "space.class_embeddings", "reranker.", "bank.")  # not the photo side
        rerank_reads_lookalikes = "reranker.mean" in t and len(t["reranker.mean"]) > LEGACY
        if rerank_reads_lookalikes:
            used += ("neighbours.photos", "neighbours.captions")
        t = {k: v.astype(np.float32) for k, v in t.items() if k.startswith(used)}
        rerank = {k[len("reranker."):]: v for k, v in t.items() if k.startswith("reranker.")} or None
        looks = None
        if "neighbours.photos" in t:
            looks = (l2n(t["neighbours.photos"]), l2n(t["neighbours.captions"]))
        return cls(config_of(meta), meta["content_hash"], path, t["space.text_fc.weight"], t["space.text_fc.bias"],
                   l2n(t["space.class_embeddings"]), rerank, t.get("bank.photos"), looks)

    def embed_text(self, pooled: np.ndarray) -> np.ndarray:
        """A text's ITC vector from its raw MiniLM pooled vector (SharedSpace.embed_text)."""
        t = l2n(np.asarray(pooled, np.float32))
        return l2n(t + t @ self.text_w.T + self.text_b).astype(np.float32)

    def texts(self, pooled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ITC vectors, sentence vectors) of raw MiniLM pooled vectors, both L2-normalised."""
        pooled = np.asarray(pooled, np.float32)
        return self.embed_text(pooled), l2n(pooled).astype(np.float32)

    def logits(self, feats: np.ndarray) -> np.ndarray:
        """The evidence reranker's match logits (Reranker.forward)."""
        if self.rerank is None:
            raise CheckpointError(f"{self.path}: this checkpoint has no evidence reranker; search with rerank off")
        r = self.rerank
        x = (np.asarray(feats, np.float32)[..., :len(r["mean"])] - r["mean"]) / r["std"]  # older: fewer
        if "net.2.weight" in r:  # one hidden layer
            x = gelu(x @ r["net.0.weight"].T + r["net.0.bias"])
            return (x @ r["net.2.weight"].T + r["net.2.bias"])[..., 0]
        return (x @ r["net.0.weight"].T + r["net.0.bias"])[..., 0]

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated match probabilities of `logits` (Reranker.probabilities)."""
        r = self.rerank
        z = float(r["prob_scale"]) * np.asarray(logits, np.float64) + float(r["prob_bias"])
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))
