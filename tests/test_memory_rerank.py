"""Caption memory, the evidence reranker and the open-world maths, on real encoders and the
real shipped corpus; tiny random models only where a shape or an identity is the point."""

import json

import numpy as np
import pytest
import torch

from retrieval.evaluation.openworld import calibration, projected_recall, recall_at
from retrieval.training.recall import ranks_of
from retrieval.model.memory import corpus_path, load_memory, read_corpus
from retrieval.model.evidence import KEY_DIMS
from retrieval.model.reranker import EVIDENCE, LABELS, MEMORY_SIZE, PhotoEvidence, Reranker, evidence
from retrieval.model.query_side import shares
from retrieval.training.rerank import Candidates, fit_reranker, fit_share_temperature, nonsense_queries, reranked_ranks


def test_memory_holds_no_caption_of_the_demo_photos(demo_dir):
    # the demo (and every COCO photo we evaluate) must never recall its own captions
    # (by COCO ids: a few generic sentences, "A herd of cattle grazing on a lush green field.",
    # were written for other photos too, and those may stay)
    rows = [line.split("\t") for line in open(corpus_path(), encoding="utf-8")]
    photos, captions = {int(r[0]) for r in rows}, {int(r[1]) for r in rows}
    demo = [json.loads(line) for line in open(demo_dir / "captions.jsonl", encoding="utf-8")]
    assert len(rows) == len(read_corpus()) > 20_000 and len(demo) == 240
    assert not {d["coco_id"] for d in demo} & photos
    assert not {d["caption_id"] for d in demo} & captions


@pytest.fixture(scope="module")
def memory(text_encoder):
    return load_memory(text_encoder, progress=False)


def test_memory_vectors_are_cached_and_normalised(memory, text_encoder):
    again = load_memory(text_encoder, progress=False)
    np.testing.assert_array_equal(memory.vectors, again.vectors)
    assert memory.vectors.shape == (len(memory.texts), 384)
    np.testing.assert_allclose(np.linalg.norm(memory.vectors, axis=1), 1, atol=2e-3)
    # a caption's own vector recalls that caption first
    probe = text_encoder.encode(memory.texts[:3], normalize=True).pooled
    ids, w = memory.recall(probe, memory.vectors, MEMORY_SIZE, 0.05)
    assert list(ids[:, 0]) == [0, 1, 2]
    np.testing.assert_allclose(w.sum(1), 1, atol=1e-5)
    assert (np.diff(w, axis=1) <= 1e-7).all()  # best first
    offset = np.zeros(len(memory.texts), np.float32)
    offset[0] = -1.0  # a per-caption offset (the pseudo-captions' prior) moves caption 0 down
    ids2, _ = memory.recall(probe, memory.vectors, MEMORY_SIZE, 0.05, offset)
    assert ids2[0, 0] != 0 and list(ids2[1:, 0]) == [1, 2]


def test_recalled_captions_describe_the_photo(memory, image_encoder, demo_dir):
    from retrieval.model.runtime import Runtime

    rt = Runtime()
    f = image_encoder.encode([image_encoder.load(demo_dir / "images" / "000000113354.jpg")], normalize=False)
    recalled = [memory.texts[i].lower() for i in rt.photo_vectors(f).evidence.memory_ids[0][:5]]
    assert sum("zebra" in t for t in recalled) >= 3, recalled


def test_evidence_pack_round_trip():
    rng = np.random.default_rng(0)
    ev = PhotoEvidence(rng.integers(0, 23_000, (5, MEMORY_SIZE)).astype(np.int32),
                       rng.random((5, MEMORY_SIZE)).astype(np.float32),
                       rng.integers(0, 1000, (5, LABELS)).astype(np.int32), rng.random((5, LABELS)).astype(np.float32),
                       rng.standard_normal((5, KEY_DIMS)).astype(np.float32) / 16, rng.random(5).astype(np.float32) + 0.5)
    blobs = ev.pack()
    assert all(len(b) == PhotoEvidence.ROW_BYTES <= 4096 for b in blobs)
    back = PhotoEvidence.unpack(blobs)
    np.testing.assert_array_equal(back.memory_ids, ev.memory_ids)
    np.testing.assert_array_equal(back.label_ids, ev.label_ids)
    np.testing.assert_allclose(back.memory_weights, ev.memory_weights, atol=1e-3)
    np.testing.assert_allclose(back.key, ev.key, atol=1e-3)
    np.testing.assert_allclose(back.hub, ev.hub, atol=1e-3)
    # a row written before key and hub (176 bytes) still reads, with zeros for both
    old = PhotoEvidence.unpack([b[:PhotoEvidence.LEGACY_BYTES] for b in blobs])
    assert PhotoEvidence.row_ok(blobs[0][:PhotoEvidence.LEGACY_BYTES]) and not PhotoEvidence.row_ok(blobs[0][:-1])
    np.testing.assert_array_equal(old.memory_ids, ev.memory_ids)
    assert not old.key.any() and not old.hub.any()


def test_lookalike_evidence_picks_the_photo_like_the_query_s_training_photos():
    # two training photos (keys e0, e1) with caption vectors c0, c1; a query matching c1 scores
    # a candidate whose key is e1 above one whose key is e0, and the other way round
    from retrieval.model.evidence import lookalike

    d, p = 4, 3
    photos, captions = np.eye(p, dtype=np.float32)[:2], np.eye(d, dtype=np.float32)[:2]
    keys = np.stack([np.eye(p, dtype=np.float32)[:2]] * 2)  # (Q=2, K=2, p)
    q = np.eye(d, dtype=np.float32)[[1, 0]]
    la = lookalike(q, keys, (photos, captions))
    assert la[0, 1] > la[0, 0] and la[1, 0] > la[1, 1]
    assert not lookalike(q, keys, None).any()


def test_reranker_is_not_separable():
    # the same two photos swap places for two different queries: the reranker reads the text
    rng = np.random.default_rng(1)
    d = 8
    memory = np.eye(d, dtype=np.float32)
    classes = np.eye(d, dtype=np.float32)
    ev = PhotoEvidence(np.array([[[0] * MEMORY_SIZE, [1] * MEMORY_SIZE]] * 2, np.int32),
                       np.full((2, 2, MEMORY_SIZE), 1 / MEMORY_SIZE, np.float32),
                       np.zeros((2, 2, LABELS), np.int32), np.full((2, 2, LABELS), 1 / LABELS, np.float32))
    q = np.stack([memory[0], memory[1]])
    feats = evidence(np.full((2, 2), 0.3, np.float32), q, q, ev, memory, memory, classes)
    assert feats.shape == (2, 2, len(EVIDENCE))
    rr = Reranker()
    with torch.no_grad():
        rr.net[0].weight.copy_(torch.from_numpy(rng.random((1, len(EVIDENCE))).astype(np.float32)))
    logits = rr.logits(feats)
    assert logits[0, 0] > logits[0, 1] and logits[1, 1] > logits[1, 0]


def test_reranker_learns_a_signal_and_reranks_by_it():
    rng = np.random.default_rng(0)
    q, k = 400, 8
    label = np.zeros((q, k), np.float32)
    label[np.arange(q), rng.integers(0, k, q)] = 1
    feats = rng.standard_normal((q, k, len(EVIDENCE))).astype(np.float32)
    feats[..., 2] += 2.5 * label  # one feature carries the answer, itc (feature 0) does not
    c = Candidates(feats, label, np.zeros(q, np.int64), k)
    model = fit_reranker(c, epochs=200)
    before = recall_at(reranked_ranks(c, feats[..., 0]))["r1"]
    after = recall_at(reranked_ranks(c, model.logits(feats)))["r1"]
    assert after > before + 40
    probs = model.probabilities(model.logits(feats))
    assert calibration(probs.ravel(), label.ravel())["ece"] < 0.05


def test_share_temperature_is_recovered_and_shares_follow_the_ranking_score():
    # queries whose photo is drawn from softmax(score / 0.2): the fitted temperature finds 0.2
    rng = np.random.default_rng(1)
    q, k, true_t = 3000, 16, 0.2
    feats = np.zeros((q, k, len(EVIDENCE)), np.float32)
    feats[..., EVIDENCE.index("itc")] = rng.normal(0.3, 0.1, (q, k))
    model = Reranker()
    with torch.no_grad():  # a logit that reads one other feature
        model.net[0].weight.zero_()
        model.net[0].weight[0, 2] = 1.0
    feats[..., 2] = rng.standard_normal((q, k))
    score = feats[..., 0] + 0.03 * model.logits(feats)
    p = shares(feats[..., 0], model.logits(feats), 0.03, true_t)
    assert np.allclose(p, np.exp(score / true_t) / np.exp(score / true_t).sum(1, keepdims=True), atol=1e-6)
    label = np.zeros((q, k), np.float32)
    label[np.arange(q), [rng.choice(k, p=row) for row in p]] = 1
    fitted = fit_share_temperature(model, Candidates(feats, label, np.zeros(q, np.int64), k), 0.03)
    assert abs(fitted - true_t) < 0.02, fitted
    # shares fall with the ranking score; without a temperature they are the logit's softmax
    order = np.argsort(-score, 1)
    assert (np.diff(np.take_along_axis(p, order, 1), axis=1) <= 1e-12).all()
    old = shares(feats[..., 0], model.logits(feats), 0.03, 0.0)
    assert np.allclose(old, np.exp(feats[..., 2]) / np.exp(feats[..., 2]).sum(1, keepdims=True), atol=1e-5)


def test_projection_is_the_identity_at_the_measured_size_and_shrinks_beyond():
    ranks = np.array([0, 0, 1, 3, 12, 40])
    measured = recall_at(ranks)
    same = projected_recall(ranks, gallery=200, size=200)
    assert all(abs(same[k] - measured[k]) < 12 for k in measured)
    bigger = projected_recall(ranks, gallery=200, size=2000)
    assert all(bigger[k] <= same[k] for k in same)


def test_projection_matches_a_real_subsample():
    # rank captions in a random gallery, project a 1/4 subsample up, compare with the whole
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((3000, 800))
    target = rng.integers(0, 800, 3000)
    scores[np.arange(3000), target] += 2.0
    full = recall_at(ranks_of(scores, target))
    keep = np.sort(np.unique(np.concatenate([target, rng.choice(800, 200, replace=False)])))
    sub = scores[:, keep]
    proj = projected_recall(ranks_of(sub, np.searchsorted(keep, target)), len(keep), size=800)
    assert all(abs(proj[k] - full[k]) < 3 for k in full), (proj, full)


def test_calibration_against_brute_force():
    probs = np.array([0.05, 0.05, 0.95, 0.95, 0.55])
    labels = np.array([0, 0, 1, 0, 1])
    c = calibration(probs, labels)
    want = (2 / 5) * 0.05 + (2 / 5) * abs(0.95 - 0.5) + (1 / 5) * abs(0.55 - 1)
    assert c["ece"] == pytest.approx(want, abs=1e-4)


def test_nonsense_queries_are_made_up_and_repeatable():
    a, b = nonsense_queries(50, seed=3), nonsense_queries(50, seed=3)
    assert a == b and len(set(a)) == 50 and all(w.isalpha() for s in a for w in s.split())


def test_evidence_from_recalled_rows_equals_the_full_memory(memory, text_encoder):
    # a search projects only the memory rows its candidates recall; the result must not change
    from retrieval.model.checkpoint import load_checkpoint
    from retrieval.model.embedder import Embedder

    rng = np.random.default_rng(0)
    ev = PhotoEvidence(rng.integers(0, len(memory.texts), (1, 32, MEMORY_SIZE)).astype(np.int32),
                       rng.random((1, 32, MEMORY_SIZE)).astype(np.float32),
                       rng.integers(0, 1000, (1, 32, LABELS)).astype(np.int32), rng.random((1, 32, LABELS)).astype(np.float32))
    emb = Embedder(load_checkpoint().space, memory)
    q_itc, q_sent = emb.texts(text_encoder.encode(["a dog on a beach"], normalize=False).pooled)
    itc = rng.random((1, 32)).astype(np.float32)
    lazy = emb.evidence(itc, q_itc, q_sent, ev)
    assert "corpus_itc" not in emb.__dict__
    emb.corpus_itc  # noqa: B018 (project the whole memory)
    np.testing.assert_allclose(lazy, emb.evidence(itc, q_itc, q_sent, ev), atol=1e-6)
