"""The read path: ITC top-K from FAISS, filtered through SQLite, reranked by the shipped fusion
head from stored features (photos are never decoded at query time). Ties break by id."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retrieval.errors import LibraryError
from retrieval.store.library import Library, index_running
from retrieval.model.query_side import likely_count, shares, softmax
from retrieval.model.runtime import Runtime
from retrieval.query.rerank import match_logits
from retrieval.query.results import Filters, Hit, QueryError, Results
from retrieval.query.shots import one_per_shot

if TYPE_CHECKING:
    from retrieval.query.combine import Combined

MAX_K = 1000


class Searcher:
    """Answers text, photo and describe queries against one library with one model."""

    def __init__(self, lib: Library, runtime: Runtime):
        import faiss

        self.lib, self.runtime = lib, runtime
        self._stamp = self._files_stamp()
        self._lagging = False  # SQLite may hold rows newer than the FAISS snapshot (lib.as_of)
        self._queries = 0  # text queries answered: from the second on, this process is a warm one
        # One query's FAISS scan is small; its OpenMP threads would spin-wait after each search
        # and steal both cores from the torch steps around it (measured: 36 -> 20 ms per query).
        faiss.omp_set_num_threads(1)

    def _files_stamp(self) -> tuple:
        out = []
        for name in ("library.sqlite", "library.sqlite-wal", "photos.faiss", "captions.faiss"):
            try:
                st = os.stat(self.lib.root / name)
                out.append((name, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((name, None, None))
        return tuple(out)

    def refresh(self) -> bool:
        """Reopen the library if the indexer changed it since (a long-running server's view
        follows `fusion index` runs); True when it did. While an index run is writing, only its
        FAISS saves (every 30 s, and at the end) are taken up, as they are: rebuilding FAISS
        from SQLite after every batch would stall every query. Rows SQLite gained since the
        snapshot are hidden meanwhile (`_lagging`), so no answer mixes two library states."""
        stamp = self._files_stamp()
        if stamp == self._stamp and not self._lagging:
            return False
        busy = index_running(self.lib.root)
        if stamp == self._stamp and busy:
            return False
        self._lagging = True
        if busy and stamp[2:] == self._stamp[2:]:  # SQLite moved, FAISS not saved since
            return False
        fresh = Library.open(self.lib.root, self.runtime.fingerprint, self.runtime.dim, mmap=True, reconcile=not busy)
        self.lib.close()
        self.lib, self._stamp, self._lagging = fresh, stamp, busy
        return True

    def _check_k(self, k: int, candidates: int) -> None:
        if not 1 <= k <= MAX_K:
            raise QueryError(f"k={k}: must be between 1 and {MAX_K}")
        if not 1 <= candidates <= MAX_K:
            raise QueryError(f"candidates={candidates}: must be between 1 and {MAX_K}")

    def text(self, query: str, k: int = 10, candidates: int = 32, rerank: bool = True,
             filters: Filters = Filters()) -> Results:
        """Photos for a text query."""
        self._check_k(k, candidates)
        if not query.strip():
            raise QueryError("empty query; describe the photo you are looking for, e.g. \"a dog on a beach\"")
        self._need_photos()
        feats = self.runtime.text_encoder.encode([query], normalize=False)
        notes = []
        if feats.truncated[0]:
            notes.append(f"query longer than {self.runtime.text_encoder.config.max_tokens} word pieces: "
                         "only its beginning was used")
        qvec = self.runtime.embed_texts(feats.pooled)
        self._queries += 1
        if self._queries == 2 and rerank:
            self.runtime.embedder.warm_memory()
        ids, itc = self._top(qvec, max(k, candidates), filters)
        hits = mark_likely(one_per_shot(self._with_paths(self._rank(ids, itc, feats.pooled if rerank else None))))[:k]
        threshold = self.runtime.config.match_threshold
        best = max((h.itm for h in hits if h.itm is not None), default=None)
        if best is not None and best < threshold:
            notes.append(f"no photo matches well: the best match probability is {100 * best:.0f}%, "
                         f"below the {100 * threshold:.0f}% that made-up words reach")
        return Results(hits, notes)

    def similar(self, image: str | os.PathLike, k: int = 10, filters: Filters = Filters()) -> Results:
        """Photos like a photo (which may be outside the library); the photo itself is left out."""
        self._check_k(k, k)
        self._need_photos()
        qvec = self._photo_vectors(image).search
        own = str(Path(os.path.abspath(image)))
        ids, itc = self._top(qvec, 2 * k + 1, filters)  # room for RAW+JPEG pairs shown once
        hits = self._with_paths(self._rank(ids, itc, None))
        hits = one_per_shot([h for h in hits if h.path != own])[:k]
        for n, h in enumerate(hits, start=1):
            h.rank = n
        return Results(hits)

    def combined(self, q: "Combined", k: int = 10, candidates: int = 32, rerank: bool = True,
                 filters: Filters = Filters()) -> Results:
        """Photos for a photo and words together and/or --add/--minus words (retrieval/query/
        combine.py says how the parts are fused); a plain text query goes to `text`."""
        from retrieval.query.combine import SHARE_TEMPERATURE, Combined, combined_ranking

        text = q.text if q.text and q.text.strip() else None
        for w in q.add + q.minus:
            if not w.strip():
                raise QueryError("an empty --add or --minus; give the words, e.g. --minus \"people\"")
        q = Combined(text, q.like, q.add, q.minus)
        if q.is_plain():
            if text is None:
                raise QueryError("empty query; describe the photo you are looking for, e.g. \"a dog on a beach\"")
            return self.text(text, k, candidates, rerank, filters)
        if text is None and q.like is None and not q.add:
            raise QueryError("--minus alone finds nothing; say what to look for too, e.g. "
                             "fusion search \"a street\" --minus \"cars\"")
        self._check_k(k, candidates)
        self._need_photos()
        ids, fused, main, notes = combined_ranking(self, q, max(k, candidates), rerank, filters, candidates)
        share = softmax(fused, SHARE_TEMPERATURE) if len(fused) else fused
        hits = [Hit(n, int(i), "", float(f), float(m), None, float(sh))
                for n, (i, f, m, sh) in enumerate(zip(ids, fused, main, share), start=1)]
        return Results(one_per_shot(self._with_paths(hits))[:k], notes)

    def paths_of(self, ids) -> list[str | None]:
        """The recorded path of each id (None for an id the library does not hold)."""
        paths = self.lib.reader.paths(ids)
        return [paths.get(int(i)) for i in ids]

    def describe(self, image: str | os.PathLike, k: int = 5, candidates: int = 32, rerank: bool = True) -> Results:
        """The captions that fit a photo best, from the indexed caption corpora or, with none
        indexed, the model's caption memory (retrieval/query/describe.py)."""
        from retrieval.query.describe import describe

        self._check_k(k, candidates)
        return describe(self.lib, self.runtime, self._photo_vectors(image), k, candidates, rerank)

    def _photo(self, photo_id: int) -> tuple[str, int, int]:
        """(path, size, mtime_ns) recorded for a library photo; LibraryError if there is none."""
        row = self.lib.reader.photo(photo_id)
        if row is None:
            raise LibraryError(f"no photo with id {photo_id} in {self.lib.root}")
        return tuple(row)

    def photo_path(self, photo_id: int) -> str:
        """The recorded path of a library photo (LibraryError if there is none)."""
        return self._photo(photo_id)[0]

    def servable_photo(self, photo_id: int) -> str:
        """The path of a library photo that may be served: a regular file still the same size
        and mtime as when indexed (following links), so a file swapped for a symlink to
        something else afterwards is refused."""
        path, size, mtime_ns = self._photo(photo_id)
        try:
            st = os.stat(path)
        except OSError:
            raise LibraryError(f"photo {photo_id} is gone from {path}; run fusion index to update") from None
        if not os.path.isfile(path) or (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            raise LibraryError(f"photo {photo_id} changed since it was indexed; run fusion index to update")
        return path

    def _photo_vectors(self, image):
        """Search vector, plain ITC vector (what captions are ranked by: the recalled captions
        a search vector carries would rank themselves first) and evidence of one photo file."""
        enc = self.runtime.image_encoder
        data = getattr(image, "data", None)  # an Upload (retrieval/query/combine.py): bytes, no file
        pixels = enc.load(image.name, data) if data is not None else enc.load(image)
        return self.runtime.photo_vectors(enc.encode([pixels], normalize=False))

    def _need_photos(self) -> None:
        if len(self.lib.photos) == 0:
            raise LibraryError(f"{self.lib.root}: the library holds no photos yet; run: "
                               f"fusion index PATH --db {self.lib.root}")

    def _top(self, qvec: np.ndarray, n: int, filters: Filters):
        """The n best ids by ITC that pass the filters, over-fetching from FAISS until n pass
        or the whole index was seen (an IVF index's every list, once its probed ones ran out)."""
        total = len(self.lib.photos)
        check = filters.active() or self._lagging
        fetch = min(total, n if not check else 4 * n)
        exhaustive = False
        while True:
            scores, ids = self.lib.photos.search(qvec, fetch, exhaustive)
            keep = ids[0] >= 0
            if check and not keep.all() and not exhaustive:  # the probed lists ran out: probe them all
                exhaustive = True
                continue
            ids, scores = ids[0][keep], scores[0][keep]
            if check:
                allowed = self._allowed(ids.tolist(), filters)
                mask = np.array([i in allowed for i in ids], bool)
                ids, scores = ids[mask], scores[mask]
            if len(ids) >= n or fetch >= total:
                order = np.lexsort((ids, -scores))[:n]
                return ids[order], scores[order]
            fetch = min(total, fetch * 4)

    def _allowed(self, ids: list[int], f: Filters) -> set:
        from sqlalchemy import func, select

        from retrieval.store.meta import Photo

        when = func.coalesce(Photo.taken_at, Photo.mtime_ns / 1e9)
        q = select(Photo.id).where(Photo.id.in_(ids))
        if self._lagging:  # deleted rows are gone; re-indexed ones would pair an old vector with new rows
            q = q.where(Photo.indexed_at <= self.lib.as_of)
        if f.under:
            q = q.where(Photo.path.startswith(f.under.rstrip(os.sep) + os.sep, autoescape=True))
        if f.after is not None:
            q = q.where(when >= f.after)
        if f.before is not None:
            q = q.where(when < f.before)
        with self.lib.session() as s:
            return set(s.scalars(q))

    def _rank(self, ids, itc, query_pooled) -> list[Hit]:
        """Order candidates by ITC, or by itc + weight * match logit of the evidence reranker
        (query_pooled given); the match probability is the logit's sigmoid, the share a softmax
        of the score over the candidates (retrieval/model/query_side.shares)."""
        if query_pooled is None or len(ids) == 0:
            hits = [Hit(0, int(i), "", float(s), float(s)) for i, s in zip(ids, itc)]
        else:
            logit = match_logits(self.runtime, self.lib, ids, itc, query_pooled)
            weight = self.runtime.config.rerank_weight
            prob = self.runtime.query.probabilities(logit)
            share = shares(itc, logit, weight, self.runtime.config.share_temperature)
            hits = [Hit(0, int(i), "", float(s) + weight * float(lg), float(s), float(p), float(sh))
                    for i, s, lg, p, sh in zip(ids, itc, logit, prob, share)]
        hits.sort(key=lambda h: (-h.score, h.id))
        for n, h in enumerate(hits, start=1):
            h.rank = n
        return hits

    def _with_paths(self, hits: list[Hit]) -> list[Hit]:
        paths = self.lib.reader.paths([h.id for h in hits], self.lib.as_of if self._lagging else None)
        return [Hit(h.rank, h.id, paths[h.id], h.score, h.itc, h.itm, h.share) for h in hits if h.id in paths]



def mark_likely(hits: list[Hit]) -> list[Hit]:
    """Flag the top hits whose shares hold LIKELY of the candidates' (the photo described is
    among them about that often when it is among the candidates: benchmarks/results/recall.md),
    where shares were computed and the line falls within `hits`."""
    if not hits or any(h.share is None for h in hits):
        return hits
    n = likely_count([h.share for h in hits])
    for i, h in enumerate(hits):
        h.likely = None if n is None else i < n
    return hits


def open_searcher(db: Path | None = None, runtime: Runtime | None = None) -> Searcher:
    from retrieval.store.library import library_dir, recorded_model

    root = library_dir(db)
    runtime = runtime or Runtime(image_precision=Runtime.library_precision(recorded_model(root)[1]))
    return Searcher(Library.open(root, runtime.fingerprint, runtime.dim, mmap=True), runtime)
