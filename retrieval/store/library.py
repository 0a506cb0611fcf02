"""A library directory: `library.sqlite` (truth: metadata, vectors, rerank features) and two
FAISS files (`photos.faiss`, `captions.faiss`) that are caches of the SQLite vectors, rebuilt
whenever their ids disagree with SQLite (after a crash, or a lost file)."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import threading

import numpy as np

from retrieval.errors import LibraryError, ModelMismatchError
from retrieval.store.reader import SCHEMA_VERSION, VECTOR_DTYPE, Reader
from retrieval.store.vectors import RETRAIN_GROWTH, VectorStore, wanted_kind

# SQLAlchemy (retrieval/store/meta.py) is imported where a write or a rare read needs it, not
# here: a search opens the library and reads its candidates with sqlite3 alone (store/reader.py)

DB_FILE = "library.sqlite"
PHOTO_INDEX = "photos.faiss"
CAPTION_INDEX = "captions.faiss"
LOCK_FILE = "index.lock"  # flock'd by `fusion index` while it writes (indexer/run.py)
SHIPPED_MODEL = ""  # the model_path recorded for the checkpoint shipped in the package


def library_dir(db: str | os.PathLike | None = None) -> Path:
    """--db, else $FUSION_HOME, else $XDG_DATA_HOME/fusion (~/.local/share/fusion)."""
    if db:
        return Path(db).expanduser()
    if os.environ.get("FUSION_HOME"):
        return Path(os.environ["FUSION_HOME"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "fusion"


def recorded_model(root: Path) -> tuple[str | None, str | None]:
    """(the checkpoint file the library at `root` was indexed with, SHIPPED_MODEL for the one in
    the package; the model fingerprint it recorded), each None when there is no library there
    yet, it predates the record or its database is unreadable."""
    import sqlite3

    if not (root / DB_FILE).is_file():
        return None, None
    # SELECTs, not open_db: every command reads this before it opens the library, and
    # open_db's schema checks and migrations would then run twice
    reader = Reader(root / DB_FILE)
    try:
        return reader.meta("model_path"), reader.meta("model")
    except sqlite3.Error:  # damaged: opening the library says so, and --rebuild starts afresh
        return None, None
    finally:
        reader.close()


def check_root(root: Path) -> None:
    """A library folder may not exist yet, but it must not be a file."""
    if root.exists() and not root.is_dir():
        raise LibraryError(f"{root}: is a file, not a library folder; pass --db a folder")


def index_running(root: Path) -> bool:
    """Whether a `fusion index` holds this library's writer lock now. The probe takes a shared
    flock for an instant (the writer retries its own for a while, so the probe never turns an
    index run away) and never creates or writes a file."""
    try:
        f = open(root / LOCK_FILE, "rb")
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


class Library:
    def __init__(self, root: Path, photos: VectorStore, captions: VectorStore, as_of: float = float("inf"),
                 engine=None):
        self.root, self.photos, self.captions = root, photos, captions
        # FAISS holds every photo SQLite had at this time (epoch s): a row indexed later may be
        # missing, or stored here with its old vector (readers hide such rows; see Searcher)
        self.as_of = as_of
        self.reader = Reader(root / DB_FILE)
        self._engine, self._engine_lock = engine, threading.Lock()

    @classmethod
    def open(cls, root: Path, fingerprint: str, dim: int, create: bool = False, writer: bool = False,
             mmap: bool = False, reconcile: bool = True, model_path: str | None = None) -> "Library":
        """Open the library at `root` for the model `fingerprint`. Refuses another model's
        library (ModelMismatchError naming the fix); with `create`, makes a new one. A reader
        repairs stale FAISS indexes in memory only; a `writer` also saves the repair. `mmap`
        (readers only) maps the FAISS files instead of reading them whole. Without `reconcile`
        (a reader while an index run is writing), the FAISS files are taken as the indexer last
        saved them, a consistent snapshot as of that save, instead of rebuilding from SQLite
        rows that move on every batch. A `writer` records `model_path`, the checkpoint file the
        fingerprint is of (recorded_model), for the commands that follow. A reader of a current
        library opens it with sqlite3 alone (store/reader.py); anything else (a new library, an
        older schema to migrate, a damaged file to report) goes through SQLAlchemy."""
        check_root(root)
        started = time.time()
        if not (root / DB_FILE).is_file():
            if not create:
                raise LibraryError(f"{root}: no library here yet; index photos first: "
                                   f"fusion index PATH --db {root}")
            root.mkdir(parents=True, exist_ok=True)
        engine = None
        if writer or create or not _readable_as_is(root, fingerprint):
            engine = _checked_engine(root, fingerprint, writer, model_path)
        mmap = mmap and not writer
        if not reconcile and not writer:
            saved = [(root / n).stat().st_mtime for n in (PHOTO_INDEX, CAPTION_INDEX) if (root / n).exists()]
            started = min(saved, default=0.0)  # each save follows the SQLite commits it holds
        lib = cls(root, VectorStore.load(root / PHOTO_INDEX, dim, mmap),
                  VectorStore.load(root / CAPTION_INDEX, dim, mmap), started, engine)
        if reconcile or writer:
            lib.reconcile(save=writer)
        return lib

    @property
    def engine(self):
        """The SQLAlchemy engine, opened on first use (a search never needs it)."""
        with self._engine_lock:
            if self._engine is None:
                from retrieval.store.meta import open_db

                self._engine = open_db(self.root / DB_FILE)
            return self._engine

    def session(self):
        from sqlalchemy.orm import Session

        return Session(self.engine)

    def close(self) -> None:
        """Let go of the database connections (the FAISS indexes stay usable)."""
        with self._engine_lock:
            if self._engine is not None:
                self._engine.dispose()
        self.reader.close()

    def reconcile(self, save: bool = True) -> bool:
        """Make each FAISS index hold exactly the vectors SQLite holds; True if one changed.
        Only the indexer saves the result: readers never write library files."""
        changed = False
        for store, name, table, column in ((self.photos, PHOTO_INDEX, "photo_features", "photo_id"),
                                           (self.captions, CAPTION_INDEX, "captions", "id")):
            if _same_ids(self.reader.id_summary(table, column), store.ids()):
                continue
            ids, vecs = self._vectors(self.reader.vectors(table, column))
            store.index, store.mapped = VectorStore.build(store.kind, store.dim, ids, vecs).index, False
            if save:
                store.save(self.root / name)
            changed = True
        return changed

    @staticmethod
    def _vectors(rows):
        ids, vecs = [], []
        for i, blob in rows:
            ids.append(i)
            vecs.append(np.frombuffer(blob, VECTOR_DTYPE).astype(np.float32))
        return ids, (np.stack(vecs) if vecs else np.zeros((0, 0), np.float32))

    def maintain(self, index_type: str | None = None) -> bool:
        """Give the photo index the kind its size calls for (or `index_type`, which is then
        remembered), retraining an IVF index as the library outgrows it; True if rebuilt."""
        from retrieval.store.meta import get_meta, set_meta

        with self.session() as s, s.begin():
            if index_type:
                set_meta(s, "index_type", index_type)
            chosen = get_meta(s, "index_type") or "auto"
            trained = int(get_meta(s, "ivf_trained_for") or 0)
        n = len(self.photos)
        kind = wanted_kind(chosen, n)
        if kind == self.photos.kind and not (kind == "ivf" and n > RETRAIN_GROWTH * max(trained, 1)):
            return False
        ids, vecs = self._vectors(self.reader.vectors("photo_features", "photo_id"))
        self.photos = VectorStore.build(kind, self.photos.dim, ids, vecs)
        with self.session() as s, s.begin():
            set_meta(s, "ivf_trained_for", str(n if kind == "ivf" else 0))
        return True

    def save(self) -> None:
        self.photos.save(self.root / PHOTO_INDEX)
        self.captions.save(self.root / CAPTION_INDEX)

    def info(self) -> dict:
        from sqlalchemy import func, select

        from retrieval.store.meta import Caption, Photo, get_meta

        with self.session() as s:
            photos = s.scalar(select(func.count(Photo.id)))
            captions = s.scalar(select(func.count(Caption.id)))
            model = get_meta(s, "model")
            model_path = get_meta(s, "model_path")
            schema = get_meta(s, "schema_version")
        files = [p for p in self.root.iterdir() if p.is_file()]
        disk = sum(p.stat().st_size for p in files)
        return {
            "library": str(self.root), "photos": photos, "vectors": len(self.photos),
            "captions": captions, "caption_vectors": len(self.captions),
            "index_type": self.photos.describe(),
            "model": model, "model_file": model_path or "the model shipped with fusion",
            "schema_version": int(schema), "bytes_on_disk": disk,
            "bytes_per_photo": round(disk / photos) if photos else 0,
        }


def _same_ids(summary: tuple, faiss_ids: np.ndarray) -> bool:
    """Whether FAISS holds exactly SQLite's ids, given SQLite's (count, sum, min, max) of them
    (Reader.id_summary: one aggregate over the id-only index instead of reading a million ids
    into Python); when all four agree the sets are taken as equal. A new row gets an id above
    every id ever used (meta.new_ids), so the additions and removals of an interrupted run
    change the count, the sum or the extremes (equal sums need removed ids above the added
    ones, which moves the maximum)."""
    n, total, lo, hi = summary
    if n != len(faiss_ids):
        return False
    if n == 0:
        return True
    return (int(total), int(lo), int(hi)) == (int(faiss_ids.sum()), int(faiss_ids.min()), int(faiss_ids.max()))


def _readable_as_is(root: Path, fingerprint: str) -> bool:
    """Whether a reader may open the library with sqlite3 alone: a database of the current
    schema made with this model. ModelMismatchError for another model's library; False for
    anything SQLAlchemy must see to (an older schema, a new or damaged file)."""
    import sqlite3

    reader = Reader(root / DB_FILE)
    try:
        version, stored = reader.meta("schema_version"), reader.meta("model")
    except sqlite3.Error:
        return False
    finally:
        reader.close()
    if version != str(SCHEMA_VERSION) or stored is None:
        return False
    _check_model(root, stored, fingerprint)
    return True


def _check_model(root: Path, stored: str, fingerprint: str) -> None:
    if stored != fingerprint:
        raise ModelMismatchError(
            f"{root}: built with model {stored}, but the model in use is {fingerprint}; "
            f"re-index with: fusion index --rebuild [--model FILE] PATH --db {root}")


def _checked_engine(root: Path, fingerprint: str, writer: bool, model_path: str | None):
    """Open (create, migrate) the database through SQLAlchemy and check or record its model."""
    from sqlalchemy.orm import Session

    from retrieval.store.meta import get_meta, open_db, set_meta

    engine = open_db(root / DB_FILE)
    try:
        with Session(engine) as s, s.begin():
            stored = get_meta(s, "model")
            if stored is None:
                set_meta(s, "model", fingerprint)
            else:
                _check_model(root, stored, fingerprint)
            if writer and model_path is not None:
                set_meta(s, "model_path", model_path)
    except BaseException:
        engine.dispose()
        raise
    return engine
