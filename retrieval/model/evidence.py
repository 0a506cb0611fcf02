"""What the evidence reranker sees, in numpy (a text search runs it without torch): the
features of a query against its candidates, and the per-photo evidence the library stores
(`PhotoEvidence`, 690 bytes a photo). The model over these features is retrieval/model/
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
    "lookalike",  # the photo's cosine, in the image network's features, to the training photos
    # whose captions the query matches (look-alikes from the query's side; neighbours.py)
    "hub",  # log-sum-exp of the photo's cosines to the memory captions (tau 0.05): a photo
    # close to many captions (a hub) ranks high for any query, and the reranker can learn so
)
LEGACY = 7  # checkpoints trained before the last two read only the first 7 features
# Only absolute evidence: features relative to a query's other candidates (itc minus the
# best itc) cannot reorder a linear model's candidates, and they made the probability
# depend on the library's size (a clear match in 48 photos read 4%).
MEMORY_SIZE = 16  # captions each photo recalls
LABELS = 20  # ImageNet classes kept per photo
TOP4 = 4
KEY_DIMS = 256  # the photo's look-alike key (Neighbours.key): its principal directions stored
LOOKALIKES = 20  # training photos a query's captions pick (softmax over their cosines, tau 0.1)
LOOKALIKE_TAU = 0.1
HUB_TAU = 0.05


@dataclass
class PhotoEvidence:
    memory_ids: np.ndarray  # (N, MEMORY_SIZE) int32 rows of the caption memory, best first
    memory_weights: np.ndarray  # (N, MEMORY_SIZE) float32 softmax recall weights
    label_ids: np.ndarray  # (N, LABELS) int32 ImageNet classes, by bridge weight
    label_weights: np.ndarray  # (N, LABELS) float32
    key: np.ndarray | None = None  # (N, KEY_DIMS) float32 look-alike key (zeros: the model has none)
    hub: np.ndarray | None = None  # (N,) float32 log-sum-exp over the memory captions

    # int32 + float16 memory, int16 + float16 labels, float16 key and hub
    LEGACY_BYTES = MEMORY_SIZE * 6 + LABELS * 4  # rows written before key and hub (176)
    ROW_BYTES = LEGACY_BYTES + KEY_DIMS * 2 + 2

    def __post_init__(self):
        shape = np.shape(self.memory_ids)[:-1]  # (N,) or (Q, K) of candidates
        if self.key is None:
            self.key = np.zeros(shape + (KEY_DIMS,), np.float32)
        if self.hub is None:
            self.hub = np.zeros(shape, np.float32)

    def pack(self) -> list[bytes]:
        """One blob per photo: what the library's rerank column holds."""
        key = np.asarray(self.key, np.float32)
        if key.shape[-1] > KEY_DIMS:
            raise ValueError(f"look-alike key of {key.shape[-1]} numbers; a library stores {KEY_DIMS}")
        key = np.pad(key, ((0, 0), (0, KEY_DIMS - key.shape[-1])))
        parts = [self.memory_ids.astype("<i4"), self.memory_weights.astype("<f2"),
                 self.label_ids.astype("<i2"), self.label_weights.astype("<f2"), key.astype("<f2"),
                 np.asarray(self.hub).reshape(-1, 1).astype("<f2")]
        rows = np.concatenate([p.view(np.uint8).reshape(len(p), -1) for p in parts], axis=1)
        return [r.tobytes() for r in rows]

    @staticmethod
    def row_ok(blob: bytes | None) -> bool:
        return len(blob or b"") in (PhotoEvidence.ROW_BYTES, PhotoEvidence.LEGACY_BYTES)

    @staticmethod
    def unpack(blobs: list[bytes]) -> "PhotoEvidence":
        """Rows of either length; a row from before key and hub gets zeros for both (only
        checkpoints that read the first LEGACY features can rank with them)."""
        blobs = [b + bytes(PhotoEvidence.ROW_BYTES - len(b)) for b in blobs]
        raw = np.frombuffer(b"".join(blobs), np.uint8).reshape(len(blobs), PhotoEvidence.ROW_BYTES)
        m, n = MEMORY_SIZE, LABELS
        cut = np.cumsum([0, 4 * m, 2 * m, 2 * n, 2 * n, 2 * KEY_DIMS, 2])
        fields = [raw[:, cut[i]:cut[i + 1]].copy().view(dt)
                  for i, dt in enumerate(("<i4", "<f2", "<i2", "<f2", "<f2", "<f2"))]
        return PhotoEvidence(fields[0].astype(np.int32), fields[1].astype(np.float32),
                             fields[2].astype(np.int32), fields[3].astype(np.float32),
                             fields[4].astype(np.float32), fields[5][:, 0].astype(np.float32))

    def take(self, index: np.ndarray) -> "PhotoEvidence":
        return PhotoEvidence(self.memory_ids[index], self.memory_weights[index],
                             self.label_ids[index], self.label_weights[index], self.key[index], self.hub[index])


def evidence(itc: np.ndarray, q_itc: np.ndarray, q_sent: np.ndarray, ev: PhotoEvidence, memory: np.ndarray,
             memory_itc: np.ndarray, classes: np.ndarray, lookalikes: tuple | None = None) -> np.ndarray:
    """Features (Q, K, len(EVIDENCE)) of Q queries against their K candidates each.
    itc: (Q, K) first-stage scores; q_itc, q_sent: (Q, d) the queries' ITC and sentence
    vectors; ev: fields shaped (Q, K, ...); memory, memory_itc: (corpus, d) the memory's
    sentence and ITC vectors; classes: (1000, d) class-name vectors; lookalikes: the training
    photos' keys (R, p) and mean caption vectors (R, d), or None (the feature is 0); all
    L2-normalised."""
    itc = np.asarray(itc, np.float32)
    mem_itc = np.einsum("qd,qkmd->qkm", q_itc, memory_itc[ev.memory_ids])
    mem = np.einsum("qd,qkmd->qkm", q_sent, memory[ev.memory_ids])
    mem_max = mem.max(-1)
    lab = np.einsum("qd,qkld->qkl", q_sent, classes[ev.label_ids])
    feats = [itc, (mem_itc * ev.memory_weights).sum(-1), mem_max, (mem * ev.memory_weights).sum(-1),
             np.sort(mem, -1)[..., -TOP4:].mean(-1), (lab * ev.label_weights).sum(-1), lab.max(-1),
             lookalike(q_itc, ev.key, lookalikes), ev.hub]
    return np.stack([np.broadcast_to(f, itc.shape) for f in feats], -1).astype(np.float32)


def lookalike(q_itc: np.ndarray, key: np.ndarray, lookalikes: tuple | None) -> np.ndarray:
    """(Q, K): each candidate's cosine (its key, (Q, K, p)) to the mean key of the training
    photos whose mean caption vector each query matches best (softmax-weighted): look-alikes
    found from the query's side, the mirror of the captions a photo borrows."""
    if lookalikes is None or not len(lookalikes[0]):
        return np.zeros(key.shape[:2], np.float32)
    photos, captions = lookalikes
    sim = q_itc @ captions.T
    k = min(LOOKALIKES, sim.shape[1])
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    z = np.take_along_axis(sim, top, 1) / LOOKALIKE_TAU
    w = np.exp(z - z.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    proto = np.einsum("qk,qkd->qd", w, photos[top])
    proto /= np.maximum(np.linalg.norm(proto, axis=1, keepdims=True), 1e-12)
    return np.einsum("qd,qkd->qk", proto, key[..., :photos.shape[1]]).astype(np.float32)


def hubness(search: np.ndarray, memory_itc: np.ndarray, batch: int = 256) -> np.ndarray:
    """(N,) each photo's log-sum-exp of its search vector's cosines to the memory captions at
    HUB_TAU (QB-Norm's query bank: the memory captions)."""
    out = np.zeros(len(search), np.float32)
    for s in range(0, len(search), batch):
        sim = search[s:s + batch] @ memory_itc.T
        top = sim.max(1, keepdims=True)
        out[s:s + batch] = (top + HUB_TAU * np.log(np.exp((sim - top) / HUB_TAU).sum(1, keepdims=True)))[:, 0]
    return out
