"""A real `fusion serve` subprocess on a free localhost port, for end-to-end tests."""

import contextlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    """(status, body) of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@contextlib.contextmanager
def running_server(db, timeout: float = 60.0, args=(), health: str = "/api/health", process: bool = False):
    """Yield the base URL of a server on `db` once `health` answers (with `process`, the pair
    (URL, Popen)); stop it after."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "retrieval.cli", "serve", "--db", str(db), "--port", str(port),
                             *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if get(base + health)[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
        yield (base, proc) if process else base
    finally:
        proc.terminate()
        proc.wait(timeout=10)
