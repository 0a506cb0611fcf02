"""What the evidence reranker sees, in numpy (a text search runs it without torch): the
features of a query against its candidates, and the per-photo evidence the library stores
(`PhotoEvidence`, 176 bytes a photo). The model over these features is retrieval/model/
reranker.py; its numpy twin for queries is retrieval/model/query_side.py."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
