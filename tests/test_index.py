"""The write path on real photos copied from the demo collection, a real SQLite file and real
FAISS indexes: first index, no-op re-run, change, rename, delete, model mismatch."""

import json
import os
import shutil
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner

from indexer.run import index_paths
from retrieval.cli import main
from retrieval.errors import ModelMismatchError
from retrieval.store.library import Library
from retrieval.model.runtime import Runtime


@pytest.fixture(scope="module")
def runtime():
    return Runtime()


@pytest.fixture
def photos(tmp_path, demo_photos):
    root = tmp_path / "photos"
    for n, p in enumerate(demo_photos[:12]):
        folder = root / ("a" if n % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, folder / p.name)
    return root


def state(lib_dir):
    con = sqlite3.connect(lib_dir / "library.sqlite")
    rows = dict(con.execute("select path, id from photos").fetchall())
    feats = sorted(i for (i,) in con.execute("select photo_id from photo_features"))
    con.close()
    return rows, feats


def check_consistent(lib_dir, runtime):
    lib = Library.open(lib_dir, runtime.fingerprint, runtime.dim)
    rows, feats = state(lib_dir)
    assert sorted(rows.values()) == feats == sorted(lib.photos.ids().tolist())
    return rows, lib


def test_first_index_then_noop(photos, tmp_path, runtime):
    db = tmp_path / "lib"
    s = index_paths([photos], db, runtime=runtime)
    assert (s["added"], s["removed"], s["skipped"], s["photos"]) == (12, 0, [], 12)
    rows, lib = check_consistent(db, runtime)
    # the stored vector is the photo's ITC embedding, under its SQLite id
    path = sorted(rows)[0]
    px = runtime.image_encoder.load(path)
    f = runtime.image_encoder.encode([px], normalize=False)
    want = runtime.photo_vectors(f).search[0]
    np.testing.assert_allclose(lib.photos.vectors([rows[path]])[0], want, atol=1e-4)
    again = index_paths([photos], db, runtime=runtime)
    assert (again["added"], again["updated"], again["renamed"], again["removed"], again["unchanged"]) == (0, 0, 0, 0, 12)
    assert again["timing"]["decode_s"] == 0 and again["timing"]["forward_s"] == 0  # nothing was read


def test_change_rename_delete(photos, tmp_path, runtime, demo_photos):
    db = tmp_path / "lib"
    index_paths([photos], db, runtime=runtime)
    before, lib = check_consistent(db, runtime)
    files = sorted(before)
    changed, moved, deleted = files[0], files[1], files[2]
    old_vec = lib.photos.vectors([before[changed]])[0]
    shutil.copy(demo_photos[30], changed)  # new content at the same path
    target = photos / "c" / "moved here.jpg"
    target.parent.mkdir()
    shutil.move(moved, target)
    os.unlink(deleted)
    s = index_paths([photos], db, runtime=runtime)
    assert (s["added"], s["updated"], s["renamed"], s["removed"], s["unchanged"]) == (0, 1, 1, 1, 9)
    after, lib = check_consistent(db, runtime)
    assert after[changed] == before[changed]  # same id, new vector
    assert not np.allclose(lib.photos.vectors([after[changed]])[0], old_vec)
    assert after[str(target)] == before[moved] and moved not in after
    assert deleted not in after and len(after) == 11


def test_dataset_folder_indexes_captions_and_text_only_corpus(tmp_path, demo_dir, runtime):
    db = tmp_path / "lib"
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"caption": c}) for c in ["a red bus", "two zebras"]) + "\n")
    s = index_paths([demo_dir, corpus], db, runtime=runtime)
    assert s["photos"] == 48 and s["captions_added"] == 242
    assert s["skipped"] == []  # a caption file is a corpus, never a skipped photo
    lib = Library.open(db, runtime.fingerprint, runtime.dim)
    assert len(lib.captions) == 242
    con = sqlite3.connect(db / "library.sqlite")
    linked = con.execute("select count(*) from captions c join photos p on p.path = c.image_path").fetchone()[0]
    assert linked == 240
    again = index_paths([demo_dir, corpus], db, runtime=runtime)
    assert again["captions_added"] == 0 and again["unchanged"] == 48


def test_caption_file_alone_exits_zero(tmp_path, demo_dir):
    db = tmp_path / "lib"
    r = CliRunner().invoke(main, ["index", str(demo_dir / "captions.jsonl"), "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert (s["captions_added"], s["photos"], s["skipped"]) == (240, 0, [])


def test_model_mismatch_refused_with_the_fix(photos, tmp_path, runtime):
    db = tmp_path / "lib"
    index_paths([photos], db, runtime=runtime)
    con = sqlite3.connect(db / "library.sqlite")
    con.execute("update meta set value = 'resnet50+all-MiniLM-L6-v2+0123' where key = 'model'")
    con.commit()
    con.close()
    with pytest.raises(ModelMismatchError, match="fusion index --rebuild"):
        Library.open(db, runtime.fingerprint, runtime.dim)
    r = CliRunner().invoke(main, ["index", str(photos), "--db", str(db)])
    assert r.exit_code == 1 and "built with model resnet50" in r.output
    assert state(db)[0]  # nothing lost
    r = CliRunner().invoke(main, ["index", str(photos), "--db", str(db), "--rebuild", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["added"] == 12


def test_cli_json_summary_and_skips(photos, tmp_path):
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    (photos / "notes.txt").write_text("left alone")
    db = tmp_path / "lib"
    r = CliRunner().invoke(main, ["index", str(photos), "--db", str(db), "--json"])
    assert r.exit_code == 3, r.output
    s = json.loads(r.stdout)
    assert {"added", "updated", "renamed", "removed", "skipped"} <= set(s)
    assert s["added"] == 12 and [d["path"].endswith("broken.jpg") for d in s["skipped"]] == [True]
    r = CliRunner().invoke(main, ["info", "--db", str(db), "--json"])
    info = json.loads(r.stdout)
    assert (info["photos"], info["vectors"], info["captions"]) == (12, 12, 0)


def test_info_on_missing_library_and_file_db(tmp_path):
    r = CliRunner().invoke(main, ["info", "--db", str(tmp_path / "none")])
    assert r.exit_code == 1 and "no library here yet" in r.output
    f = tmp_path / "file"
    f.write_text("x")
    r = CliRunner().invoke(main, ["index", str(tmp_path), "--db", str(f)])
    assert r.exit_code == 1 and "is a file, not a library folder" in r.output


def test_index_type_override_and_auto(photos, tmp_path, runtime):
    db = tmp_path / "lib"
    index_paths([photos], db, runtime=runtime, index_type="ivf")
    rows, lib = check_consistent(db, runtime)
    assert lib.photos.kind == "ivf" and lib.info()["index_type"].startswith("IVF")
    # the IVF index finds each photo's own vector first, like the exact one
    con = sqlite3.connect(db / "library.sqlite")
    for pid, blob in con.execute("select photo_id, vector from photo_features"):
        v = np.frombuffer(blob, "<f2").astype(np.float32)[None, :]
        assert lib.photos.search(v, 1)[1][0][0] == pid
    again = index_paths([photos], db, runtime=runtime)  # the choice is remembered
    assert Library.open(db, runtime.fingerprint, runtime.dim).photos.kind == "ivf" and again["unchanged"] == 12
    index_paths([photos], db, runtime=runtime, index_type="auto")  # 12 photos: exact
    assert Library.open(db, runtime.fingerprint, runtime.dim).photos.kind == "flat"


def test_the_exact_index_scans_the_float16_vectors_sqlite_keeps(photos, tmp_path, runtime):
    """The exact index stores float16, as SQLite does: its scores are the inner products of
    SQLite's vectors (to float32 rounding) and its ranking theirs; a library saved with a float32
    IndexFlatIP before is still read, and --rebuild gives it the float16 one."""
    import faiss

    db = tmp_path / "lib"
    index_paths([photos], db, runtime=runtime)
    rows, lib = check_consistent(db, runtime)
    assert lib.info()["index_type"] == "exact inner product (float16)"
    con = sqlite3.connect(db / "library.sqlite")
    ids, vecs = zip(*[(i, np.frombuffer(b, "<f2").astype(np.float32)) for i, b in
                      con.execute("select photo_id, vector from photo_features order by photo_id")])
    con.close()
    vecs = np.stack(vecs)
    queries = vecs[:4] + np.random.default_rng(0).normal(0, 0.05, vecs[:4].shape).astype(np.float32)
    scores, found = lib.photos.search(queries, 5)
    want = queries @ vecs.T
    for q in range(4):
        order = np.argsort(-want[q], kind="stable")[:5]
        assert found[q].tolist() == [ids[j] for j in order]
        np.testing.assert_allclose(scores[q], want[q][order], atol=1e-5)
    old = faiss.IndexIDMap2(faiss.IndexFlatIP(runtime.dim))  # what libraries were saved with before
    old.add_with_ids(vecs, np.asarray(ids, np.int64))
    faiss.write_index(old, str(db / "photos.faiss"))
    reopened = Library.open(db, runtime.fingerprint, runtime.dim)
    assert reopened.info()["index_type"] == "exact inner product (Flat)"
    assert reopened.photos.search(queries, 5)[1].tolist() == found.tolist()
    index_paths([photos], db, runtime=runtime, rebuild_first=True)
    assert Library.open(db, runtime.fingerprint, runtime.dim).info()["index_type"] == "exact inner product (float16)"


def test_ivf_below_200k_keeps_the_exact_indexs_float16_scores(photos, tmp_path, runtime):
    """An IVF index below SQ8_FROM photos holds the float16 vectors themselves (no residual): a
    photo its probed lists hold scores exactly as in the exact index, so with every list probed
    it answers as the exact index does; 8-bit codes (from 200,000 photos) only approximately.
    `auto` takes IVF from 50,000 photos and 8-bit codes from 200,000."""
    from retrieval.store.vectors import IVF_FROM, SQ8_FROM, VectorStore, ivf_codes, wanted_kind

    assert (wanted_kind("auto", IVF_FROM - 1), wanted_kind("auto", IVF_FROM)) == ("flat", "ivf")
    assert (ivf_codes(SQ8_FROM - 1), ivf_codes(SQ8_FROM), IVF_FROM) == ("fp16", "sq8", 50_000)
    db = tmp_path / "lib"
    index_paths([photos], db, runtime=runtime)
    con = sqlite3.connect(db / "library.sqlite")
    ids, vecs = zip(*[(i, np.frombuffer(b, "<f2").astype(np.float32)) for i, b in
                      con.execute("select photo_id, vector from photo_features order by photo_id")])
    con.close()
    vecs = np.stack(vecs)
    queries = vecs + np.random.default_rng(1).normal(0, 0.05, vecs.shape).astype(np.float32)
    exact = VectorStore.build("flat", runtime.dim, ids, vecs).search(queries, 5)
    ivf = VectorStore.build("ivf", runtime.dim, ids, vecs)
    assert ivf.describe().startswith("IVF1,fp16")  # 12 photos: one list, probed
    got = ivf.search(queries, 5)
    assert got[1].tolist() == exact[1].tolist()
    np.testing.assert_array_equal(got[0], exact[0])
    sq8 = VectorStore.build("ivf", runtime.dim, ids, vecs, codes="sq8").search(queries, 5)
    assert np.abs(sq8[0] - exact[0]).max() > 1e-4  # 8-bit codes: approximate scores
    # with lists the query does not probe: an exhaustive search, and photo + words' scores of
    # chosen photos (retrieval/query/combine.py), still see every photo at its exact score
    from retrieval.query.combine import Part, part_scores

    few = VectorStore.build("ivf", runtime.dim, ids, vecs, shape=(4, 1))
    assert (few.search(queries[:1], 12)[1] >= 0).sum() < 12
    assert few.search(queries, 5, exhaustive=True)[1].tolist() == exact[1].tolist()
    chosen = np.asarray(ids[::2])
    np.testing.assert_allclose(part_scores(few, Part("q", 1.0, queries[:1], None), chosen),
                               queries[0] @ vecs[::2].T, atol=1e-5)
