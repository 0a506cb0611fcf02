"""ONNX Runtime runs the encoders everywhere a user waits (index, search, similar, describe,
serve): it must give torch's vectors (cosine >= 0.9999) on real photos and captions, share the
library fingerprint only because it does, and rebuild or refuse its cached graphs clearly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from indexer.run import index_paths
from retrieval.encoders.image_encoder import load_image_encoder, run_size
from retrieval.encoders.onnx_engine import graph_path
from retrieval.encoders.text_encoder import load_text_encoder
from retrieval.errors import WeightsError
from retrieval.model.runtime import Runtime
from retrieval.query.search import open_searcher

FAITHFUL = 0.9999


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


@pytest.fixture(scope="module")
def engines():
    """The shipped model's encoders (Lite0 at its run size, MiniLM) on each engine."""
    size = run_size("efficientnet-lite0")
    return {e: (load_image_encoder(image_size=size, engine=e), load_text_encoder(engine=e)) for e in ("torch", "onnx")}


def test_the_image_graph_gives_torchs_outputs_on_real_photos(engines, demo_photos):
    ie_torch, ie_onnx = engines["torch"][0], engines["onnx"][0]
    pixels = [ie_torch.load(p) for p in demo_photos[:24]]
    want = ie_torch.encode(pixels, normalize=False)
    got = ie_onnx.encode(pixels, batch_size=5, normalize=False)  # a short last batch too
    for name in ("pooled", "logits", "cells", "mid"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.shape == b.shape, name
        assert cosines(a, b).min() >= FAITHFUL, name
    assert (got.logits.argmax(1) == want.logits.argmax(1)).all()
    normed = ie_onnx.encode(pixels[:3]).pooled
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0, atol=1e-5)
    assert ie_onnx.encode([]).pooled.shape == (0, 1280)


def test_the_text_graph_gives_torchs_vectors_on_real_captions(engines, demo_dir):
    te_torch, te_onnx = engines["torch"][1], engines["onnx"][1]
    lines = (demo_dir / "captions.jsonl").read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["caption"] for line in lines] + ["word " * 300, "ünïcödé café", "?"]
    want = te_torch.encode(texts, normalize=False)
    got = te_onnx.encode(texts, batch_size=64, normalize=False)  # padded batches of mixed lengths
    assert cosines(got.pooled, want.pooled).min() >= FAITHFUL
    assert got.truncated.tolist() == want.truncated.tolist() and got.truncated.sum() == 1
    alone = te_onnx.encode([texts[5]], normalize=False).pooled[0]  # a query on its own: no padding
    assert cosines(alone[None], want.pooled[5:6])[0] >= FAITHFUL


def test_either_engine_searches_the_others_library_with_the_same_results(tmp_path, demo_photos):
    """Same fingerprint because the vectors are equal within float rounding: a library indexed
    on torch is searched on ONNX Runtime (and back) with the same ranking."""
    on = {e: Runtime(engine=e, image_precision="float32") for e in ("torch", "onnx")}
    assert on["torch"].fingerprint == on["onnx"].fingerprint
    index_paths(demo_photos[:16], tmp_path / "lib", runtime=on["torch"], processes=0)
    ranked = {}
    for engine, rt in on.items():
        s = open_searcher(tmp_path / "lib", rt)
        ranked[engine] = [(h.path, round(h.score, 3)) for q in ("two zebras grazing", "a plate of food")
                          for h in s.text(q, k=5).hits]
    assert ranked["torch"] == ranked["onnx"]
    pixels = [on["onnx"].image_encoder.load(p) for p in demo_photos[:6]]
    vec = {e: rt.index_features(rt.image_encoder.encode(pixels, normalize=False))[1] for e, rt in on.items()}
    assert cosines(vec["onnx"], vec["torch"]).min() >= FAITHFUL


def test_a_damaged_graph_is_exported_again(tmp_path, monkeypatch, demo_photos):
    monkeypatch.setenv("FUSION_CACHE", str(tmp_path / "cache" / "features"))
    te = load_text_encoder(engine="onnx")
    path = te.graph.path
    assert path.parent == tmp_path / "cache" / "onnx" and not path.exists()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an onnx graph, half written")
    pooled = te.encode(["a dog on a beach"]).pooled
    assert path.stat().st_size > 80_000_000  # the whole MiniLM graph, exported again
    want = load_text_encoder().encode(["a dog on a beach"]).pooled
    assert cosines(pooled, want)[0] >= FAITHFUL


def test_an_unwritable_cache_is_a_one_line_error(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("FUSION_CACHE", str(blocker / "features"))
    ie = load_image_encoder(engine="onnx")
    with pytest.raises(WeightsError, match="cannot write the ONNX graph.*FUSION_CACHE") as err:
        ie.encode([np.zeros((224, 224, 3), np.uint8)])
    assert "\n" not in str(err.value)


def test_other_weights_or_sizes_get_their_own_graph(tmp_path):
    from retrieval.encoders.networks import weights_file

    shipped = load_image_encoder(engine="onnx")
    copy = tmp_path / "lite0.pth"
    copy.write_bytes(Path(weights_file("efficientnet-lite0", None)).read_bytes())
    paths = {shipped.graph.path, load_image_encoder(image_size=256, engine="onnx").graph.path,
             load_image_encoder(weights=copy, engine="onnx").graph.path,
             load_image_encoder(fold=False, engine="onnx").graph.path}
    assert len(paths) == 4
    assert graph_path("x", "same") == graph_path("x", "same") != graph_path("x", "other")


def test_an_export_sweeps_the_stale_graphs_of_its_network(tmp_path, monkeypatch):
    """A reinstalled weights package (same path, another size or time) or a removed weights
    file leaves a graph nothing will load again: the next export of that network removes it."""
    monkeypatch.setenv("FUSION_CACHE", str(tmp_path / "features"))
    cache = tmp_path / "onnx"
    cache.mkdir()
    other_weights = tmp_path / "mine.pth"
    other_weights.write_bytes(b"weights")
    st = other_weights.stat()

    def graph(name, source=None):
        path = cache / f"{name}-{os.urandom(8).hex()}.onnx"
        path.write_bytes(b"graph")
        if source is not None:
            path.with_suffix(".source").write_text(json.dumps(source))
        return path

    mine = {"path": str(other_weights.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    kept = [graph("efficientnet-lite0", mine),  # other weights, still there as recorded
            graph("all-MiniLM-L6-v2"),  # another network
            graph("efficientnet-lite0-x")]  # not one of ours: another name
    stale = [graph("efficientnet-lite0"),  # made before graphs recorded their weights
             graph("efficientnet-lite0", {**mine, "mtime_ns": st.st_mtime_ns + 1}),  # weights replaced
             graph("efficientnet-lite0", {**mine, "path": str(tmp_path / "gone.pth")})]  # weights removed
    ie = load_image_encoder(engine="onnx")
    ie.warm()
    assert ie.graph.path.is_file() and ie.graph.path.with_suffix(".source").is_file()
    assert all(p.is_file() for p in kept) and not any(p.exists() for p in stale)
    assert not any(p.with_suffix(".source").exists() for p in stale)


def test_export_onnx_builds_and_checks_the_graphs(tmp_path, demo_photos):
    env = {**os.environ, "FUSION_CACHE": str(tmp_path / "features")}
    run = subprocess.run([sys.executable, "-m", "retrieval.cli", "export-onnx", "--json", "--check",
                          str(demo_photos[0]), "--check", str(demo_photos[1])],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["passed"] and min(report["min_cosine"].values()) >= FAITHFUL
    for key in ("image_graph", "text_graph"):
        assert Path(report[key]).parent == tmp_path / "onnx" and Path(report[key]).is_file()


def test_the_engine_is_chosen_by_fusion_engine(monkeypatch):
    monkeypatch.setenv("FUSION_ENGINE", "torch")
    assert Runtime().engine == "torch" and Runtime().text_encoder.engine == "torch"
    monkeypatch.delenv("FUSION_ENGINE")
    assert Runtime().engine == "onnx" and Runtime().image_encoder.engine == "onnx"
    monkeypatch.setenv("FUSION_ENGINE", "tensorrt")
    with pytest.raises(WeightsError, match="FUSION_ENGINE='tensorrt': use one of onnx, torch"):
        Runtime()


def test_a_preloaded_session_is_taken_over_once(engines):
    """A cold search starts loading MiniLM's session in a thread; the encoder then uses that
    session instead of loading a second one, and gives the same vectors."""
    from retrieval.encoders import onnx_engine

    te = load_text_encoder(engine="onnx")
    te.graph.ensure()
    te.preload()
    thread, box = onnx_engine._preloads[(str(te.graph.path), None)]
    thread.join()
    got = te.encode(["a dog on a beach"], normalize=False).pooled
    assert te.graph.session is box[0] and (str(te.graph.path), None) not in onnx_engine._preloads
    want = engines["torch"][1].encode(["a dog on a beach"], normalize=False).pooled
    assert cosines(got, want)[0] >= FAITHFUL
    onnx_engine.preload(te.graph.path.with_name("missing.onnx"))  # no graph yet: nothing starts
    assert not any("missing" in k[0] for k in onnx_engine._preloads)
