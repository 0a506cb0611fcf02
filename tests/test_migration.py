"""Schema migration, step by step: a version-1 library (raw pooled features) opens as version 3
(the rerank head's projection, near-duplicate signatures), and `fusion index` re-encodes what
SQL could not convert."""

import shutil
import sqlite3

from click.testing import CliRunner

from retrieval.cli import main
from retrieval.model.runtime import Runtime
from retrieval.store.meta import SCHEMA_VERSION

V1 = """
CREATE TABLE meta (key VARCHAR NOT NULL PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE photos (id INTEGER NOT NULL PRIMARY KEY, path TEXT NOT NULL UNIQUE, size INTEGER NOT NULL,
  mtime_ns INTEGER NOT NULL, sha VARCHAR(40) NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,
  taken_at FLOAT, camera TEXT, indexed_at FLOAT NOT NULL);
CREATE TABLE photo_features (photo_id INTEGER NOT NULL PRIMARY KEY REFERENCES photos(id) ON DELETE CASCADE,
  vector BLOB NOT NULL, pooled BLOB NOT NULL, grid BLOB NOT NULL);
CREATE TABLE caption_sources (id INTEGER NOT NULL PRIMARY KEY, path TEXT NOT NULL UNIQUE,
  size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL);
CREATE TABLE captions (id INTEGER NOT NULL PRIMARY KEY, source_id INTEGER NOT NULL REFERENCES caption_sources(id)
  ON DELETE CASCADE, line INTEGER NOT NULL, text TEXT NOT NULL, image_path TEXT, vector BLOB NOT NULL, tokens BLOB);
"""


def test_v1_library_migrates_and_is_repaired(tmp_path, demo_photos):
    photos = tmp_path / "p"
    photos.mkdir()
    for p in demo_photos[:3]:
        shutil.copy(p, photos)
    db = tmp_path / "lib"
    db.mkdir()
    con = sqlite3.connect(db / "library.sqlite")
    con.executescript(V1)
    con.execute("insert into meta values ('schema_version', '1'), ('model', ?)", (Runtime().fingerprint,))
    for n, p in enumerate(sorted(photos.iterdir()), start=1):
        st = p.stat()
        con.execute("insert into photos values (?, ?, ?, ?, 'x', 640, 480, NULL, NULL, 0)",
                    (n, str(p), st.st_size, st.st_mtime_ns))
        con.execute("insert into photo_features values (?, zeroblob(1536), zeroblob(2560), x'')", (n,))
    con.commit()
    con.close()
    r = CliRunner().invoke(main, ["info", "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    con = sqlite3.connect(db / "library.sqlite")
    cols = [row[1] for row in con.execute("pragma table_info(photo_features)")]
    assert cols == ["photo_id", "vector", "rerank", "signature"] and SCHEMA_VERSION == 3
    assert con.execute("select value from meta where key='schema_version'").fetchone() == ("3",)
    con.close()
    r = CliRunner().invoke(main, ["index", str(photos), "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    assert '"updated": 3' in r.stdout  # same rows (ids kept), features computed again
    r = CliRunner().invoke(main, ["search", "a photo", "--db", str(db), "--json"])
    assert r.exit_code == 0 and r.stdout.count('"itm"') == 3
