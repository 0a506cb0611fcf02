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
    got = shipped_top(rt.embedder, rt.query.logits, rt.config.rerank_weight, feats, pooled, 32, top=5)
    shown = [[str(h.path) for h in s.text(q, k=5).hits] for q in queries]
    assert [[str(paths[i]) for i in row] for row in got] == shown
    assert len({tuple(r) for r in got}) > 3  # the queries do not all rank alike
