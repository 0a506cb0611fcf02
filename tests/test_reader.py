"""The query path's sqlite3 reads (retrieval/store/reader.py) against the SQLAlchemy models
they stand in for, on a real library of demo photos."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from sqlalchemy import func, select

from indexer.run import index_paths
from retrieval.errors import LibraryError, ModelMismatchError
from retrieval.model.runtime import Runtime
from retrieval.store.library import Library
from retrieval.store.meta import Caption, Photo, PhotoFeatures


@pytest.fixture(scope="module")
def lib(tmp_path_factory, demo_photos):
    db = tmp_path_factory.mktemp("reader") / "lib"
    rt = Runtime()
    index_paths(demo_photos[:8], db, runtime=rt)
    out = Library.open(db, rt.fingerprint, rt.dim, mmap=True)
    yield out
    out.close()


def test_reads_equal_the_models(lib):
    with lib.session() as s:
        rows = s.execute(select(Photo.id, Photo.path, Photo.size, Photo.mtime_ns, Photo.indexed_at)).all()
        rerank = dict(s.execute(select(PhotoFeatures.photo_id, PhotoFeatures.rerank)).all())
        vectors = dict(s.execute(select(PhotoFeatures.photo_id, PhotoFeatures.vector)).all())
        summary = tuple(s.execute(select(func.count(Caption.id), func.sum(Caption.id), func.min(Caption.id),
                                         func.max(Caption.id))).one())
    assert len(rows) == 8
    ids = [r.id for r in rows]
    asked = ids[::-1] + [max(ids) + 100]  # any order, and an id the library lacks
    assert lib.reader.paths(asked) == {r.id: r.path for r in rows}
    assert lib.reader.rerank_rows(asked) == rerank and all(rerank.values())
    assert dict(lib.reader.vectors("photo_features", "photo_id")) == vectors
    assert lib.reader.id_summary("photo_features", "photo_id") == (8, sum(ids), min(ids), max(ids))
    assert lib.reader.id_summary("captions", "id") == summary == (0, None, None, None)
    first = min(rows, key=lambda r: r.indexed_at)
    assert lib.reader.paths(ids, indexed_by=first.indexed_at) == {
        r.id: r.path for r in rows if r.indexed_at <= first.indexed_at}
    assert lib.reader.photo(first.id) == (first.path, first.size, first.mtime_ns)
    assert lib.reader.photo(max(ids) + 100) is None and lib.reader.paths([]) == {}


def test_many_ids_are_read_in_chunks(lib):
    ids = sorted(lib.reader.paths(range(1, 10_000)))  # 9,999 bound ids, over SQLite's old limit of 999
    assert len(ids) == 8


def test_the_reader_never_writes(lib):
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        lib.reader._con().execute("DELETE FROM photos")
    assert len(lib.reader.paths(range(1, 100))) == 8


def test_each_thread_reads_on_its_own_connection_and_close_ends_them(lib):
    got, errors = [], []

    def read():
        try:
            for _ in range(20):
                got.append(len(lib.reader.rerank_rows(range(1, 100))))
                time.sleep(0.001)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == [8] * 80
    assert len(lib.reader._all) >= 4  # one each, until another thread connects
    done = threading.Thread(target=lambda: lib.reader.paths([1]))
    done.start()
    done.join()
    main = threading.current_thread()
    assert all(t in (main, done) for t, _ in lib.reader._all)  # the ended threads' connections are closed
    lib.reader.close()
    assert lib.reader._all == [] and len(lib.reader.paths(range(1, 100))) == 8  # reopens on demand


def test_what_the_reader_cannot_take_as_is_goes_through_sqlalchemy(tmp_path, demo_photos):
    db = tmp_path / "lib"
    rt = Runtime()
    index_paths(demo_photos[:2], db, runtime=rt)
    opened = Library.open(db, rt.fingerprint, rt.dim, mmap=True)
    assert opened._engine is None and len(opened.reader.paths(range(1, 10))) == 2  # sqlite3 alone
    opened.close()
    with pytest.raises(ModelMismatchError, match="re-index with: fusion index --rebuild"):
        Library.open(db, "another-model", rt.dim, mmap=True)

    def set_meta(key, value):
        con = sqlite3.connect(db / "library.sqlite")
        con.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
        con.commit()
        con.close()

    set_meta("schema_version", "99")
    with pytest.raises(LibraryError, match="made by a newer fusion"):
        Library.open(db, rt.fingerprint, rt.dim, mmap=True)
    set_meta("schema_version", "3")
    con = sqlite3.connect(db / "library.sqlite")
    con.execute("DELETE FROM meta WHERE key = 'model'")
    con.commit()
    con.close()
    opened = Library.open(db, rt.fingerprint, rt.dim, mmap=True)  # no model recorded: SQLAlchemy records it
    assert opened._engine is not None and opened.reader.meta("model") == rt.fingerprint
    opened.close()
