"""Kill -9 a real `fusion index` subprocess at several points; the next run completes with
nothing lost or duplicated, and FAISS agrees with SQLite."""

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from retrieval.store.library import Library
from retrieval.model.runtime import Runtime


def count(db, sql):
    try:
        con = sqlite3.connect(f"file:{db / 'library.sqlite'}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(sql).fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def start(photos, db):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "retrieval.cli", "index", str(photos), "--db", str(db), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def kill_when(proc, db, condition, limit=120):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if condition(db):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


POINTS = {
    "during start-up": lambda db: True,
    "after the first photo commit": lambda db: count(db, "select count(*) from photos") > 0,
    "while captions are written": lambda db: count(db, "select count(*) from caption_sources") > 0,
}


@pytest.mark.parametrize("point", list(POINTS))
def test_kill_and_resume(point, tmp_path, demo_dir):
    photos = tmp_path / "demo"
    shutil.copytree(demo_dir, photos)
    db = tmp_path / "lib"
    proc = start(photos, db)
    if point == "during start-up":
        time.sleep(1.0)
    kill_when(proc, db, POINTS[point])
    # the kill interrupted the run: the caption source was never marked complete
    assert count(db, "select count(*) from caption_sources where size >= 0") == 0
    left = count(db, "select count(*) from photos")
    if point == "after the first photo commit":
        assert 0 < left
    done = subprocess.run([sys.executable, "-m", "retrieval.cli", "index", str(photos), "--db", str(db), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert count(db, "select count(*) from photos") == 48
    assert count(db, "select count(distinct path) from photos") == 48
    assert count(db, "select count(*) from captions") == 240
    rt = Runtime()
    lib = Library.open(db, rt.fingerprint, rt.dim)
    con = sqlite3.connect(db / "library.sqlite")
    assert sorted(lib.photos.ids().tolist()) == sorted(i for (i,) in con.execute("select id from photos"))
    assert sorted(lib.captions.ids().tolist()) == sorted(i for (i,) in con.execute("select id from captions"))


@pytest.mark.slow
def test_ten_kills_at_random_points(tmp_path, demo_dir):
    """Issue 7: kill -9 ten times at random moments of one growing job, resuming each time."""
    import random

    photos = tmp_path / "demo"
    shutil.copytree(demo_dir, photos)
    db = tmp_path / "lib"
    rng = random.Random(7)
    for _ in range(10):
        proc = start(photos, db)
        time.sleep(rng.uniform(0.3, 6.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        n = count(db, "select count(*) from photos")
        assert n == count(db, "select count(distinct path) from photos") <= 48
    done = subprocess.run([sys.executable, "-m", "retrieval.cli", "index", str(photos), "--db", str(db), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert count(db, "select count(*) from photos") == 48 and count(db, "select count(*) from captions") == 240
    rt = Runtime()
    lib = Library.open(db, rt.fingerprint, rt.dim)
    con = sqlite3.connect(db / "library.sqlite")
    assert sorted(lib.photos.ids().tolist()) == sorted(i for (i,) in con.execute("select id from photos"))
    assert sorted(lib.captions.ids().tolist()) == sorted(i for (i,) in con.execute("select id from captions"))
