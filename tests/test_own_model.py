"""Your own model, end to end through the CLI: train on a small captioned set, index with
--model, and every later command uses that model without being told; broken model files get
one line and exit 1."""

import json
import shutil

import pytest
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.numpy import save_file

from retrieval.cli import main
from retrieval.model.runtime import Runtime
from retrieval.query.search import open_searcher
from tests.test_cli_model import small_dataset

QUERY = "a plate of food on a table"


@pytest.fixture(scope="module")
def own_model(demo_dir, tmp_path_factory):
    """A checkpoint trained by `fusion train` on 20 demo photos."""
    tmp = tmp_path_factory.mktemp("own")
    data = small_dataset(demo_dir, tmp / "small")
    out = tmp / "mine.safetensors"
    r = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(out), "--val-photos", "6",
                                  "--cache", str(tmp / "cache")])
    assert r.exit_code == 0, r.output
    return out


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def search_json(db, *extra):
    r = run("search", QUERY, "-k", 8, "--json", "--db", db, *extra)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_index_with_own_model_then_every_command_uses_it(own_model, demo_dir, tmp_path):
    mine, shipped = tmp_path / "mine", tmp_path / "shipped"
    r = run("index", demo_dir / "images", "--db", mine, "--model", own_model)
    assert r.exit_code == 0, r.output
    assert run("index", demo_dir / "images", "--db", shipped).exit_code == 0
    hits = search_json(mine)  # no --model: the library's own
    expected = open_searcher(mine, Runtime(own_model.resolve())).text(QUERY, 8).hits
    assert [(h["path"], round(h["score"], 5)) for h in hits] == [(h.path, round(h.score, 5)) for h in expected]
    default = search_json(shipped)
    assert [round(h["itc"], 4) for h in hits] != [round(h["itc"], 4) for h in default]
    info = run("info", "--json", "--db", mine)
    assert info.exit_code == 0 and json.loads(info.stdout)["model_file"] == str(own_model.resolve())
    assert json.loads(run("info", "--json", "--db", shipped).stdout)["model_file"] == "the model shipped with fusion"
    photo = sorted((demo_dir / "images").glob("*.jpg"))[0]
    for cmd in (["similar", photo], ["describe", photo], ["duplicates"]):
        r = run(*cmd, "--json", "--db", mine)
        assert r.exit_code == 0, (cmd, r.output)
    # re-syncing without --model keeps the library's model; another model needs --rebuild
    assert run("index", demo_dir / "images", "--db", mine).exit_code == 0
    r = run("index", demo_dir / "images", "--db", shipped, "--model", own_model)
    assert r.exit_code == 1 and "--rebuild" in r.output and len(r.output.strip().splitlines()) == 1
    r = run("index", demo_dir / "images", "--db", shipped, "--model", own_model, "--rebuild")
    assert r.exit_code == 0, r.output
    assert [h["path"] for h in search_json(shipped)] == [h["path"] for h in hits]


def test_a_library_whose_model_file_is_gone_says_how_to_fix_it(own_model, demo_dir, tmp_path):
    model = tmp_path / "moved.safetensors"
    shutil.copy(own_model, model)
    assert run("index", demo_dir / "images", "--db", tmp_path / "lib", "--model", model).exit_code == 0
    model.unlink()
    r = run("search", QUERY, "--db", tmp_path / "lib")
    assert r.exit_code == 1 and str(model) in r.output and "--rebuild --model" in r.output


def rewrite(src, dest, **meta_changes):
    """A copy of checkpoint `src` with its metadata changed (tensors, and so their hash, kept)."""
    with safe_open(str(src), framework="numpy") as f:
        meta = json.loads(f.metadata()["fusion"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for key, value in meta_changes.items():
        if key == "image_encoder":
            meta["config"]["image_encoder"] = value
        else:
            meta[key] = value
    save_file(tensors, str(dest), metadata={"fusion": json.dumps(meta)})
    return dest


@pytest.mark.parametrize("case", ["damaged", "format", "network", "missing"])
def test_a_broken_model_file_is_one_line_and_exit_1(own_model, demo_dir, tmp_path, case):
    bad = tmp_path / "bad.safetensors"
    if case == "damaged":
        data = own_model.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
        words = ["not a readable checkpoint"]
    elif case == "format":
        rewrite(own_model, bad, format="fusion-checkpoint/9")
        words = ["fusion-checkpoint/9", "re-train"]
    elif case == "network":
        rewrite(own_model, bad, image_encoder="resnet50")
        words = ["resnet50"]
    else:
        words = ["no such model file"]
    r = run("index", demo_dir / "images", "--db", tmp_path / "lib", "--model", bad)
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and str(bad) in lines[0]
    assert all(w in r.output for w in words), r.output
    assert not (tmp_path / "lib" / "library.sqlite").exists()  # refused before anything was written


@pytest.mark.slow
def test_the_first_index_on_a_machine_says_it_encodes_the_caption_memory(demo_photos, tmp_path, monkeypatch):
    """Once per machine (here: per empty cache folder), before the photos' progress and
    outside their photos/s; the second run, cached, says nothing of it."""
    monkeypatch.setenv("FUSION_CACHE", str(tmp_path / "cache" / "features"))
    first = run("index", *demo_photos[:2], "--db", tmp_path / "lib")
    assert first.exit_code == 0, first.output
    assert first.output.count("encoding the caption memory") == 1
    assert (tmp_path / "cache" / "memory").is_dir()
    again = run("index", *demo_photos[2:4], "--db", tmp_path / "lib")
    assert again.exit_code == 0 and "caption memory" not in again.output
