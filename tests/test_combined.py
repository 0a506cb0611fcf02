"""Combined queries on a library of the demo photos: a photo and words together, --add and
--minus move the photos they name in the expected direction; also through the CLI and HTTP."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from indexer.run import index_paths
from retrieval.cli import main
from retrieval.errors import FusionError
from retrieval.evaluation.combined import constructed_cases, evaluate, fusion_grid, rank_of
from retrieval.model.runtime import Runtime
from retrieval.query import combine
from retrieval.query.combine import Combined, word_match
from retrieval.query.rerank import stored_evidence
from retrieval.query.results import Filters
from retrieval.query.search import open_searcher
from retrieval.data.words import stems, words
from retrieval.data.datasets import load_dataset
from tests.serving import get, running_server


@pytest.fixture(scope="module")
def library(tmp_path_factory, demo_dir):
    root = tmp_path_factory.mktemp("c")
    shutil.copytree(demo_dir, root / "demo")
    index_paths([root / "demo"], root / "lib", runtime=Runtime())
    return root


@pytest.fixture(scope="module")
def searcher(library):
    return open_searcher(library / "lib")


@pytest.fixture(scope="module")
def captions(library):
    ds = load_dataset(library / "demo")
    out = {}
    for c in ds.captions:
        out.setdefault(str(ds.image_path(c.image).resolve()), []).append(c.text)
    return out


def mentioning(captions, word):
    return {p for p, cs in captions.items() if sum(word in words(c) for c in cs) >= 2}


def best_rank(results, paths):
    return min(h.rank for h in results.hits if h.path in paths)


def test_photo_plus_words_beats_either_alone(searcher, captions):
    some = dict(list(captions.items())[:8])  # 8 liked photos, each with its neighbours' cases
    cases = [c for c in constructed_cases(searcher, captions) if c.like in some]
    assert len(cases) >= 30
    r = evaluate(searcher, cases, k=48)
    both = r["photo + words"]["mrr"]
    assert both > r["photo alone"]["mrr"] and both > r["words alone"]["mrr"], r
    assert all(rk is not None for rk in r["photo + words"]["ranks"])  # k covers the whole library


def test_combined_shares_fall_with_rank_and_are_higher_when_right(searcher, captions):
    like = sorted(captions)[0]
    hits = searcher.combined(Combined("zebras", like), 32, 32).hits
    got = [h.share for h in hits]
    assert sum(got) == pytest.approx(1, abs=1e-5) and got == sorted(got, reverse=True)
    # the first result's share is higher on the cases where it is the wanted photo
    some = set(sorted(captions)[:10])
    cases = [c for c in constructed_cases(searcher, captions) if c.like in some]
    right, wrong = [], []
    for c in cases:
        top = searcher.combined(Combined(c.word, c.like), 1).hits[0]
        (right if top.path == c.target else wrong).append(top.share)
    assert len(right) >= 5 and len(wrong) >= 5 and np.mean(right) > np.mean(wrong) + 0.05, (right, wrong)


def test_constructed_words_single_out_the_target(searcher, captions):
    """The word is the target's (at least 2 of its captions use it, plurals folded) and no
    caption of the liked photo or of its other neighbours uses it in either number; "most"
    picks a word that at least as many of the target's captions use as "first" does."""
    some = set(sorted(captions)[:6])
    first = [c for c in constructed_cases(searcher, captions) if c.like in some]
    most = [c for c in constructed_cases(searcher, captions, pick="most") if c.like in some]
    assert len(first) == len(most) >= 20
    uses = lambda path, w: sum(bool(stems(w) & stems(c)) for c in captions[path])  # noqa: E731
    for a, b in zip(first, most):
        assert (a.like, a.target) == (b.like, b.target)
        near = [h.path for h in searcher.similar(a.like, 10).hits]
        for c in (a, b):
            assert uses(c.target, c.word) >= 2, c
            assert all(uses(p, c.word) == 0 for p in near + [c.like] if p != c.target and p in captions), c
        assert uses(b.target, b.word) >= uses(a.target, a.word)
    assert any(uses(b.target, b.word) > uses(a.target, a.word) for a, b in zip(first, most))
    assert stems("A dog against the wall, behind them") == {"dog", "wall"}


def test_word_match_reads_what_photos_recall(searcher, captions):
    rt, lib = searcher.runtime, searcher.lib
    ids = np.array(sorted(int(i) for i in lib.photos.ids()), np.int64)
    paths = searcher.paths_of(ids)
    recalled = stored_evidence(lib, ids).memory_ids
    zebras = mentioning(captions, "zebras")
    m = word_match(rt, recalled, "zebras")
    assert m.shape == (len(ids),) and 0 <= m.min() and m.max() <= 1
    inside = m[[p in zebras for p in paths]]
    outside = m[[p not in zebras for p in paths]]
    assert inside.min() > 0.5 and inside.min() > outside.max(), (inside, outside.max())
    assert np.array_equal(word_match(rt, recalled, "a zebra"), m)  # plural folded, "a" is no content word
    assert not word_match(rt, recalled, "the of it").any()
    assert stems("Dogs on the grass") == {"dog", "grass"}


def test_word_match_lifts_the_intended_photo(searcher, captions, monkeypatch):
    some = set(sorted(captions)[::3])  # 16 liked photos, each with its neighbours' cases
    cases = [c for c in constructed_cases(searcher, captions) if c.like in some]
    assert len(cases) >= 100

    def ranks():
        return np.array([rank_of(searcher.combined(Combined(c.word, c.like), k=48), c.target) for c in cases])

    with_match = ranks()
    monkeypatch.setattr(combine, "WORD_MATCH", 0.0)
    without = ranks()
    top1 = lambda r: 100 * np.mean(r == 1)  # noqa: E731
    # the reranker reads the recalled captions too, and the photo cap lets the words' own score
    # choose among the liked photo's neighbours, so the word match has less left to add: top-1
    # on these cases was +5 points and more with the reranker at 0.03, +1.9 before the cap, and
    # is level now (40.6%); it still moves the intended photos up (MRR: more than +0.005 before
    # the tuned tops, +0.003 with them, about one case moving from second to first)
    assert top1(with_match) >= top1(without), (top1(with_match), top1(without))
    assert np.mean(1 / with_match) > np.mean(1 / without), (np.mean(1 / with_match), np.mean(1 / without))


def test_photo_cap_lets_the_words_choose_among_the_photos_neighbours(searcher, captions):
    """Capping the photo part's z-score beside words lifts the intended neighbour (the closest
    looks no longer win where the words name another neighbour), and the grid the benchmark
    chooses settings by ranks exactly as `combined` does."""
    some = set(sorted(captions)[1::3])  # 16 liked photos other than the word-match test's
    cases = [c for c in constructed_cases(searcher, captions) if c.like in some]
    assert len(cases) >= 100
    shipped, off = (combine.WORD_MATCH, combine.PHOTO_CLIP), (combine.WORD_MATCH, 100.0)
    grid = fusion_grid(searcher, cases, [shipped, off], k=48)
    assert grid[shipped]["top1"] > grid[off]["top1"] + 1, grid
    assert grid[shipped]["mrr"] > grid[off]["mrr"], grid
    r = evaluate(searcher, cases[:40], k=48)["photo + words"]["ranks"]
    assert 100 * np.mean([x == 1 for x in r]) == fusion_grid(searcher, cases[:40], [shipped], k=48)[shipped]["top1"]


def test_more_results_keep_the_same_scores(searcher, captions):
    """Parts are standardised over each part's top 2 x candidates, not over however many
    photos were pooled: a photo's fused score does not depend on how many results are asked."""
    q = Combined("a dog", sorted(captions)[3], minus=("grass",))
    few_ids, few, _, _ = combine.combined_ranking(searcher, q, 4, True, Filters(), candidates=4)
    many_ids, many, _, _ = combine.combined_ranking(searcher, q, 40, True, Filters(), candidates=4)
    assert len(few_ids) == 4 and len(many_ids) == 40
    score = dict(zip(many_ids.tolist(), many.tolist()))
    assert all(score[i] == pytest.approx(f, abs=1e-5) for i, f in zip(few_ids.tolist(), few.tolist()))


def test_a_photo_alone_is_not_capped(searcher, captions):
    """Without words the photo part is the whole query: `--like P` alone ranks P's neighbours
    as `similar` does, and --minus words reorder them without the cap tying the closest."""
    like = sorted(captions)[5]
    alone = [h.path for h in searcher.combined(Combined(like=like), k=10).hits]
    assert alone == [h.path for h in searcher.similar(like, 10).hits]
    scored = [combine.Scored(1.0, np.array([3.0, 2.0, 0.0], np.float32), None, True)]
    assert list(combine.fuse(scored)) == [3.0, 2.0, 0.0]
    words = combine.Scored(1.0, np.zeros(3, np.float32), np.zeros(3, np.float32), False)
    capped = combine.fuse(scored + [words], clip=1.5)
    assert capped[0] > capped[1] > capped[2] and capped[0] - capped[1] == pytest.approx(0.1)


def test_minus_pushes_down_and_add_pulls_up(searcher, captions):
    zebras = mentioning(captions, "zebras")
    assert zebras
    plain = best_rank(searcher.text("animals", k=48), zebras)
    minus = best_rank(searcher.combined(Combined("animals", minus=("zebras",)), k=48), zebras)
    assert minus > plain + 3, (plain, minus)
    field = best_rank(searcher.text("a grassy field", k=48), zebras)
    add = best_rank(searcher.combined(Combined("a grassy field", add=("zebras",)), k=48), zebras)
    assert add < field and add == 1, (field, add)


def test_like_leaves_the_photo_itself_out_and_bad_parts_are_refused(searcher, captions):
    like = sorted(captions)[0]
    hits = searcher.combined(Combined("at night", like), k=10).hits
    assert len(hits) == 10 and like not in [h.path for h in hits]
    assert [h.rank for h in hits] == list(range(1, 11))
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    with pytest.raises(FusionError, match="--minus alone"):
        searcher.combined(Combined(minus=("cars",)))
    with pytest.raises(FusionError, match="empty --add"):
        searcher.combined(Combined("a street", add=(" ",)))


def test_cli_and_http(library, captions):
    like = sorted(captions)[0]
    db = str(library / "lib")
    r = CliRunner().invoke(main, ["search", "at night", "--like", like, "--minus", "people", "--db", db, "--json"])
    assert r.exit_code == 0, r.output
    assert like not in [h["path"] for h in json.loads(r.stdout)]
    r = CliRunner().invoke(main, ["search", "--db", db])
    assert r.exit_code == 2 and "give QUERY, --like PHOTO or --add WORDS" in r.output
    zebras = mentioning(captions, "zebras")
    with running_server(library / "lib") as base:
        status, body = get(base + "/api/search?q=a+grassy+field&add=zebras&k=3")
        assert status == 200 and json.loads(body)["results"][0]["path"] in zebras
        first = json.loads(get(base + "/api/search?q=animals&k=1")[1])["results"][0]
        status, body = get(f"{base}/api/search?like={first['id']}&q=at+night&k=5")
        assert status == 200 and first["id"] not in [h["id"] for h in json.loads(body)["results"]]
        status, body = get(base + "/api/search?minus=cars")
        assert status == 400 and "--minus alone" in json.loads(body)["error"]
        assert get(base + "/api/search?like=99999&q=x")[0] == 400
        assert get(base + "/api/search")[0] == 400
        # a photo from outside the library, sent as bytes (a dropped file): a copy of a library
        # photo finds that photo first; the words then move the rest
        photo = open(like, "rb").read()
        status, body = post(base + "/api/search?k=5", photo)
        assert status == 200 and json.loads(body)["results"][0]["path"] == like
        status, body = post(base + "/api/search?k=5&q=" + "zebras", photo)
        with_words = [h["path"] for h in json.loads(body)["results"]]
        assert status == 200 and sum(p in zebras for p in with_words) > 0
        status, body = post(base + "/api/search?q=x", b"not a photo at all")
        assert status == 400 and "the photo you sent" in json.loads(body)["error"]
        status, body = post(base + "/api/search?q=x", b"")
        assert status == 400 and "no photo" in json.loads(body)["error"]
        status, body = post(base + "/api/search?q=x", bytes(65 << 20))
        assert status == 413 and "over 64 MB" in json.loads(body)["error"]


def post(url, data: bytes):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
