"""Near-duplicates on real photos: constructed copies of demo photos (half size, JPEG quality
50, 5% crop, colour jitter) are grouped with their original and nothing else, through the
library API, the CLI and HTTP; a library from before signatures is told how to get them."""

import json
import shutil
import sqlite3

import pytest
from click.testing import CliRunner

from indexer.run import index_paths
from retrieval.cli import main
from retrieval.errors import LibraryError
from retrieval.evaluation.near_duplicates import make_set
from retrieval.model.runtime import Runtime
from retrieval.query.duplicates import duplicate_groups
from retrieval.query.search import open_searcher
from tests.serving import get, running_server


@pytest.fixture(scope="module")
def library(tmp_path_factory, demo_photos):
    root = tmp_path_factory.mktemp("d")
    photos = root / "photos"
    photos.mkdir()
    group = make_set(demo_photos[:3], photos)  # 3 shots x 5 copies
    for p in demo_photos[3:15]:  # 12 distinct photos
        shutil.copy(p, photos / p.name)
    index_paths([photos], root / "lib", runtime=Runtime())
    want = sorted(sorted(p for p, g in group.items() if g == stem) for stem in set(group.values()))
    return root, want


def test_copies_are_grouped_and_distinct_photos_are_not(library):
    root, want = library
    groups = duplicate_groups(open_searcher(root / "lib").lib)
    assert sorted(g.paths for g in groups) == want
    assert all(0.85 <= g.similarity <= 1 for g in groups)
    # a threshold near 1 keeps only the closest copies; near 0 joins distinct photos too
    assert sum(len(g.paths) for g in duplicate_groups(open_searcher(root / "lib").lib, 0.99)) < 15
    assert sum(len(g.paths) for g in duplicate_groups(open_searcher(root / "lib").lib, 0.3)) > 15


def test_cli_and_http(library):
    root, want = library
    r = CliRunner().invoke(main, ["duplicates", "--db", str(root / "lib"), "--json"])
    assert r.exit_code == 0, r.output
    assert sorted(g["paths"] for g in json.loads(r.stdout)) == want
    r = CliRunner().invoke(main, ["duplicates", "--db", str(root / "lib"), "--threshold", "1.5"])
    assert r.exit_code == 2 and "1.5" in r.output
    with running_server(root / "lib") as base:
        status, body = get(base + "/api/duplicates")
        assert status == 200 and sorted(g["paths"] for g in json.loads(body)["groups"]) == want
        assert get(base + "/api/duplicates?threshold=0")[0] == 422


def test_library_from_before_signatures_gets_them_on_the_next_index_run(tmp_path, demo_photos):
    photos = tmp_path / "p"
    photos.mkdir()
    make_set(demo_photos[:1], photos)
    for p in demo_photos[1:4]:
        shutil.copy(p, photos / p.name)
    db = tmp_path / "lib"
    index_paths([photos], db, runtime=Runtime())
    con = sqlite3.connect(db / "library.sqlite")  # as schema version 2 left it
    con.execute("alter table photo_features drop column signature")
    con.execute("update meta set value = '2' where key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(LibraryError, match="no near-duplicate signature yet.*run fusion index"):
        duplicate_groups(open_searcher(db).lib)
    r = CliRunner().invoke(main, ["duplicates", "--db", str(db)])
    assert r.exit_code == 1 and "run fusion index" in r.output
    s = index_paths([photos], db, runtime=Runtime())
    assert s["updated"] == 8 and s["added"] == 0  # same ids, features computed again
    assert [len(g.paths) for g in duplicate_groups(open_searcher(db).lib)] == [5]
