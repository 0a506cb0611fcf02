"""The short-query measures of benchmarks/flickr8k.py (retrieval/evaluation/short_queries.py):
how queries are cut from captions, which photos count as relevant to a single word, and that the
ranking they score is the one `fusion search` shows. Real photos, the shipped model, a real
library."""

import shutil

import numpy as np
import pytest

from indexer.run import index_paths
from retrieval.data.datasets import load_dataset
from retrieval.evaluation.short_queries import keywords, precision, shipped_top, word_queries
from retrieval.query.search import open_searcher


def test_keywords_keep_the_first_content_words_in_order():
    assert keywords("A black dog is running on the beach.") == "black dog running"
    assert keywords("A black dog is running on the beach.", 2) == "black dog"
    assert keywords("Two dogs, two DOGS and a dog.") == "dogs dog"  # each word once; not folded
    assert keywords("It is on the top of it") == ""


def test_word_queries_need_two_captions_of_a_photo_to_agree():
    caps = [["Two dogs play.", "A dog runs in the grass.", "The grass is green."],
            ["A dog sleeps.", "A cat sleeps."],
            ["Dogs on a beach.", "Two dogs at the beach."]]
    got = dict((w, set(p)) for w, p in word_queries(caps))
    # "dog": photo 0 (dogs + dog), photo 2 (Dogs + dogs); photo 1 has it once; written "dogs" most
    assert got == {"dogs": {0, 2}, "grass": {0}, "sleeps": {1}, "beach": {2}}
    assert word_queries(caps, support=3) == []  # no photo has 3 captions agreeing on a word


def test_precision_counts_relevant_results():
    top = np.array([[3, 1, 2], [0, 4, 5]])
    rel = [frozenset({3, 2}), frozenset({9})]
    assert precision(top, rel) == {"p1": 50.0, "p3": pytest.approx(100 * 2 / 6, abs=0.01)}


@pytest.fixture(scope="module")
def library(tmp_path_factory, demo_photos):
    root = tmp_path_factory.mktemp("short")
    (root / "p").mkdir()
    for p in demo_photos[:16]:
        shutil.copy(p, root / "p" / p.name)
    index_paths([root / "p"], root / "lib")
    return root


def test_the_measured_ranking_is_what_search_shows(library, demo_dir):
    s = open_searcher(library / "lib")
    rt = s.runtime
    paths = sorted((library / "p").iterdir())
    enc = rt.image_encoder
    feats = enc.encode([enc.load(p) for p in paths], normalize=False)
    own = load_dataset(demo_dir).texts_by_path()
    caps = [next(v for k, v in own.items() if k.endswith(p.name)) for p in paths]
    queries = [w for w, _ in word_queries(caps)][:12] + [keywords(c[0]) for c in caps[:6]]
    pooled = rt.text_encoder.encode(queries, normalize=False).pooled
    got = shipped_top(rt.embedder, rt.query.logits, rt.config.rerank_weight, rt.photo_vectors(feats), pooled, 32,
                      top=5)
    shown = [[str(h.path) for h in s.text(q, k=5).hits] for q in queries]
    assert [[str(paths[i]) for i in row] for row in got] == shown
    assert len({tuple(r) for r in got}) > 3  # the queries do not all rank alike


def test_the_benchmark_measures_agree_with_the_recall_benchmarks(demo_dir, tmp_path):
    """Whole captions through the short-query measure give closed_gallery_recall's shipped
    ranking to the digit, and the folds' ranks (keyword_ranks) give the same recall as the
    ranked lists (short_query_scores), with and without photos around the fold's own."""
    from types import SimpleNamespace

    from retrieval.encoders.image_encoder import load_image_encoder
    from retrieval.encoders.text_encoder import load_text_encoder
    from retrieval.evaluation.closed import SHIPPED, closed_gallery_recall
    from retrieval.evaluation.openworld import recall_at
    from retrieval.evaluation.short_queries import keyword_ranks, short_query_scores
    from retrieval.model.checkpoint import load_checkpoint
    from retrieval.model.memory import load_memory
    from retrieval.training.features import Photos, dataset_features

    ck = load_checkpoint(None)
    te = load_text_encoder(tops=ck.tops.get("text"))
    ie = load_image_encoder(image_size=ck.config.image_size, tops=ck.tops.get("image"))
    ds = load_dataset(demo_dir)
    f = dataset_features(ds, ie, te, tmp_path, progress=False)
    texts = [c.text for c in ds.captions]
    assert len(texts) == len(f.text) and (f.caption_image >= 0).all()
    memory = load_memory(te, progress=False)
    model = SimpleNamespace(config=ck.config, result=SimpleNamespace(space=ck.space), reranker=ck.reranker,
                            bank=ck.bank.numpy())
    encode = lambda t: te.encode(t, normalize=False).pooled  # noqa: E731
    got = short_query_scores(model, memory, f, texts, encode)
    assert got["whole captions"] == closed_gallery_recall(model, memory, f)["t2i"][SHIPPED]
    assert got["first 3 content words"]["r10"] < got["whole captions"]["r10"]  # words lost say less
    assert got["one word"]["p1"] > got["one word, random photo"]  # a word finds photos about it
    alone = keyword_ranks(model, memory, f, Photos.of(f).take(slice(0, 0)), texts, encode)
    for n in (2, 3):
        ranks = alone[f"first {n} content words, shipped ranking"]
        assert recall_at(ranks["small"]) == got[f"first {n} content words"]
        np.testing.assert_array_equal(ranks["open"], ranks["small"])
    crowd = keyword_ranks(model, memory, f.subset(np.arange(24)), Photos.of(f).take(np.arange(24, 48)),
                          [t for t, p in zip(texts, f.caption_image) if p < 24], encode)
    ranks = crowd["first 3 content words, shipped ranking"]
    assert (ranks["open"] >= ranks["small"]).all() and (ranks["open"] > ranks["small"]).any()
