"""`fusion index --ray`: the same library as in-process (demo photos and the hostile battery),
kill -9 of the driver mid-run then a rerun, and a Ray worker killed mid-run: nothing lost or
duplicated. A real local Ray (2 CPUs, no dashboard) and the real model; needs the `ray` extra."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from indexer.run import index_paths
from retrieval.model.runtime import Runtime
from retrieval.query.search import open_searcher
from retrieval.store.library import Library
from tests.test_crash import count
from tests.test_hostile import battery

pytestmark = pytest.mark.ray


def rows(db) -> dict[str, tuple]:
    """path -> (sha, width, height, taken_at, camera, search vector) of every indexed photo."""
    con = sqlite3.connect(db / "library.sqlite")
    out = {p: (sha, w, h, t, c, np.frombuffer(v, "<f2").astype(np.float32)) for p, sha, w, h, t, c, v in con.execute(
        "select path, sha, width, height, taken_at, camera, vector from photos join photo_features "
        "on photo_features.photo_id = photos.id")}
    con.close()
    return out


def assert_same_library(a, b):
    ra, rb = rows(a), rows(b)
    assert sorted(ra) == sorted(rb)
    for path in ra:
        assert ra[path][:5] == rb[path][:5], path
        np.testing.assert_allclose(ra[path][5], rb[path][5], atol=2e-3, err_msg=path)
    rt = Runtime()
    for db in (a, b):  # FAISS holds exactly SQLite's photos
        lib = Library.open(db, rt.fingerprint, rt.dim)
        assert sorted(lib.photos.ids().tolist()) == sorted(i for (i,) in sqlite3.connect(db / "library.sqlite")
                                                           .execute("select id from photos"))
        lib.close()


def assert_same_run(a: dict, b: dict, here, there):
    """Two index runs of the demo collection + battery (summaries a, b; libraries here,
    there) came to the same library: counts, skips with reasons, rows, vectors, results."""
    for key in ("added", "updated", "renamed", "removed", "photos", "captions", "captions_added"):
        assert a[key] == b[key], key
    assert a["added"] > 48 and len(a["skipped"]) >= 8
    assert sorted((d["path"], d["reason"]) for d in a["skipped"]) == sorted((d["path"], d["reason"])
                                                                          for d in b["skipped"])
    assert_same_library(here, there)
    for q in ("two zebras grazing", "a plate of food on a table", "a man riding a wave on a surfboard"):
        assert top(here, q) == top(there, q)


def runtime_whose_checkpoint_is_gone(tmp_path) -> Runtime:
    """A runtime that has read a copy of the shipped checkpoint, which is then deleted: what a
    worker process or node without the driver's checkpoint sees."""
    from retrieval.model.query_side import default_checkpoint_path

    src = Path(default_checkpoint_path())
    for f in src.parent.iterdir():
        shutil.copy(f, tmp_path / f.name)
    runtime = Runtime(checkpoint=tmp_path / src.name)
    _ = runtime.fingerprint  # the driver has read it
    (tmp_path / src.name).unlink()  # ... the workers will not find it
    return runtime


def top(db, query, k=8):
    """The hits with scores to 3 decimals; photos whose scores tie there (the battery holds
    copies of demo photos) in path order, since float noise may order them either way."""
    hits = [(round(h.score, 3), h.path) for h in open_searcher(db).text(query, k=k).hits]
    last = hits[-1][0]  # a tie at the cut could keep either copy: compared above it only
    return sorted((h for h in hits if h[0] > last), key=lambda h: (-h[0], h[1]))


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from indexer.on_ray import connect, RayOptions

    assert connect(RayOptions())  # what `--ray` starts, once for the module's in-process runs
    yield
    ray.shutdown()


def test_killing_the_driver_mid_run_then_rerunning_completes_the_library(tmp_path, demo_photos):
    # first in the module: its `fusion index --ray` processes start their own local Ray
    photos = tmp_path / "p"
    photos.mkdir()
    for n in range(3):
        for p in demo_photos:
            shutil.copy(p, photos / f"{n}-{p.name}")
    db = tmp_path / "lib"
    # the killed driver commits 4 photos a task, so its commits spread over seconds: at the
    # default 32 they can land within one poll of each other, and the kill finds none left to lose
    driver = ("import sys; from pathlib import Path; from indexer.run import index_paths; "
              "from indexer.on_ray import RayOptions; "
              "index_paths([Path(sys.argv[1])], Path(sys.argv[2]), ray=RayOptions(photos_per_task=4))")
    proc = subprocess.Popen([sys.executable, "-c", driver, str(photos), str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline and count(db, "select count(*) from photos") == 0:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = count(db, "select count(*) from photos")
    assert 0 < left < 144  # killed in the middle of the run
    cmd = [sys.executable, "-m", "retrieval.cli", "index", str(photos), "--db", str(db), "--ray", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    s = json.loads(done.stdout)
    assert s["added"] == 144 - left and s["unchanged"] == left
    assert count(db, "select count(*) from photos") == 144
    assert count(db, "select count(distinct path) from photos") == 144
    rt = Runtime()
    lib = Library.open(db, rt.fingerprint, rt.dim)
    assert sorted(lib.photos.ids().tolist()) == sorted(i for (i,) in sqlite3.connect(db / "library.sqlite")
                                                       .execute("select id from photos"))


def test_ray_gives_the_same_library_on_the_demo_collection_and_the_battery(tmp_path, demo_dir, demo_photos,
                                                                         local_ray):
    from indexer.on_ray import RayOptions

    photos = tmp_path / "photos"
    shutil.copytree(demo_dir, photos)
    battery(photos / "messy", demo_photos)
    here, there = tmp_path / "in-process", tmp_path / "ray"
    a = index_paths([photos], here)
    b = index_paths([photos], there, ray=RayOptions(photos_per_task=8))
    assert_same_run(a, b, here, there)
    # a moved photo and a deleted one, seen the same way by both: renamed without re-encoding
    os.rename(photos / "images" / demo_photos[0].name, photos / "moved.jpg")
    os.remove(photos / "images" / demo_photos[1].name)
    a = index_paths([photos], here)
    b = index_paths([photos], there, ray=RayOptions(photos_per_task=8))
    assert (a["renamed"], a["removed"], a["added"]) == (b["renamed"], b["removed"], b["added"]) == (1, 1, 0)
    assert_same_library(here, there)


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(tmp_path, demo_dir, local_ray):
    from indexer.on_ray import RayOptions

    killed = []

    class KillAWorker:  # the progress bar: at the first committed batch, kill -9 one encoding actor
        def update(self, n):
            if not killed:
                out = subprocess.run(["pgrep", "-f", "PhotoEncoder"], capture_output=True, text=True).stdout.split()
                pids = [int(p) for p in out if int(p) != os.getpid()]
                assert pids, "no Ray actor process found to kill"
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])

        def close(self):
            pass

    db = tmp_path / "lib"
    s = index_paths([demo_dir], db, ray=RayOptions(actors=2, photos_per_task=4), bar=lambda total: KillAWorker())
    assert killed
    assert s["added"] == 48 and not s["skipped"]
    assert count(db, "select count(*) from photos") == 48
    assert count(db, "select count(distinct path) from photos") == 48
    reference = tmp_path / "in-process"
    index_paths([demo_dir], reference)
    assert_same_library(reference, db)


def test_without_ray_nothing_imports_it(tmp_path, demo_photos):
    photos = tmp_path / "p"
    photos.mkdir()
    for p in demo_photos[:4]:
        shutil.copy(p, photos)
    code = ("import sys; from pathlib import Path; from indexer.run import index_paths; "
            f"s = index_paths([Path({str(photos)!r})], Path({str(tmp_path / 'lib')!r})); "
            "assert s['added'] == 4, s; print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_ray_errors_name_the_address_and_the_fix(tmp_path, demo_photos):
    from click.testing import CliRunner

    from retrieval.cli import main

    photos = tmp_path / "p"
    photos.mkdir()
    shutil.copy(demo_photos[0], photos)
    runner = CliRunner()
    r = runner.invoke(main, ["index", str(photos), "--db", str(tmp_path / "lib"), "--ray=127.0.0.1:1"])
    assert r.exit_code == 1 and "--ray=127.0.0.1:1: nothing answers there" in r.output and "ray start" in r.output
    r = runner.invoke(main, ["index", str(photos), "--db", str(tmp_path / "lib"), "--ray=not-an-address"])
    assert r.exit_code == 1 and "not a Ray address" in r.output
    assert count(tmp_path / "lib", "select count(*) from photos") == 0


def test_a_worker_that_cannot_load_the_model_stops_with_one_error_and_nothing_on_stdout(tmp_path, demo_photos,
                                                                                      capfd, local_ray):
    # a node without the checkpoint the driver uses: Ray retries the actor, then gives up
    from indexer.on_ray import RayOptions
    from retrieval.errors import FusionError
    runtime = runtime_whose_checkpoint_is_gone(tmp_path)
    photos = tmp_path / "p"
    photos.mkdir()
    for p in demo_photos[:4]:
        shutil.copy(p, photos)
    with pytest.raises(FusionError) as e:
        index_paths([photos], tmp_path / "lib", runtime=runtime, ray=RayOptions())
    assert str(e.value).startswith("--ray: a worker failed (") and "checkpoint not found" in str(e.value)
    out = capfd.readouterr().out
    assert "(raylet)" not in out and "Traceback" not in out  # --json's stdout stays clean
