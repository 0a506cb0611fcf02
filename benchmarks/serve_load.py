"""Load on `fusion serve`: many clients at once on a synthetic library (drawn from real photo
features, as in the scale benchmark). Three runs: (1) searches (70% text, 10% with `add`,
20% health) from 1 to 32 clients, with the server's single query lock and with reads let
through in parallel (FUSION_SERVE_PARALLEL=1); (2) 32 clients sending what the page sends
(search, similar, describe, thumbnails) for 60 s while `fusion index` adds photos, every
answer checked for a mix of library states; (3) server memory over 10,000 such requests.

    python benchmarks/serve_load.py [--photos 100000] [--clients 1,4,16,32] [--seconds 20]
        [--mixed-seconds 60] [--requests 10000] [--add DIR]

Writes benchmarks/results/serve_load.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from search_speed import QUERIES  # noqa: E402
from synthetic import build, real_features  # noqa: E402
from tests.serving import free_port  # noqa: E402

from indexer.run import index_paths  # noqa: E402
from retrieval.model.runtime import Runtime  # noqa: E402
from retrieval.store.library import Library  # noqa: E402
from retrieval.store.meta import Photo  # noqa: E402
from sqlalchemy import select  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def one_request(base: str, rng: random.Random, real: list[int], mixed: bool) -> tuple[str, int, bytes]:
    """(kind, status, body) of one request. Plain: 70% text searches, 10% with `add`, 20%
    health. Mixed adds what the page sends for one photo: similar, describe and thumbnails
    (of the real photos in the library; the synthetic ones have no files)."""
    r = rng.random()
    pid = rng.choice(real)
    if not mixed:
        kind = "search" if r < 0.7 else "search+add" if r < 0.8 else "health"
    else:
        kind = ("search" if r < 0.45 else "search+add" if r < 0.55 else "similar" if r < 0.67
                else "describe" if r < 0.77 else "thumb" if r < 0.92 else "health")
    path = {"search": "/api/search?" + urllib.parse.urlencode({"q": rng.choice(QUERIES), "k": 10}),
            "search+add": "/api/search?" + urllib.parse.urlencode({"q": rng.choice(QUERIES), "add": "people", "k": 10}),
            "similar": f"/api/similar?id={pid}&k=10", "describe": f"/api/describe?id={pid}&k=5",
            "thumb": f"/api/thumb/{pid}?size={rng.choice([128, 256, 512])}", "health": "/api/health"}[kind]
    try:
        with urllib.request.urlopen(base + path, timeout=120) as resp:
            return kind, resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return kind, e.code, e.read()


def run_clients(base: str, clients: int, seconds: float, real: list[int], mixed: bool = False,
                requests: int = 0, on_count=None) -> dict:
    """Clients back to back for `seconds` (or until `requests` were sent); `on_count(n)` after
    every 1,000th request. Search answers are kept to check against the library later."""
    lat, codes, answers, stop = [], [], [], time.monotonic() + seconds
    guard = threading.Lock()

    def client(k):
        rng = random.Random(k)
        while time.monotonic() < stop and not (requests and len(lat) >= requests):
            t = time.perf_counter()
            kind, code, body = one_request(base, rng, real, mixed)
            with guard:
                lat.append(1000 * (time.perf_counter() - t))
                codes.append(code)
                if code == 200 and kind in ("search", "search+add", "similar"):
                    answers.append([(h["id"], h["path"]) for h in json.loads(body)["results"]])
                if on_count and len(lat) % 1000 == 0:
                    on_count(len(lat))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    lat.sort()
    return {"clients": clients, "requests": len(lat), "per_s": round(len(lat) / wall, 1),
            "p50_ms": round(statistics.median(lat), 1), "p99_ms": round(lat[int(0.99 * (len(lat) - 1))], 1),
            "errors_5xx": sum(1 for c in codes if c >= 500), "non_200": sum(1 for c in codes if c != 200),
            "answers": answers}


def serve(db: Path, parallel: bool):
    port = free_port()
    env = dict(os.environ, FUSION_SERVE_PARALLEL="1" if parallel else "0")
    proc = subprocess.Popen([sys.executable, "-m", "retrieval.cli", "serve", "--db", str(db), "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(base + "/api/health", timeout=5).read()
            return proc, base
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def id_paths(db: Path, runtime: Runtime) -> dict[int, str]:
    lib = Library.open(db, runtime.fingerprint, runtime.dim)
    with lib.session() as s:
        out = dict(s.execute(select(Photo.id, Photo.path)).all())
    lib.close()
    return out


def under_index_run(db: Path, add: Path, clients: int, seconds: float, real: list[int], runtime: Runtime) -> dict:
    """Mixed requests from `clients` for `seconds` while `fusion index` adds the photos in
    `add`; every search answer is then checked against the library (ids are never reused, so
    an id names one photo in every state: an answer pairing an id with another path, or with
    a photo the library never held, mixed two states)."""
    proc, base = serve(db, parallel=False)
    out = {}
    try:
        def index_later():
            time.sleep(5)
            t = time.perf_counter()
            run = subprocess.run([sys.executable, "-m", "retrieval.cli", "index", str(add), "--db", str(db), "--json"],
                                 capture_output=True, text=True)
            out["index_s"], out["index_exit"] = round(time.perf_counter() - t, 1), run.returncode
            out["index_added"] = json.loads(run.stdout)["added"] if run.returncode == 0 else run.stderr[-300:]

        indexer = threading.Thread(target=index_later)
        indexer.start()
        row = run_clients(base, clients, seconds, real, mixed=True)
        indexer.join()
        out["rss_mb"] = round(rss_mb(proc.pid))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    final = id_paths(db, runtime)
    answers = row.pop("answers")
    out["mixed_answers"] = sum(1 for a in answers if any(final.get(i) != p for i, p in a))
    out["answers_checked"] = len(answers)
    out["photos_after"] = len(final)
    out.update(row)
    return out


def memory_series(db: Path, clients: int, requests: int, real: list[int]) -> dict:
    """Server RSS after every 1,000 of `requests` mixed requests."""
    proc, base = serve(db, parallel=False)
    try:
        series = [(0, round(rss_mb(proc.pid)))]
        row = run_clients(base, clients, 1e9, real, mixed=True, requests=requests,
                          on_count=lambda n: series.append((n, round(rss_mb(proc.pid)))))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    row.pop("answers")
    return {"series": series, **row}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=100_000)
    ap.add_argument("--clients", default="1,4,16,32")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--mixed-seconds", type=float, default=60, help="the mixed run while an index run adds photos")
    ap.add_argument("--requests", type=int, default=10_000, help="requests of the memory series")
    ap.add_argument("--add", type=Path, help="photos the concurrent index run adds (default: copies of data/demo)")
    args = ap.parse_args()
    runtime = Runtime()
    demo = ROOT / "data" / "demo"
    real = real_features([demo], runtime)
    report = {"photos": args.photos, "seconds": args.seconds, "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "lib"
        build(db, args.photos, real, runtime)
        index_paths([demo / "images", demo / "captions.jsonl"], db, runtime=runtime)  # real files + captions
        real_ids = [i for i, p in id_paths(db, runtime).items() if not p.startswith("/synthetic/")]
        for mode in ("single lock", "parallel reads"):
            proc, base = serve(db, mode == "parallel reads")
            try:
                rows, rss = [], [rss_mb(proc.pid)]
                for c in [int(x) for x in args.clients.split(",")]:
                    rows.append(run_clients(base, c, args.seconds, real_ids))
                    rows[-1].pop("answers")
                    rss.append(rss_mb(proc.pid))
                    print(mode, rows[-1], f"rss {rss[-1]:.0f} MB", file=sys.stderr, flush=True)
                report["modes"][mode] = {"rows": rows, "rss_mb": [round(x) for x in rss]}
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        add = args.add
        if add is None:
            add = Path(tmp) / "add"
            add.mkdir()
            for p in sorted((demo / "images").glob("*.jpg")):
                shutil.copy(p, add / f"copy-{p.name}")
        report["under_index_run"] = under_index_run(db, add, 32, args.mixed_seconds, real_ids, runtime)
        print("under index run", report["under_index_run"], file=sys.stderr, flush=True)
        report["memory"] = memory_series(db, 16, args.requests, real_ids)
        print("memory", report["memory"], file=sys.stderr, flush=True)
    report["driver_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_load.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "serve_load.md").write_text(markdown(report, args))
    print(markdown(report, args))


def markdown(report: dict, args) -> str:
    lines = ["# `fusion serve` under load", "",
             f"A {args.photos:,}-photo synthetic library (plus the 48 real demo photos and their 240 captions, for "
             f"thumbnails, similar and describe). This 2-core machine; the clients run on the same cores as the "
             f"server.", "",
             f"## Searches: {args.seconds:g} s per row", "",
             "70% text searches, 10% searches with `add`, 20% health checks, back to back.", "",
             "| mode | clients | requests/s | p50 ms | p99 ms | 5xx | server RSS after, MB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for mode, m in report["modes"].items():
        for row, rss in zip(m["rows"], m["rss_mb"][1:]):
            lines.append(f"| {mode} | {row['clients']} | {row['per_s']} | {row['p50_ms']} | {row['p99_ms']} | "
                         f"{row['errors_5xx']} | {rss} |")
    u = report["under_index_run"]
    lines += ["", f"## 32 clients for {args.mixed_seconds:g} s while `fusion index` adds photos", "",
              "45% searches, 10% with `add`, 12% similar, 10% describe, 15% thumbnails (128/256/512 px), 8% "
              "health; the index run starts after 5 s. Every search and similar answer is checked against the "
              "library after the run: an id paired with a path the library does not give it would be an answer "
              "that mixed two library states.", "",
              "| requests | requests/s | p50 ms | p99 ms | 5xx | other non-200 | answers checked | mixed answers | "
              "index run | photos added | server RSS after, MB |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
              f"| {u['requests']} | {u['per_s']} | {u['p50_ms']} | {u['p99_ms']} | {u['errors_5xx']} | "
              f"{u['non_200'] - u['errors_5xx']} | {u['answers_checked']} | {u['mixed_answers']} | "
              f"{u['index_s']} s, exit {u['index_exit']} | {u['index_added']} | {u['rss_mb']} |"]
    m = report["memory"]
    lines += ["", f"## Memory over {m['requests']:,} requests", "",
              f"16 clients, the mixed requests above: {m['per_s']} requests/s, p99 {m['p99_ms']} ms, "
              f"{m['errors_5xx']} 5xx. Server RSS (MB) after every 1,000 requests:", "",
              "| requests | " + " | ".join(f"{n:,}" for n, _ in m["series"]) + " |",
              "| --- |" + " ---: |" * len(m["series"]),
              "| RSS MB | " + " | ".join(str(r) for _, r in m["series"]) + " |"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
