"""Load on `fusion serve`: many clients at once on a synthetic library (drawn from real photo
features, as in the scale benchmark), a mix of text searches (70%), searches with `add`
(10%) and health checks (20%); requests/s and latency p50/p99 per client count, with the
server's single query lock and with reads let through in parallel (FUSION_SERVE_PARALLEL=1).

    python benchmarks/serve_load.py [--photos 100000] [--clients 1,4,16,32] [--seconds 20]

Writes benchmarks/results/serve_load.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
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

from retrieval.model.runtime import Runtime  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def one_request(base: str, rng: random.Random, n_photos: int) -> int:
    r = rng.random()
    if r < 0.7:
        url = f"{base}/api/search?" + urllib.parse.urlencode({"q": rng.choice(QUERIES), "k": 10})
    elif r < 0.8:
        url = f"{base}/api/search?" + urllib.parse.urlencode({"q": rng.choice(QUERIES), "add": "people", "k": 10})
    else:
        url = f"{base}/api/health"
    try:
        with urllib.request.urlopen(url, timeout=120) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def run_clients(base: str, clients: int, seconds: float, n_photos: int) -> dict:
    lat, codes, stop = [], [], time.monotonic() + seconds
    guard = threading.Lock()

    def client(k):
        rng = random.Random(k)
        while time.monotonic() < stop:
            t = time.perf_counter()
            code = one_request(base, rng, n_photos)
            with guard:
                lat.append(1000 * (time.perf_counter() - t))
                codes.append(code)

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
            "errors_5xx": sum(1 for c in codes if c >= 500), "non_200": sum(1 for c in codes if c != 200)}


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=100_000)
    ap.add_argument("--clients", default="1,4,16,32")
    ap.add_argument("--seconds", type=float, default=20)
    args = ap.parse_args()
    runtime = Runtime()
    real = real_features([ROOT / "data" / "demo"], runtime)
    report = {"photos": args.photos, "seconds": args.seconds, "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "lib"
        build(db, args.photos, real, runtime)
        for mode in ("single lock", "parallel reads"):
            proc, base = serve(db, mode == "parallel reads")
            try:
                rows, rss = [], [rss_mb(proc.pid)]
                for c in [int(x) for x in args.clients.split(",")]:
                    rows.append(run_clients(base, c, args.seconds, args.photos))
                    rss.append(rss_mb(proc.pid))
                    print(mode, rows[-1], f"rss {rss[-1]:.0f} MB", file=sys.stderr, flush=True)
                report["modes"][mode] = {"rows": rows, "rss_mb": [round(x) for x in rss]}
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    report["driver_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_load.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# `fusion serve` under load", "",
             f"A {args.photos:,}-photo synthetic library; each client sends requests back to back for "
             f"{args.seconds:g} s: 70% text searches, 10% searches with `add`, 20% health checks. This 2-core "
             "machine; the clients run on the same cores as the server.", "",
             "| mode | clients | requests/s | p50 ms | p99 ms | 5xx | server RSS after, MB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for mode, m in report["modes"].items():
        for row, rss in zip(m["rows"], m["rss_mb"][1:]):
            lines.append(f"| {mode} | {row['clients']} | {row['per_s']} | {row['p50_ms']} | {row['p99_ms']} | "
                         f"{row['errors_5xx']} | {rss} |")
    (RESULTS / "serve_load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
