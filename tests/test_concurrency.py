"""A server that answers while `fusion index` writes: ids are never reused, a reader takes up
only the indexer's FAISS saves and hides rows newer than them, and many clients during a real
index run get no error and no answer that mixes two library states."""

import fcntl
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest
from sqlalchemy import select

from indexer.run import index_paths
from retrieval.model.runtime import Runtime
from retrieval.query.search import open_searcher
from retrieval.store.library import Library
from retrieval.store.meta import Photo
from tests.serving import get, running_server


def _id_paths(db) -> dict[int, str]:
    rt = Runtime()
    lib = Library.open(db, rt.fingerprint, rt.dim)
    with lib.session() as s:
        out = dict(s.execute(select(Photo.id, Photo.path)).all())
    lib.close()
    return out


def _indexed(tmp_path, photos_to_copy, rt):
    """A folder with copies of `photos_to_copy`, indexed: (folder, library)."""
    photos = tmp_path / "p"
    photos.mkdir()
    for p in photos_to_copy:
        shutil.copy(p, photos)
    db = tmp_path / "lib"
    index_paths([photos], db, runtime=rt)
    return photos, db


def test_a_deleted_photos_id_is_never_given_to_a_new_one(tmp_path, demo_photos):
    rt = Runtime()
    photos, db = _indexed(tmp_path, demo_photos[:3], rt)
    before = _id_paths(db)
    top = max(before)
    os.remove(before[top])
    index_paths([photos], db, runtime=rt)
    shutil.copy(demo_photos[3], photos)
    index_paths([photos], db, runtime=rt)
    after = _id_paths(db)
    new = {i for i, p in after.items() if p.endswith(demo_photos[3].name)}
    assert len(after) == 3 and new and min(new) > top  # a plain SQLite rowid would reuse `top`


def test_a_reader_during_an_index_run_keeps_a_consistent_snapshot(tmp_path, demo_photos):
    rt = Runtime()
    photos, db = _indexed(tmp_path, demo_photos[:6], rt)
    ids = {v: k for k, v in _id_paths(db).items()}
    edited, gone = str(photos / demo_photos[0].name), str(photos / demo_photos[1].name)
    saved, saved_at = (db / "photos.faiss").read_bytes(), time.time()  # FAISS as the first run saved it
    searcher = open_searcher(db, rt)
    # an index run that committed to SQLite (one photo's content replaced, one deleted) and has
    # not saved FAISS yet, still holding the writer lock
    shutil.copy(demo_photos[10], edited)
    os.utime(edited, (time.time() + 5, time.time() + 5))
    os.remove(gone)
    index_paths([photos], db, runtime=rt)
    (db / "photos.faiss").write_bytes(saved)
    os.utime(db / "photos.faiss", (saved_at, saved_at))
    with open(db / "index.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        searcher.refresh()
        got = [h.id for h in searcher.text("a photo", k=10, candidates=10).hits]
        # the deleted photo and the re-encoded one (its old vector with new rows) are hidden
        assert sorted(got) == sorted(ids[str(photos / p.name)] for p in demo_photos[2:6])
        assert len(searcher.lib.photos) == 6  # the snapshot, not rebuilt from SQLite
    searcher.refresh()  # the run ended: the reader reconciles with SQLite
    got = [h.id for h in searcher.text("a photo", k=10, candidates=10).hits]
    assert ids[edited] in got and ids[gone] not in got and len(got) == 5


def _client(base, rng, known, seen, failures, stop):
    queries = ["a dog", "a street with cars", "people at a table", "a train", "food on a plate", "a zebra"]
    while not stop.is_set():
        pid = rng.choice(known)
        kind = rng.choice(["search", "search", "search", "similar", "describe", "thumb", "health"])
        url = {"search": "/api/search?" + urllib.parse.urlencode({"q": rng.choice(queries), "k": 10}),
               "similar": f"/api/similar?id={pid}&k=10", "describe": f"/api/describe?id={pid}&k=3",
               "thumb": f"/api/thumb/{pid}?size={rng.choice([64, 96, 128])}", "health": "/api/health"}[kind]
        status, body = get(base + url)
        if status != 200:
            failures.append((url, status, body[:200]))
        elif kind in ("search", "similar"):
            hits = json.loads(body)["results"]
            seen.append([(h["id"], h["path"], h["score"]) for h in hits])


def _wait_for(seen: list, n: int, limit: float = 300) -> None:
    deadline = time.time() + limit
    while len(seen) < n and time.time() < deadline:
        time.sleep(0.05)


def test_many_clients_while_indexing(tmp_path, demo_photos, demo_dir):
    photos = tmp_path / "p"
    photos.mkdir()
    for p in demo_photos[:24]:
        shutil.copy(p, photos)
    db = tmp_path / "lib"
    index_paths([photos, demo_dir / "captions.jsonl"], db, runtime=Runtime())
    before = _id_paths(db)
    top = max(before)
    known = [i for i in before if i != top]  # the clients ask for photos that stay
    seen, failures, stop = [], [], threading.Event()
    with running_server(db) as base:
        threads = [threading.Thread(target=_client, args=(base, random.Random(k), known, seen, failures, stop))
                   for k in range(8)]
        for t in threads:
            t.start()
        _wait_for(seen, 20)  # counts, not seconds: a busy machine answers slower, not less correctly
        os.remove(before[top])  # the highest id goes, 24 photos come
        for p in demo_photos[24:]:
            shutil.copy(p, photos)
        started = len(seen)
        run = subprocess.run([sys.executable, "-m", "retrieval.cli", "index", str(photos), "--db", str(db)],
                             capture_output=True, text=True, timeout=600)
        during = len(seen) - started
        _wait_for(seen, len(seen) + 20)  # and answers after the run, from the new library
        stop.set()
        for t in threads:
            t.join(timeout=120)
        final = json.loads(get(base + "/api/health")[1])
    assert run.returncode == 0, run.stderr[-2000:]
    assert failures == []
    after = _id_paths(db)
    assert final["photos"] == len(after) == len(demo_photos) - 1
    ever = {**before, **after}  # no id is reused, so one id has one path across both states
    assert not set(before) - {top} - set(after) and min(set(after) - set(before)) > top
    assert during > 0 and len(seen) >= 40  # answered while the index run wrote, and around it
    for hits in seen:
        assert len({i for i, _p, _s in hits}) == len(hits)  # no photo twice
        assert all(ever.get(i) == p for i, p, _s in hits)  # each id with its own photo
        assert [s for _i, _p, s in hits] == sorted((s for _i, _p, s in hits), reverse=True)
    lib = Library.open(db, Runtime().fingerprint, Runtime().dim)
    assert len(lib.photos) == len(after)  # photos == vectors


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.mark.slow
def test_memory_stays_flat_over_10000_requests(tmp_path, demo_dir):
    db = tmp_path / "lib"
    index_paths([demo_dir], db, runtime=Runtime())
    known = list(_id_paths(db))
    rss, failures, done = {}, [], [0]
    guard = threading.Lock()
    with running_server(db, process=True) as (base, proc):
        def client(k):
            rng = random.Random(k)
            while True:
                with guard:
                    if done[0] >= REQUESTS:
                        return
                    done[0] += 1
                    if done[0] in (2_000, REQUESTS):
                        rss[done[0]] = _rss_mb(proc.pid)
                pid = rng.choice(known)
                # searches with a new word each (no cache can answer), the cheap calls more often
                url = rng.choice([f"/api/search?q=photo+{rng.randrange(10**6)}&k=10"] * 3 +
                                 ["/api/search?q=a+dog&add=grass", f"/api/similar?id={pid}", f"/api/describe?id={pid}"] +
                                 ["/api/health", f"/api/thumb/{pid}?size={rng.choice([64, 128])}"] * 2)
                status, body = get(base + url)
                if status != 200:
                    failures.append((url, status, body[:200]))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == []
    growth = rss[REQUESTS] - rss[2_000]
    print(f"server RSS after 2,000 requests {rss[2_000]:.0f} MB, after {REQUESTS:,} {rss[REQUESTS]:.0f} MB")
    assert growth < 0.05 * rss[2_000], rss  # a leak of even 5 KB a request would show 40 MB


REQUESTS = 10_000


def test_the_same_thumbnail_asked_for_at_once_by_many_threads(tmp_path, demo_photos):
    # the page and a client asking for one thumbnail together once wrote and renamed the same
    # temporary file: the loser's rename found it gone and the server answered 500
    from retrieval.serve.server import thumbnail

    rounds, threads_per_round = 20, 8
    failures = []
    for r in range(rounds):
        barrier = threading.Barrier(threads_per_round)

        def ask(r=r, barrier=barrier):
            barrier.wait()
            try:
                out = thumbnail(tmp_path, r, str(demo_photos[r % len(demo_photos)]), 64)
                assert out.read_bytes()[:2] == b"\xff\xd8"  # a whole JPEG, not a half-written one
            except Exception as e:  # noqa: BLE001 - every failure is collected and reported
                failures.append(repr(e))

        threads = [threading.Thread(target=ask) for _ in range(threads_per_round)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == []
    assert not list((tmp_path / "thumbs").glob("*.tmp"))  # no temporary file left behind
    assert len(list((tmp_path / "thumbs").glob("*.jpg"))) == rounds
