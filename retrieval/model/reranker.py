"""The fusion classifier search reranks with: a small learning-to-rank model over cross-modal
evidence that sees both sides, the query (its ITC vector and its MiniLM sentence vector) and
the photo (its ITC vector, the captions it recalls from the caption memory, its ImageNet
labels from the whole photo and from each grid cell). Its output is a match logit, trained
with binary cross-entropy on cross-fitted candidates plus a listwise softmax term: the
softmax over one query's candidates is the share search shows, and a Platt-scaled sigmoid
is the match probability on its own.

Per photo the library stores only ids and weights (`PhotoEvidence`, 176 bytes); everything
else is computed per query over the K candidates, so a rerank of 32 costs well under 20 ms."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

EVIDENCE = (
    "itc",  # the first-stage score: query ITC vector . photo search vector
    "mem_itc",  # query ITC vector . recalled captions' ITC vectors, recall-weighted
    "mem_max",  # best sentence cosine of the query and the photo's recalled captions
    "mem_mean",  # the same, weighted by how strongly the photo recalls each caption
    "mem_top4",  # mean of the 4 best
    "label_mean",  # query cosine with the photo's ImageNet class names, label-weighted
    "label_max",  # best query cosine with one of those class names
)
# Only absolute evidence: features relative to a query's other candidates (itc minus the
# best itc) cannot reorder a linear model's candidates, and they made the probability
# depend on the library's size (a clear match in 48 photos read 4%).
MEMORY_SIZE = 16  # captions each photo recalls
LABELS = 20  # ImageNet classes kept per photo
TOP4 = 4


@dataclass
class PhotoEvidence:
    memory_ids: np.ndarray  # (N, MEMORY_SIZE) int32 rows of the caption memory, best first
    memory_weights: np.ndarray  # (N, MEMORY_SIZE) float32 softmax recall weights
    label_ids: np.ndarray  # (N, LABELS) int32 ImageNet classes, by bridge weight
    label_weights: np.ndarray  # (N, LABELS) float32

    ROW_BYTES = MEMORY_SIZE * 6 + LABELS * 4  # int32 + float16 memory, int16 + float16 labels

    def pack(self) -> list[bytes]:
        """One blob per photo: what the library's rerank column holds."""
        parts = [self.memory_ids.astype("<i4"), self.memory_weights.astype("<f2"),
                 self.label_ids.astype("<i2"), self.label_weights.astype("<f2")]
        rows = np.concatenate([p.view(np.uint8).reshape(len(p), -1) for p in parts], axis=1)
        return [r.tobytes() for r in rows]

    @staticmethod
    def unpack(blobs: list[bytes]) -> "PhotoEvidence":
        raw = np.frombuffer(b"".join(blobs), np.uint8).reshape(len(blobs), PhotoEvidence.ROW_BYTES)
        m, n = MEMORY_SIZE, LABELS
        cut = np.cumsum([0, 4 * m, 2 * m, 2 * n, 2 * n])
        fields = [raw[:, cut[i]:cut[i + 1]].copy().view(dt) for i, dt in enumerate(("<i4", "<f2", "<i2", "<f2"))]
        return PhotoEvidence(fields[0].astype(np.int32), fields[1].astype(np.float32),
                             fields[2].astype(np.int32), fields[3].astype(np.float32))

    def take(self, index: np.ndarray) -> "PhotoEvidence":
        return PhotoEvidence(self.memory_ids[index], self.memory_weights[index],
                             self.label_ids[index], self.label_weights[index])


def evidence(itc: np.ndarray, q_itc: np.ndarray, q_sent: np.ndarray, ev: PhotoEvidence, memory: np.ndarray,
             memory_itc: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Features (Q, K, len(EVIDENCE)) of Q queries against their K candidates each.
    itc: (Q, K) first-stage scores; q_itc, q_sent: (Q, d) the queries' ITC and sentence
    vectors; ev: fields shaped (Q, K, ...); memory, memory_itc: (corpus, d) the memory's
    sentence and ITC vectors; classes: (1000, d) class-name vectors; all L2-normalised."""
    itc = np.asarray(itc, np.float32)
    mem_itc = np.einsum("qd,qkmd->qkm", q_itc, memory_itc[ev.memory_ids])
    mem = np.einsum("qd,qkmd->qkm", q_sent, memory[ev.memory_ids])
    mem_max = mem.max(-1)
    lab = np.einsum("qd,qkld->qkl", q_sent, classes[ev.label_ids])
    feats = [itc, (mem_itc * ev.memory_weights).sum(-1), mem_max, (mem * ev.memory_weights).sum(-1),
             np.sort(mem, -1)[..., -TOP4:].mean(-1), (lab * ev.label_weights).sum(-1), lab.max(-1)]
    return np.stack(feats, -1).astype(np.float32)


class Reranker(nn.Module):
    """Standardised evidence -> match logit: linear (hidden=0) or one small hidden layer."""

    def __init__(self, n_features: int = len(EVIDENCE), hidden: int = 0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        # Platt scaling of the logit into a probability, fitted after the ranking loss (whose
        # listwise term sharpens logits past calibration); monotone, so it never reorders
        self.register_buffer("prob_scale", torch.ones(()))
        self.register_buffer("prob_bias", torch.zeros(()))
        if hidden:
            self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.GELU(), nn.Linear(hidden, 1))
        else:
            self.net = nn.Sequential(nn.Linear(n_features, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std).squeeze(-1)

    def logits(self, feats: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.eval()(torch.from_numpy(np.ascontiguousarray(feats, np.float32))).numpy()

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated match probabilities of `logits`."""
        z = float(self.prob_scale) * np.asarray(logits, np.float64) + float(self.prob_bias)
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))
