"""From frozen features to what the library stores and search compares: a photo's search
vector (its ITC vector moved towards the captions it recalls from the caption memory, and
towards those of the training photos it looks like) and its rerank evidence; a query's ITC and sentence vectors. One place, used alike by the
indexer, search and training, so the three cannot drift apart."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property

from typing import TYPE_CHECKING, Callable

import numpy as np

from retrieval.model.evidence import LABELS, MEMORY_SIZE, PhotoEvidence, evidence, hubness
from retrieval.model.memory import CaptionMemory
from retrieval.model.query_side import l2n

if TYPE_CHECKING:
    from retrieval.model.heads import SharedSpace
    from retrieval.model.photo_side import PhotoSide
    from retrieval.model.query_side import QuerySide


@dataclass
class PhotoVectors:
    search: np.ndarray  # (N, d) what FAISS holds: ITC + memory_beta * recalled captions
    # + neighbour_weight * captions borrowed from look-alike training photos
    itc: np.ndarray  # (N, d) the plain ITC vector (photo -> caption search uses it)
    evidence: PhotoEvidence


class Embedder:
    """A trained space plus the caption memory (None: no memory, the search vector is ITC).
    With `query` (the checkpoint's numpy query side), texts are embedded in numpy and torch is
    imported only when photos are, and `space` may be a function that loads it then; without,
    everything runs on the torch `space` (training and evaluation)."""

    def __init__(self, space: "SharedSpace | Callable[[], SharedSpace]", memory: CaptionMemory | None,
                 beta: float | None = None, query: "QuerySide | None" = None, neighbours: float | None = None,
                 photo_side: "Callable[[], PhotoSide] | None" = None):
        self._space, self.memory, self.query = space, memory, query
        self._photo_side = photo_side  # the numpy photo side, loaded on first use (None: torch's)
        cfg = query.config if query is not None else space.config
        self.beta = cfg.memory_beta if beta is None else beta  # override: measure other weights
        self.neighbour_weight = cfg.neighbour_weight if neighbours is None else neighbours  # the same
        self.tau = cfg.memory_tau
        if query is not None:
            self.classes = query.classes
        else:
            import torch
            import torch.nn.functional as F

            with torch.no_grad():
                self.classes = F.normalize(space.class_embeddings, dim=-1).numpy()

    @cached_property
    def space(self) -> "SharedSpace":
        space = self._space if hasattr(self._space, "embed_image") else self._space()
        return space.eval()

    @cached_property
    def corpus_itc(self) -> np.ndarray:
        """ITC vectors of the memory's captions: what photos recall them by."""
        return self.texts(self.memory.vectors)[0]

    def warm_memory(self) -> None:
        """Project all of the memory's captions in a background thread (a quarter second of one
        core, once): a process answering many queries then gathers each query's ~500 rows
        instead of projecting them again (evidence). A one-off search never calls this."""
        if self.memory is not None and "corpus_itc" not in self.__dict__ and not getattr(self, "_warming", False):
            self._warming = True
            threading.Thread(target=lambda: self.corpus_itc, name="memory-projection", daemon=True).start()

    def texts(self, pooled: np.ndarray):
        """(ITC vectors, sentence vectors) of raw MiniLM pooled vectors, both L2-normalised."""
        if self.query is not None:
            return self.query.texts(pooled)
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            t = torch.as_tensor(np.asarray(pooled, np.float32))
            return self.space.embed_text(t).numpy(), F.normalize(t, dim=-1).numpy()

    @cached_property
    def photo_side(self) -> "PhotoSide":
        return self._photo_side()

    def _itc_and_labels(self, f):
        """Photos' ITC vectors, bridge classes and weights, the space to read look-alikes from."""
        if self._photo_side is not None:
            ps = self.photo_side
            idx, w = ps.labels(f.logits, f.cells)
            return ps.embed_image(f.pooled, f.logits, f.cells, f.mid), idx, w, ps.neighbours, ps.config
        import torch

        with torch.no_grad():
            args = [None if a is None else torch.as_tensor(np.asarray(a, np.float32))
                    for a in (f.pooled, f.logits, f.cells, f.mid)]
            itc = self.space.embed_image(*args).numpy()
            idx, w = self.space.labels(args[1], args[2])
        return itc, idx.numpy(), w.numpy(), self.space.neighbours, self.space.config

    def photos(self, f) -> PhotoVectors:
        """Photos' vectors and evidence from their image features: anything with `pooled`,
        `logits`, `cells` and `mid` arrays (ImageFeatures, DatasetFeatures, Photos)."""
        itc, label_ids, label_w, nb, cfg = self._itc_and_labels(f)
        n = len(itc)
        if self.memory is None:
            ids, w = np.zeros((n, MEMORY_SIZE), np.int32), np.zeros((n, MEMORY_SIZE), np.float32)
            search = itc
        else:
            ids, w = self.memory.recall(itc, self.corpus_itc, MEMORY_SIZE, self.tau)
            search = itc
            if self.beta:
                search = l2n(itc + self.beta * l2n((w[:, :, None] * self.corpus_itc[ids]).sum(1)))
        if nb is not None and self.neighbour_weight:
            search = l2n(search + self.neighbour_weight * nb.transfer(f.pooled, cfg.neighbour_k, cfg.neighbour_tau))
        ev = PhotoEvidence(ids, w, label_ids[:, :LABELS].astype(np.int32),
                           label_w[:, :LABELS].astype(np.float32),
                           None if nb is None else nb.key(f.pooled),
                           None if self.memory is None else hubness(search, self.corpus_itc))
        return PhotoVectors(search.astype(np.float32), itc.astype(np.float32), ev)

    def evidence(self, itc: np.ndarray, q_itc: np.ndarray, q_sent: np.ndarray, ev: PhotoEvidence) -> np.ndarray:
        """The reranker's features of queries against their candidates (see reranker.evidence).
        Only the memory rows the candidates recall are projected, unless all already are (a
        search needs ~500 of 23k: projecting them all would add a quarter second to a cold
        search)."""
        looks = self.lookalikes
        if self.memory is None:
            blank = np.zeros((1, self.classes.shape[1]), np.float32)
            return evidence(itc, q_itc, q_sent, ev, blank, blank, self.classes, looks)
        if "corpus_itc" in self.__dict__:
            return evidence(itc, q_itc, q_sent, ev, self.memory.vectors, self.corpus_itc, self.classes, looks)
        rows, local = np.unique(ev.memory_ids, return_inverse=True)
        ev = PhotoEvidence(local.reshape(ev.memory_ids.shape).astype(np.int32), ev.memory_weights,
                           ev.label_ids, ev.label_weights, ev.key, ev.hub)
        sent = self.memory.vectors[rows]
        return evidence(itc, q_itc, q_sent, ev, sent, self.texts(sent)[0], self.classes, looks)

    @property
    def lookalikes(self) -> tuple | None:
        """The training photos' keys and mean caption vectors (the look-alike evidence), from
        the numpy query side when there is one (a text search never loads torch for them)."""
        if self.query is not None:
            return self.query.lookalikes
        nb = self.space.neighbours
        return None if nb is None else (nb.photos, nb.captions)
