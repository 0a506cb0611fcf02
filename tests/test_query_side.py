"""A text search runs the query side of the model in numpy, never importing torch: equal to the
torch modules on the shipped checkpoint, and a cold `fusion search` in a fresh process imports
no torch."""

import json
import os
import subprocess
import sys

import numpy as np
import torch

from indexer.run import index_paths
from retrieval.model.checkpoint import load_checkpoint
from retrieval.model.evidence import EVIDENCE, lookalike
from retrieval.encoders.minilm_numpy import gelu
from retrieval.model.query_side import QuerySide
from retrieval.model.runtime import Runtime


def test_query_side_equals_the_torch_checkpoint():
    ck, q = load_checkpoint(), QuerySide.load()
    assert (q.content_hash, q.config) == (ck.content_hash, ck.config)
    pooled = np.random.default_rng(0).normal(size=(5, q.config.text_dim)).astype(np.float32)
    with torch.no_grad():
        want = ck.space.embed_text(torch.from_numpy(pooled)).numpy()
    np.testing.assert_allclose(q.embed_text(pooled), want, atol=1e-6)
    feats = np.random.default_rng(1).normal(size=(3, 32, len(EVIDENCE))).astype(np.float32)
    np.testing.assert_allclose(q.logits(feats), ck.reranker.logits(feats), atol=1e-4)
    np.testing.assert_allclose(q.probabilities(q.logits(feats)), ck.reranker.probabilities(ck.reranker.logits(feats)),
                               atol=1e-5)
    # the look-alike evidence: the numpy side's training photos and caption vectors are the
    # torch space's, so a query scores a candidate's key alike on both sides
    nb = ck.space.neighbours
    np.testing.assert_allclose(q.lookalikes[0], nb.photos, atol=1e-6)
    np.testing.assert_allclose(q.lookalikes[1], nb.captions, atol=1e-6)
    keys = nb.photos[np.random.default_rng(2).integers(0, len(nb.photos), (5, 4))]
    la = lookalike(q.embed_text(pooled), keys, q.lookalikes)
    np.testing.assert_allclose(la, lookalike(want, keys, (nb.photos, nb.captions)), atol=1e-4)
    # a query that reads like training photo j's captions finds j's key above 3 random ones
    rng = np.random.default_rng(3)
    own = np.stack([np.concatenate([[j], rng.integers(0, len(nb.photos), 3)]) for j in range(20)])
    picked = lookalike(q.lookalikes[1][:20], q.lookalikes[0][own], q.lookalikes).argmax(1)
    assert (picked == 0).mean() >= 0.9, picked


def test_gelu_is_the_exact_one():
    x = np.linspace(-8, 8, 2001, dtype=np.float32)
    want = torch.nn.functional.gelu(torch.from_numpy(x).double()).numpy()
    assert np.abs(gelu(x) - want).max() < 1e-6  # Abramowitz-Stegun's bound: |x| * 1e-7 at most
    assert np.abs(gelu(x.astype(np.float64)) - want).max() < 8e-7


def test_a_text_search_imports_no_torch_and_no_sqlalchemy(tmp_path, demo_photos):
    db = tmp_path / "lib"
    index_paths(demo_photos[:6], db, runtime=Runtime())
    code = ("import sys; from retrieval.cli import main\n"
            "try:\n"
            f"    main(['search', 'a zebra', '--db', {str(db)!r}, '--json'])\n"
            "except SystemExit as e:\n"
            "    assert e.code == 0, e.code\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules, 'sqlalchemy' in sys.modules,\n"
            "      file=sys.stderr)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1] == "False False False"
    hits = json.loads(run.stdout)
    assert sorted(h["path"] for h in hits) == sorted(str(p) for p in demo_photos[:6])


def test_the_numpy_photo_side_equals_the_torch_space(demo_photos):
    """Indexing on ONNX Runtime projects photos in numpy (retrieval/model/photo_side.py): the
    same ITC vectors, bridge labels, search vectors and evidence as the torch space, on real
    photos, so both engines write libraries under one fingerprint."""
    on = {e: Runtime(engine=e) for e in ("torch", "onnx")}
    enc = on["torch"].image_encoder
    feats = enc.encode([enc.load(p) for p in demo_photos[:24]], normalize=False)
    torch_side, numpy_side = (on[e].photo_vectors(feats) for e in ("torch", "onnx"))
    assert on["onnx"].embedder._photo_side is not None and on["torch"].embedder._photo_side is None
    np.testing.assert_allclose(numpy_side.itc, torch_side.itc, atol=2e-6)
    np.testing.assert_allclose(numpy_side.search, torch_side.search, atol=2e-6)
    a, b = numpy_side.evidence, torch_side.evidence
    assert np.array_equal(a.label_ids, b.label_ids) and np.array_equal(a.memory_ids, b.memory_ids)
    np.testing.assert_allclose(a.label_weights, b.label_weights, atol=1e-6)
    np.testing.assert_allclose(a.key, b.key, atol=1e-6)
    np.testing.assert_allclose(a.hub, b.hub, atol=1e-5)
    assert len(set(a.label_ids[:, 0])) > 5  # real photos: many different top classes


def test_indexing_on_onnx_runtime_imports_no_torch(tmp_path, demo_photos):
    code = ("import sys; from pathlib import Path; from indexer.run import index_paths\n"
            f"s = index_paths([Path(p) for p in {[str(p) for p in demo_photos[:8]]!r}], Path({str(tmp_path / 'lib')!r}))\n"
            "print(s['added'], 'torch' in sys.modules)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "FUSION_ENGINE": "onnx"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["8", "False"]
