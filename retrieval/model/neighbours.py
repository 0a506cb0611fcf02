"""Caption transfer: a photo borrows the human captions of the training photos that look most
like it, and its search vector moves towards them, as it moves towards the captions it recalls
from the caption memory. Look-alikes are found in the image encoder's own pooled features
(centred, cosine), which tell scenes apart better than a shared space trained on ~1.6k
captioned photos can; the shared space then only has to place the borrowed captions, which is
the text side's strength. Nearest-neighbour caption transfer, as in Devlin et al. 2015
("Exploring nearest neighbor approaches for image captioning"), used here for retrieval.

The checkpoint carries the training photos' features (optionally reduced to their principal
directions) and each photo's mean caption vector in the shared space: no photo or caption of
the training data ships, only these numbers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrieval.model.query_side import l2n, softmax


@dataclass
class Neighbours:
    mean: np.ndarray  # (D,) centre of the training photos' pooled image features
    basis: np.ndarray | None  # (D, p) their principal directions (None: all D features)
    photos: np.ndarray  # (R, p) training photos, centred, projected, L2-normalised
    captions: np.ndarray  # (R, d) each training photo's mean caption ITC vector, L2-normalised

    def key(self, pooled: np.ndarray) -> np.ndarray:
        """(N, p) photos' look-alike keys: centred, projected, L2-normalised pooled features
        (what the library stores for the reranker's look-alike evidence)."""
        x = np.asarray(pooled, np.float32) - self.mean
        return l2n(x if self.basis is None else x @ self.basis)

    def transfer(self, pooled: np.ndarray, k: int, tau: float) -> np.ndarray:
        """(N, d) L2-normalised: the captions of each photo's k most similar training photos,
        softmax(cosine / tau)-weighted."""
        sim = self.key(pooled) @ self.photos.T
        k = min(k, sim.shape[1])
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        w = softmax(np.take_along_axis(sim, top, 1), tau).astype(np.float32)
        return l2n(np.einsum("nk,nkd->nd", w, self.captions[top]))

    def tensors(self) -> dict:
        out = {"mean": self.mean, "photos": self.photos, "captions": self.captions}
        if self.basis is not None:
            out["basis"] = self.basis
        return out

    @staticmethod
    def from_tensors(t: dict) -> "Neighbours | None":
        if "photos" not in t:
            return None
        f = {k: np.asarray(v, np.float32) for k, v in t.items()}
        return Neighbours(f["mean"], f.get("basis"), l2n(f["photos"]), l2n(f["captions"]))


def build_neighbours(pooled: np.ndarray, caption_itc: np.ndarray, caption_image: np.ndarray,
                     dims: int = 0) -> Neighbours:
    """From the training photos' pooled features (R, D), their captions' ITC vectors and each
    caption's photo row; `dims` > 0 keeps that many principal directions (a smaller checkpoint)."""
    x = np.asarray(pooled, np.float32)
    mean = x.mean(0)
    basis = None
    if 0 < dims < x.shape[1]:
        basis = np.linalg.svd(x - mean, full_matrices=False)[2][:dims].T.astype(np.float32)
    captions = np.zeros((len(x), caption_itc.shape[1]), np.float32)
    own = np.asarray(caption_image) >= 0  # -1: a caption without a photo (text-only datasets)
    np.add.at(captions, np.asarray(caption_image)[own], np.asarray(caption_itc, np.float32)[own])
    nb = Neighbours(mean, basis, np.zeros((0, 1), np.float32), l2n(captions))
    nb.photos = nb.key(x)
    return nb
