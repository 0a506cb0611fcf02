"""`fusion describe`: from the caption corpora indexed in the library, else from the caption
memory shipped with the model; the lower copies of a caption met twice are not shown. Real
photos, the real model, real libraries."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from indexer.run import index_paths
from retrieval.cli import main
from retrieval.query.describe import memory_weights
from retrieval.query.rerank import caption_scores
from retrieval.query.search import open_searcher

ZEBRA = "000000113354.jpg"


def key(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".")


@pytest.fixture(scope="module")
def photos_only(tmp_path_factory, demo_photos):
    """A library of 7 demo photos, the zebras among them, and no captions."""
    root = tmp_path_factory.mktemp("describe")
    (root / "p").mkdir()
    for p in demo_photos[:6] + [p for p in demo_photos if p.name == ZEBRA]:
        shutil.copy(p, root / "p" / p.name)
    index_paths([root / "p"], root / "lib")
    return root


def test_without_a_corpus_describe_ranks_the_shipped_memory(photos_only):
    s = open_searcher(photos_only / "lib")
    assert len(s.lib.captions) == 0
    zebra = photos_only / "p" / ZEBRA
    r = s.describe(zebra, k=5)
    assert len(r.notes) == 1 and "no caption corpus is indexed" in r.notes[0]
    assert [h.source for h in r.hits] == ["memory"] * 5 and all(h.id is None for h in r.hits)
    texts = [h.text for h in r.hits]
    assert all("zebra" in t.lower() for t in texts[:3]), texts
    assert len({key(t) for t in texts}) == 5
    # the scores are the model's describe scores of these very captions for the memory (ITC
    # alone: the shipped memory_describe_weight is 0, no prior; docs/quality.md), best first
    rt, pv = s.runtime, s._photo_vectors(zebra)
    assert memory_weights(rt.config) == (0.0, 0.0) and rt.config.memory_describe_weight == 0.0
    q_itc, _ = rt.embedder.texts(rt.text_encoder.encode(texts, normalize=False).pooled)
    itc = (q_itc @ pv.itc.T)[:, 0]
    want = caption_scores(rt, pv.evidence, texts, itc, weights=memory_weights(rt.config))
    np.testing.assert_allclose(want, itc, atol=1e-6)
    np.testing.assert_allclose([h.score for h in r.hits], want, atol=2e-3)
    assert np.abs(want - caption_scores(rt, pv.evidence, texts, itc)).max() > 0.01  # not the captions' rule
    assert [h.score for h in r.hits] == sorted((h.score for h in r.hits), reverse=True)
    # an unrelated photo gets other captions
    other = [h.text for h in s.describe(photos_only / "p" / sorted(p.name for p in (photos_only / "p").iterdir()
                                                                     if p.name != ZEBRA)[0], k=5).hits]
    assert not set(other) & set(texts)


def test_the_cli_says_where_the_captions_come_from(photos_only):
    args = ["describe", str(photos_only / "p" / ZEBRA), "--db", str(photos_only / "lib"), "-k", "3"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert len(r.stdout.splitlines()) == 3 and "zebra" in r.stdout.lower()
    assert "note: no caption corpus is indexed" in r.stderr and "fusion index FILE.jsonl" in r.stderr
    out = json.loads(CliRunner().invoke(main, args + ["--json"]).stdout)
    assert [(h["rank"], h["source"], h["id"]) for h in out] == [(1, "memory", None), (2, "memory", None),
                                                                 (3, "memory", None)]


def test_an_indexed_corpus_is_used_and_a_caption_met_twice_is_shown_once(photos_only, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    lines = ["Two zebras grazing in a field.", "two zebras  grazing in a field", "Two Zebras grazing in a field",
             "A plate of pasta on a table.", "A red bus on a city street.", "A zebra standing alone by a tree."]
    corpus.write_text("".join(json.dumps({"caption": t}) + "\n" for t in lines))
    db = tmp_path / "lib"
    shutil.copytree(photos_only / "lib", db)
    index_paths([corpus], db)
    r = open_searcher(db).describe(photos_only / "p" / ZEBRA, k=4)
    texts = [h.text for h in r.hits]
    assert r.notes == [] and [h.source for h in r.hits] == ["library"] * 4 and all(h.id for h in r.hits)
    assert [key(t) for t in texts].count("two zebras grazing in a field") == 1
    assert {key(t) for t in texts} == {key(t) for t in lines}  # the 4 distinct captions, no copy
    assert "zebra" in texts[0].lower() and "zebra" in texts[1].lower()
    # as many lines as asked for when copies are dropped, also with k as large as the candidates
    more = tmp_path / "more.jsonl"
    more.write_text("".join(json.dumps({"caption": f"A zebra and {n} birds on the grass."}) + "\n" for n in range(40)))
    index_paths([more], db)
    r = open_searcher(db).describe(photos_only / "p" / ZEBRA, k=32)
    assert len(r.hits) == 32 and len({key(h.text) for h in r.hits}) == 32


def test_agreement_measures_of_benchmarks_describe_memory():
    from retrieval.evaluation.describe import agreed_words, closeness, uses_agreed_word

    own = ["Two zebras grazing on grass.", "A zebra eats grass in a field.", "Zebras in the wild.",
           "Animals standing by a tree."]
    assert agreed_words(own) == {"zebra", "grass"}  # plural folded; "field", "tree" are used once
    assert agreed_words(own, agree=3) == {"zebra"}
    assert uses_agreed_word("A lone zebra by the road", own)
    assert not uses_agreed_word("A field with a tree", own)  # words only one caption uses
    shown = np.array([[1, 0, 0], [0, 0.6, 0.8]], np.float32)
    mine = np.array([[0, 1, 0], [0.6, 0.8, 0]], np.float32)
    np.testing.assert_allclose(closeness(shown, mine), [0.6, 0.6])


def test_the_open_world_memory_measure_picks_what_describe_shows(photos_only, demo_dir):
    """The open-world benchmark's describe-from-the-memory rows (retrieval/evaluation/i2t.py)
    score the caption `fusion describe` would show first, under each rule it reports."""
    from dataclasses import replace
    from types import SimpleNamespace

    from retrieval.data.datasets import load_dataset
    from retrieval.evaluation.describe import uses_agreed_word
    from retrieval.evaluation.i2t import describe_from_memory

    s = open_searcher(photos_only / "lib")
    rt = s.runtime
    paths = sorted((photos_only / "p").iterdir())
    enc = rt.image_encoder
    pv = rt.photo_vectors(enc.encode([enc.load(p) for p in paths], normalize=False))
    own = load_dataset(demo_dir).texts_by_path()
    texts, caption_image = [], []
    for n, p in enumerate(paths):
        caps = next(v for k, v in own.items() if k.endswith(p.name))
        texts += caps
        caption_image += [n] * len(caps)
    _, sent = rt.embedder.texts(rt.text_encoder.encode(texts, normalize=False).pooled)
    got = describe_from_memory(SimpleNamespace(reranker=rt.query), rt.embedder, pv.itc, pv.evidence, 32,
                               rt.query.bank, texts, sent, np.array(caption_image))
    cfg = rt.query.config
    rules = {"ITC alone": 0.0, "reranker 0.1": 0.1, "reranker 0.25": 0.25, "prior 0.5": None}
    try:
        for rule, w in rules.items():
            rt.query.config = (replace(cfg, memory_describe_weight=0.0, memory_describe_prior=0.5) if w is None
                               else replace(cfg, memory_describe_weight=w, memory_describe_prior=0.0))
            first, agrees, _ = got[rule]
            shown = [s.describe(p, k=1).hits[0].text for p in paths]
            assert [rt.embedder.memory.texts[i] for i in first] == shown, rule
            want = [uses_agreed_word(t, [x for x, c in zip(texts, caption_image) if c == n])
                    for n, t in enumerate(shown)]
            assert agrees.tolist() == want
    finally:
        rt.query.config = cfg
    assert (got["ITC alone"][0] != got["reranker 0.25"][0]).any()  # the rules differ on these photos
    assert got["ITC alone"][1].mean() > 0.5  # the demo's own words: describe is not guessing
    assert 0 < got["ITC alone"][2].min() and got["ITC alone"][2].max() <= 1.0001
