"""Tuned encoder tops (retrieval/encoders/tops.py, fusion train --tune-tops): a checkpoint's new
weights for Lite0's last block and head and MiniLM's top layer reach every engine, change every
cache key, and are tuned float16-exact, as the checkpoint stores them."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from retrieval.cli import main
from retrieval.encoders.image_encoder import load_image_encoder
from retrieval.encoders.text_encoder import load_text_encoder
from retrieval.encoders.tops import digest
from retrieval.errors import WeightsError
from retrieval.model.checkpoint import load_checkpoint, save_checkpoint
from retrieval.model.runtime import Runtime
from retrieval.training.loop import TrainConfig
from tests.test_onnx import FAITHFUL, cosines

CAPTIONS = ["two zebras grazing in a field", "a plate of food on a table", "a man riding a wave on a surfboard"]


def nudged(module, prefix: str, scale: float, seed: int = 0) -> dict:
    """Tops that differ from `module`'s pretrained weights by seeded noise, float16-exact."""
    g = torch.Generator().manual_seed(seed)
    return {prefix + k: (v + scale * v.std() * torch.randn(v.shape, generator=g)).half().float().numpy()
            for k, v in module.state_dict().items() if v.is_floating_point()}


@pytest.fixture(scope="module")
def tops():
    ie, te = load_image_encoder(image_size=256), load_text_encoder()
    n = ie.network.net
    image = {**nudged(n._blocks[-1], "_blocks.15.", 0.3), **nudged(n._conv_head, "_conv_head.", 0.3, 1)}
    return {"image": image, "text": nudged(te.network.layers[-1], "layers.5.", 0.3, 2)}


def test_tops_change_the_vectors_and_every_cache_key(tops, demo_photos):
    plain = load_image_encoder(image_size=256)
    tuned = load_image_encoder(image_size=256, tops=tops["image"])
    pixels = [plain.load(p) for p in demo_photos[:6]]
    a, b = plain.encode(pixels, normalize=False), tuned.encode(pixels, normalize=False)
    assert cosines(a.pooled, b.pooled).max() < 0.999  # the head moved the pooled vector
    np.testing.assert_array_equal(a.mid, b.mid)  # the last block's input is untouched
    assert tuned.feature_id == f"{plain.feature_id}+tops-{digest(tops['image'])}"
    assert tuned.float_graph.path != plain.float_graph.path
    te_plain, te_tuned = load_text_encoder(), load_text_encoder(tops=tops["text"])
    assert cosines(te_plain.encode(CAPTIONS).pooled, te_tuned.encode(CAPTIONS).pooled).max() < 0.999
    assert te_tuned.feature_id == f"all-MiniLM-L6-v2+tops-{digest(tops['text'])}" and te_plain.feature_id == "all-MiniLM-L6-v2"
    assert te_tuned.graph.path != te_plain.graph.path


def test_onnx_runtime_runs_the_tuned_tops_as_torch_does(tops, demo_photos):
    ie = {e: load_image_encoder(image_size=256, engine=e, tops=tops["image"]) for e in ("torch", "onnx")}
    pixels = [ie["torch"].load(p) for p in demo_photos[:8]]
    want, got = (ie[e].encode(pixels, normalize=False) for e in ("torch", "onnx"))
    for name in ("pooled", "logits", "cells", "mid"):
        assert cosines(getattr(got, name), getattr(want, name)).min() >= FAITHFUL, name
    te = {e: load_text_encoder(engine=e, tops=tops["text"]) for e in ("torch", "onnx")}
    assert cosines(te["onnx"].encode(CAPTIONS).pooled, te["torch"].encode(CAPTIONS).pooled).min() >= FAITHFUL


def test_a_checkpoint_carries_its_tops_to_the_encoders_a_runtime_loads(tops, tmp_path):
    from dataclasses import replace

    ck = load_checkpoint()
    out = tmp_path / "tuned.safetensors"
    cfg = replace(ck.config, image_tops=digest(tops["image"]), text_tops=digest(tops["text"]))
    save_checkpoint(out, cfg, ck.space, ck.heads, ck.alphas, ck.record, ck.reranker, ck.bank, tops)
    rt = Runtime(out, image_precision="float32")
    assert rt.image_encoder.feature_id.endswith(f"+tops-{cfg.image_tops}")
    assert rt.text_encoder.feature_id.endswith(f"+tops-{cfg.text_tops}")
    for side in ("image", "text"):
        assert set(rt.tops[side]) == set(tops[side])
        for k, v in tops[side].items():
            np.testing.assert_array_equal(rt.tops[side][k], v)  # float16 storage loses nothing
    assert load_checkpoint(out).tops["text"].keys() == tops["text"].keys()
    assert rt.fingerprint != Runtime(image_precision="float32").fingerprint


def test_tops_that_do_not_fit_the_network_are_one_line(tops):
    wrong = {"_conv_head.weight": np.zeros((3, 3), np.float32)}
    with pytest.raises(WeightsError, match=r"tuned image-network weight _conv_head.weight \(3, 3\) does not fit"):
        _ = load_image_encoder(image_size=256, tops=wrong).network
    with pytest.raises(WeightsError, match="folded EfficientNet-Lite"):
        load_image_encoder(image_size=256, tops=tops["image"], fold=False)


def test_tuning_the_tops_moves_them_and_gives_float16_exact_weights(demo_dir, tmp_path):
    from retrieval.training.trainer import tuned_encoders

    ie, te = load_image_encoder(image_size=256), load_text_encoder()
    before = {k: v.clone() for k, v in ie.network.net._conv_head.state_dict().items()}
    tc = TrainConfig(tune_tops=str(demo_dir), tops_epochs=3, tops_mix=0.5)
    held = {p.split("/")[-1] for p in sorted(json.loads(line)["image"] for line in
                                               (demo_dir / "captions.jsonl").read_text().splitlines())[:25]}
    ie2, te2, tops = tuned_encoders(ie, te, demo_dir, held, tc, tmp_path / "cache")
    assert set(tops) == {"image", "text"} and ie2.tops is tops["image"] and te2.tops is tops["text"]
    assert any(k.startswith("_blocks.15.") for k in tops["image"]) and "_conv_head.weight" in tops["image"]
    assert all(k.startswith("layers.5.") for k in tops["text"])
    w = tops["image"]["_conv_head.weight"]
    np.testing.assert_array_equal(w, w.astype(np.float16).astype(np.float32))
    assert (w != before["weight"].half().float().numpy()).mean() > 0.5  # tuning moved most weights
    torch.testing.assert_close(ie.network.net._conv_head.weight, before["weight"])  # the pretrained one is kept


def test_tuning_two_blocks_deep_reaches_the_encoders_fusion_train_uses(demo_dir, tmp_path, demo_photos):
    """--tops-depth 2: Lite0's blocks 14 and 15 and MiniLM's layers 4 and 5 are tuned and
    installed, so the mid-level features (block 15's input) move too, where depth 1 keeps them
    (test_tops_change_the_vectors_and_every_cache_key)."""
    from retrieval.training.trainer import tuned_encoders

    ie, te = load_image_encoder(image_size=256), load_text_encoder()
    tc = TrainConfig(tune_tops=str(demo_dir), tops_epochs=1, tops_mix=0.5, tops_depth=2)
    ie2, te2, tops = tuned_encoders(ie, te, demo_dir, set(), tc, tmp_path / "cache")
    assert {k.split(".")[1] for k in tops["image"] if k.startswith("_blocks.")} == {"14", "15"}
    assert {k.split(".")[1] for k in tops["text"]} == {"4", "5"}
    pixels = [ie.load(p) for p in demo_photos[:4]]
    # one small step moves them little, but depth 1 leaves the mid-level features bit-identical
    moved = np.abs(ie2.encode(pixels, normalize=False).mid - ie.encode(pixels, normalize=False).mid)
    assert moved.max() > 1e-4, moved.max()
    assert np.abs(te2.encode(CAPTIONS).pooled - te.encode(CAPTIONS).pooled).max() > 1e-4


def test_each_encoder_can_be_tuned_to_its_own_depth(demo_dir, tmp_path):
    """depth (2, 1): Lite0's blocks 14 and 15 with MiniLM's layer 5 alone, each side from the
    cache of its own depth (the maps entering block 14, the states entering layer 5)."""
    from retrieval.data.datasets import load_dataset
    from retrieval.training.block_inputs import block_inputs
    from retrieval.training.tops import tune

    ie, te, ds = load_image_encoder(image_size=256), load_text_encoder(), load_dataset(demo_dir)
    maps, text = block_inputs(ds, ie, te, tmp_path / "cache", (2, 1))
    maps1, text1 = block_inputs(ds, ie, te, tmp_path / "cache", 1)
    maps2, text2 = block_inputs(ds, ie, te, tmp_path / "cache", 2)
    np.testing.assert_array_equal(maps, maps2)
    np.testing.assert_array_equal(text["states"], text1["states"])
    assert maps.shape == maps1.shape and not np.array_equal(maps, maps1)  # block 14's input, not 15's
    assert not np.array_equal(text1["states"], text2["states"])
    caps_of = ds.captions_of()
    photos = np.array([i for i, c in enumerate(caps_of) if c], np.int64)
    _, tops = tune(ie, te, maps, text, caps_of, photos, 1, 0.5, depth=(2, 1))
    assert {k.split(".")[1] for k in tops["image"] if k.startswith("_blocks.")} == {"14", "15"}
    assert {k.split(".")[1] for k in tops["text"]} == {"5"}


def test_train_refuses_to_tune_the_tops_on_the_validation_folder(demo_dir, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(demo_dir, data)
    r = CliRunner().invoke(main, ["train", "--data", str(data), "--tune-tops", str(data), "--out",
                                  str(tmp_path / "m.safetensors"), "--cache", str(tmp_path / "cache")])
    assert r.exit_code == 1 and "holds the validation photos" in r.output, r.output
    assert not (tmp_path / "m.safetensors").exists()


def test_a_cold_search_preloads_the_graph_of_the_shipped_models_text_tops():
    """`fusion search` starts loading MiniLM before it reads the checkpoint: it must start on the
    graph with the shipped model's tuned top layer, the one the search then runs."""
    from retrieval.encoders import onnx_engine
    from retrieval.encoders.text_encoder import preload_text_model
    from retrieval.model.query_side import shipped_text_tops

    rt = Runtime()
    _ = rt.text_encoder.graph.ensure()  # exported on this machine, as after any first index
    tops = shipped_text_tops()
    assert tops and tops == rt.config.text_tops
    preload_text_model(tops)
    assert (str(rt.text_encoder.graph.path), rt.text_encoder.threads) in onnx_engine._preloads
    assert rt.text_encoder.graph.session is not None  # the search takes the preloaded session over
    assert (str(rt.text_encoder.graph.path), rt.text_encoder.threads) not in onnx_engine._preloads


TUNE = """
import sys
from pathlib import Path
import numpy as np
from retrieval.data.datasets import load_dataset
from retrieval.encoders.image_encoder import load_image_encoder
from retrieval.encoders.text_encoder import load_text_encoder
from retrieval.encoders.tops import digest
from retrieval.training.block_inputs import block_inputs
from retrieval.training.tops import tune
ds = load_dataset(sys.argv[1])
ie, te = load_image_encoder(image_size=256), load_text_encoder()
maps, text = block_inputs(ds, ie, te, Path(sys.argv[2]))
caps_of = ds.captions_of()
photos = np.tile([i for i in range(len(ds.images)) if caps_of[i]], 8)  # batches of 128, as fusion train's
_, tops = tune(ie, te, maps, text, caps_of, photos, 1, 0.5, 0)
print(digest(tops["image"]), digest(tops["text"]))
"""


def test_tuned_tops_are_the_same_whether_the_block_inputs_were_cached_or_not(demo_dir, tmp_path):
    """fusion train on a fresh machine makes the block-input cache, then tunes; on a machine that
    has it, only tunes. Both must give the same tops (the checkpoint's hash depends on them): the
    cache is made in a child process, since running the image network in this one first changed
    how the tuning rounds (tops with another digest)."""
    import subprocess
    import sys

    run = lambda: subprocess.run([sys.executable, "-c", TUNE, str(demo_dir), str(tmp_path / "cache")],  # noqa: E731
                                 check=True, capture_output=True, text=True).stdout.split()
    fresh = run()
    assert len(list((tmp_path / "cache" / "finetune").glob("*.npz"))) == 2
    assert run() == fresh and len(fresh) == 2


@pytest.mark.parametrize("depth", [1, 2])
def test_the_tuned_tops_start_from_the_encoders_own_features_at_any_depth(demo_dir, depth):
    """The lab and fusion train tune the encoders' `depth` last blocks / layers over their cached
    inputs: before tuning, those tops must give what the whole encoders give (pooled map, the
    last block's input, MiniLM's sentence vector), else tuning starts from another network."""
    from retrieval.data.datasets import load_dataset
    from retrieval.training.block_inputs import caption_states, photo_maps
    from retrieval.training.tops import ImageTop, TextTop, text_batch

    ds = load_dataset(demo_dir)
    ds.images = ds.images[:6]  # six photos are enough to compare
    ie, te = load_image_encoder(image_size=256), load_text_encoder()
    maps = photo_maps(ds, ie, depth)["maps"]
    with torch.no_grad():
        fmap, mid = ImageTop(ie, 8, False, depth).eval().features(torch.from_numpy(maps[:, 0].astype(np.float32)))
    want = ie.encode([ie.load(ds.image_path(i)) for i in range(6)], normalize=False)
    assert cosines(fmap.mean((2, 3)).numpy(), want.pooled).min() > 0.999
    assert cosines(mid.mean((2, 3)).numpy(), want.mid).min() > 0.999
    ds.captions = ds.captions[:5]
    text = caption_states(ds, te, depth)
    with torch.no_grad():
        got = TextTop(te, 8, False, depth).eval().features(*text_batch(text["states"], text["offsets"], range(5)))
    assert cosines(got.numpy(), te.encode([c.text for c in ds.captions]).pooled).min() > 0.999
