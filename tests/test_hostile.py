"""Hostile input and faults: a generated battery of bad files, damaged library files, readers
during writes, and the promise that user photos are never touched."""

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time

import numpy as np
from click.testing import CliRunner
from PIL import Image

from retrieval.cli import main
from retrieval.errors import LibraryError
from retrieval.store.library import Library
from retrieval.model.runtime import Runtime
from tests.test_images import _png_with_header_size


def battery(folder, demo_photos):
    """Every case of issue 7 point 1; returns (names expected indexed, names expected skipped)."""
    folder.mkdir()
    good, bad = set(), set()

    def photo(name, img, **kw):
        img.save(folder / name, **kw)
        good.add(name)

    shutil.copy(demo_photos[0], folder / "plain.jpg")
    good.add("plain.jpg")
    (folder / "zero.jpg").write_bytes(b"")
    data = demo_photos[1].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    png = folder / "truncated.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(png)
    png.write_bytes(png.read_bytes()[:300])
    _png_with_header_size(folder / "bomb.png", 60_000, 60_000)
    (folder / "text.jpg").write_text("hello, I am not a photo")
    bad |= {"zero.jpg", "truncated.jpg", "truncated.png", "bomb.png", "text.jpg"}
    shutil.copy(demo_photos[2], folder / "no_extension")  # no photo suffix: left alone, not reported
    photo("cmyk.jpg", Image.new("CMYK", (40, 30), (0, 200, 200, 0)))
    photo("deep16.png", Image.fromarray(np.full((20, 20), 40000, np.uint16)))
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([0, 0, 0] + [10, 200, 10] * 255)
    photo("palette.png", pal, transparency=0)
    frames = [Image.new("RGB", (20, 20), c) for c in [(255, 0, 0), (0, 255, 0)]]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    good.add("animated.gif")
    rot = Image.open(demo_photos[3])
    exif = rot.getexif()
    exif[0x0112] = 6
    photo("rotated.jpg", rot, exif=exif)
    photo("panorama.jpg", Image.new("RGB", (4000, 20), (90, 90, 200)))
    photo("tiny.png", Image.new("RGB", (1, 1), (1, 2, 3)))
    shutil.copy(demo_photos[4], folder / "secret.jpg")
    os.chmod(folder / "secret.jpg", 0)
    # root reads anything: then the file is a photo like any other
    (good if os.geteuid() == 0 else bad).add("secret.jpg")
    os.symlink(folder / "gone.jpg", folder / "broken_link.jpg")
    bad.add("broken_link.jpg")
    os.symlink(folder / "loop_b.jpg", folder / "loop_a.jpg")
    os.symlink(folder / "loop_a.jpg", folder / "loop_b.jpg")
    bad |= {"loop_a.jpg", "loop_b.jpg"}
    os.symlink(folder, folder / "self_loop_dir")  # a folder link back to itself: not followed
    for name in ("ünïcödé café.jpg", "with spaces.jpg", "new\nline.jpg"):
        shutil.copy(demo_photos[5], folder / name)
        good.add(name)
    (folder / "x.jpg").mkdir()  # a directory with a photo's name
    return good, bad


def tree_state(folder):
    out = {}
    for root, dirs, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            st = os.stat(p)
            with open(p, "rb") as fh:
                out[p] = (st.st_mtime_ns, st.st_mode, hashlib.sha256(fh.read()).hexdigest())
    return out


def test_battery_indexes_every_valid_photo_and_reports_each_bad_one(tmp_path, demo_photos):
    folder = tmp_path / "messy"
    good, bad = battery(folder, demo_photos)
    before = tree_state(folder)
    r = CliRunner().invoke(main, ["index", str(folder), "--db", str(tmp_path / "lib"), "--json"])
    assert r.exit_code == 3, r.output  # 3: finished, some files skipped
    s = json.loads(r.stdout)
    con = sqlite3.connect(tmp_path / "lib" / "library.sqlite")
    indexed = {os.path.basename(p) for (p,) in con.execute("select path from photos")}
    assert indexed == good
    skipped = {os.path.basename(d["path"]): d["reason"] for d in s["skipped"]}
    assert set(skipped) == bad
    assert "pixels, over the limit" in skipped["bomb.png"]
    assert skipped["broken_link.jpg"] == "broken symlink"
    assert all(reason for reason in skipped.values())
    # the rotated photo is recorded upright, the panorama kept its shape
    dims = {os.path.basename(p): (w, h) for p, w, h in con.execute("select path, width, height from photos")}
    w, h = Image.open(demo_photos[3]).size
    assert dims["rotated.jpg"] == (h, w) and dims["panorama.jpg"] == (4000, 20)
    assert tree_state(folder) == before  # nothing written, moved or deleted in the user's folder


def test_damaged_library_files_named_and_rebuilt(tmp_path, demo_photos):
    photos = tmp_path / "p"
    photos.mkdir()
    for p in demo_photos[:6]:
        shutil.copy(p, photos)
    db = tmp_path / "lib"
    runner = CliRunner()
    assert runner.invoke(main, ["index", str(photos), "--db", str(db)]).exit_code == 0
    faiss_file = db / "photos.faiss"
    faiss_file.write_bytes(faiss_file.read_bytes()[:100])
    r = runner.invoke(main, ["search", "a dog", "--db", str(db)])
    assert r.exit_code == 1 and "photos.faiss: damaged vector index" in r.output and "--rebuild" in r.output
    r = runner.invoke(main, ["index", str(photos), "--db", str(db), "--rebuild", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["added"] == 0  # rebuilt from SQLite, nothing re-encoded
    assert runner.invoke(main, ["search", "a dog", "--db", str(db)]).exit_code == 0

    (db / "photos.faiss").unlink()  # a missing index is rebuilt from SQLite on open
    r = runner.invoke(main, ["search", "a dog", "--db", str(db), "--json"])
    assert r.exit_code == 0 and len(json.loads(r.stdout)) == 6

    con = sqlite3.connect(db / "library.sqlite")
    con.execute("delete from photo_features where photo_id = (select min(photo_id) from photo_features)")
    con.commit()
    con.close()
    # search goes on without the photo whose features are gone; the next index run repairs it
    r = runner.invoke(main, ["search", "a dog", "--db", str(db), "--json"])
    assert r.exit_code == 0 and len(json.loads(r.stdout)) == 5
    r = runner.invoke(main, ["index", str(photos), "--db", str(db), "--json"])
    assert json.loads(r.stdout)["updated"] == 1
    r = runner.invoke(main, ["search", "a dog", "--db", str(db), "--json"])
    assert len(json.loads(r.stdout)) == 6

    (db / "library.sqlite").write_bytes(b"garbage" * 1000)
    for extra in ("library.sqlite-wal", "library.sqlite-shm"):
        (db / extra).unlink(missing_ok=True)
    r = runner.invoke(main, ["search", "a dog", "--db", str(db)])
    assert r.exit_code == 1 and "library.sqlite: not a readable library database" in r.output
    r = runner.invoke(main, ["index", str(photos), "--db", str(db), "--rebuild", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["added"] == 6


def test_readers_never_see_a_torn_library(tmp_path, demo_dir):
    photos = tmp_path / "demo"
    shutil.copytree(demo_dir / "images", photos)
    db = tmp_path / "lib"
    # a first photo so that readers have a library to open
    first = tmp_path / "first"
    first.mkdir()
    shutil.copy(next(photos.iterdir()), first)
    CliRunner().invoke(main, ["index", str(first), "--db", str(db)])
    proc = subprocess.Popen([sys.executable, "-m", "retrieval.cli", "index", str(photos), "--db", str(db)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rt = Runtime()
    seen, errors = [], []
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            lib = Library.open(db, rt.fingerprint, rt.dim)
            con = sqlite3.connect(db / "library.sqlite")
            ids = sorted(i for (i,) in con.execute("select photo_id from photo_features"))
            con.close()
            faiss_ids = sorted(lib.photos.ids().tolist())
            # the reader's FAISS view is repaired from SQLite as it opens: never torn, no
            # duplicates, nothing SQLite does not hold (rows only grow during this run)
            assert set(faiss_ids) <= set(ids) and len(set(faiss_ids)) == len(faiss_ids)
            seen.append(len(faiss_ids))
            lib.close()
        except LibraryError as e:
            errors.append(str(e))
    proc.wait(timeout=120)
    assert proc.returncode == 0 and errors == []
    assert len(seen) >= 2 and seen == sorted(seen)


def test_server_follows_the_indexer(tmp_path, demo_photos):
    from tests.serving import get, running_server

    photos = tmp_path / "p"
    photos.mkdir()
    shutil.copy(demo_photos[0], photos)
    db = tmp_path / "lib"
    CliRunner().invoke(main, ["index", str(photos), "--db", str(db)])
    with running_server(db) as base:
        assert json.loads(get(base + "/api/health")[1])["photos"] == 1
        for p in demo_photos[1:5]:
            shutil.copy(p, photos)
        assert CliRunner().invoke(main, ["index", str(photos), "--db", str(db)]).exit_code == 0
        assert json.loads(get(base + "/api/health")[1])["photos"] == 5
        assert len(json.loads(get(base + "/api/search?q=a+photo&k=10")[1])["results"]) == 5


def test_one_writer_at_a_time(tmp_path, demo_photos):
    import fcntl

    photos = tmp_path / "p"
    photos.mkdir()
    shutil.copy(demo_photos[0], photos)
    db = tmp_path / "lib"
    db.mkdir()
    with open(db / "index.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        r = CliRunner().invoke(main, ["index", str(photos), "--db", str(db)])
        assert r.exit_code == 1 and "another fusion index (pid 4242) is writing" in r.output
        assert not (db / "library.sqlite").exists()  # nothing was touched
    r = CliRunner().invoke(main, ["index", str(photos), "--db", str(db)])
    assert r.exit_code == 0, r.output
