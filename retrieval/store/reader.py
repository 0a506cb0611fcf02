"""The query path's reads, in the standard library's sqlite3: opening a library to search,
the candidates' rerank rows and paths. SQLAlchemy (retrieval/store/meta.py) owns the schema,
its migrations and every write; importing it costs 0.19 s, a third of a one-off `fusion search`,
and its statement building ~0.3 ms of every query, so the reads a search makes on every call
are plain SQL over the same tables (tests/test_reader.py checks them against the models)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

SCHEMA_VERSION = 3
# Vectors in SQLite are float16: three feature rows fit a 4 KB page (float32 rows fit one,
# wasting half of it). FAISS gets float32 at index time; a rebuild from SQLite rounds to
# float16, a relative error of ~1e-3 on cosines.
VECTOR_DTYPE = "<f2"
BUSY_MS = 10_000  # as the SQLAlchemy engine's busy_timeout (meta.open_db)
ID_COLUMNS = (("photo_features", "photo_id"), ("captions", "id"))  # the tables FAISS mirrors
CHUNK = 900  # ids per IN (...): under SQLite's oldest limit of 999 bound parameters


class Reader:
    """Read-only SQL on one library database, one connection per thread (a server answers
    queries on several). Never writes: the connections are `query_only`."""

    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()
        self._all: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._lock = threading.Lock()

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=BUSY_MS / 1000, check_same_thread=False)
            con.execute("PRAGMA query_only=ON")
            self._local.con = con
            with self._lock:  # the connections of threads that have ended go with them
                for thread, old in self._all:
                    if not thread.is_alive():
                        old.close()
                self._all = [(t, c) for t, c in self._all if t.is_alive()] + [(threading.current_thread(), con)]
        return con

    def meta(self, key: str) -> str | None:
        row = self._con().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def id_summary(self, table: str, column: str) -> tuple[int, int, int, int]:
        """(count, sum, min, max) of an id column, from its id-only index in one aggregate."""
        assert (table, column) in ID_COLUMNS
        return self._con().execute(f"SELECT count({column}), sum({column}), min({column}), max({column}) "
                                   f"FROM {table}").fetchone()

    def vectors(self, table: str, column: str):
        """(id, float16 vector bytes) of every row: what a FAISS index is rebuilt from."""
        assert (table, column) in ID_COLUMNS
        return self._con().execute(f"SELECT {column}, vector FROM {table}")

    def rerank_rows(self, ids) -> dict[int, bytes | None]:
        """Each present id's stored rerank evidence (photo_features.rerank)."""
        return dict(self._in("SELECT photo_id, rerank FROM photo_features WHERE photo_id IN ({})", ids))

    def paths(self, ids, indexed_by: float | None = None) -> dict[int, str]:
        """Each present photo id's path; with `indexed_by` (epoch s), only photos indexed by
        then (a FAISS snapshot's view, see Searcher._lagging)."""
        if indexed_by is None:
            return dict(self._in("SELECT id, path FROM photos WHERE id IN ({})", ids))
        return dict(self._in("SELECT id, path FROM photos WHERE id IN ({}) AND indexed_at <= ?", ids, (indexed_by,)))

    def photo(self, photo_id: int) -> tuple[str, int, int] | None:
        """(path, size, mtime_ns) of one photo, or None."""
        return self._con().execute("SELECT path, size, mtime_ns FROM photos WHERE id = ?", (int(photo_id),)).fetchone()

    def _in(self, sql: str, ids, extra: tuple = ()) -> list:
        ids, con, out = [int(i) for i in ids], self._con(), []
        for s in range(0, len(ids), CHUNK):
            part = ids[s:s + CHUNK]
            out += con.execute(sql.format(",".join("?" * len(part))), (*part, *extra)).fetchall()
        return out

    def close(self) -> None:
        with self._lock:
            for _thread, con in self._all:
                con.close()
            self._all.clear()
        self._local = threading.local()
