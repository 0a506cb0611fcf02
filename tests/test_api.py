"""The Python API at the package's top (retrieval/api.py) on the demo collection: the same
answers as the query engine underneath, plain dataclasses out, typed errors."""

import datetime
from dataclasses import asdict

import pytest

import retrieval
from retrieval.query.search import open_searcher


@pytest.fixture(scope="module")
def lib(demo_dir, tmp_path_factory):
    db = tmp_path_factory.mktemp("api") / "lib"
    calls = []
    lib = retrieval.open_library(db)
    summary = lib.index([demo_dir], progress=lambda done, total: calls.append((done, total)))
    lib.calls, lib.summary = calls, summary
    yield lib
    lib.close()


def test_index_reports_progress_and_a_summary(lib, demo_dir):
    n = len(list((demo_dir / "images").glob("*.jpg")))
    assert isinstance(lib.summary, retrieval.IndexSummary)
    assert lib.summary.added == n and lib.summary.photos == n and lib.summary.captions_added > 0
    dones = [d for d, _ in lib.calls]
    assert dones == sorted(dones) and dones[-1] == n and {t for _, t in lib.calls} == {n}
    assert asdict(lib.summary)["skipped"] == []


def test_search_is_the_engine_s_ranking_as_dataclasses(lib):
    results = lib.search("a dog on a beach", k=5)
    assert isinstance(results, retrieval.Results) and all(isinstance(h, retrieval.Hit) for h in results.hits)
    engine = open_searcher(lib.root).text("a dog on a beach", 5).hits
    assert [(h.path, round(h.score, 6)) for h in results.hits] == [(h.path, round(h.score, 6)) for h in engine]
    assert 0 < sum(h.share for h in results.hits) <= 1.0 + 1e-6


def test_by_photo_combined_similar_describe_duplicates(lib, demo_dir):
    photo = sorted((demo_dir / "images").glob("*.jpg"))[3]
    similar = [h.path for h in lib.similar(photo, k=3).hits]
    assert similar == [h.path for h in open_searcher(lib.root).similar(photo, 3).hits]
    by_photo = [h.path for h in lib.search(like=photo, k=3).hits]
    assert len(by_photo) == 3 and str(photo.resolve()) not in by_photo + similar  # itself left out
    both = lib.search("a photo taken at night", like=photo, k=5)
    assert len(both.hits) == 5 and both.hits != lib.search(like=photo, k=5).hits
    captions = lib.describe(photo, k=3).hits
    assert len(captions) == 3 and all(isinstance(c, retrieval.CaptionHit) and c.text for c in captions)
    assert isinstance(lib.duplicates(), list)
    info = lib.info()
    assert info["photos"] == lib.summary.photos and info["model"] == lib.model


def test_filters_and_typed_errors(lib, demo_dir, tmp_path):
    future = datetime.date.today() + datetime.timedelta(days=3650)
    assert lib.search("a dog", after=future).hits == []
    assert len(lib.search("a dog", k=3, before=future).hits) == 3
    with pytest.raises(retrieval.QueryError, match="not a date"):
        lib.search("a dog", after="last tuesday")
    with pytest.raises(retrieval.QueryError):
        lib.search()
    with pytest.raises(retrieval.ImageError):
        lib.similar(demo_dir / "captions.jsonl")
    with pytest.raises(retrieval.CheckpointError, match="no such model file"):
        retrieval.open_library(tmp_path / "other", model=tmp_path / "missing.safetensors")
    with pytest.raises(retrieval.LibraryError, match="no library here yet"):
        retrieval.open_library(tmp_path / "empty").search("a dog")
