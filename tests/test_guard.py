"""`fusion serve` against the web pages a user visits: Host headers of other names (DNS
rebinding) are refused, no CORS headers are sent, and a token is required when asked for or
when listening beyond loopback. A real server on a library of 3 demo photos."""

import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from indexer.run import index_paths
from retrieval.model.runtime import Runtime
from retrieval.serve.guard import Guard
from tests.serving import free_port, running_server


def request(url, headers=None, method="GET"):
    """(status, headers, body) of a request with the given headers (Host included)."""
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture(scope="module")
def db(tmp_path_factory, demo_photos):
    root = tmp_path_factory.mktemp("g")
    index_paths(demo_photos[:3], root / "lib", runtime=Runtime())
    return root / "lib"


def test_guard_rules():
    g = Guard.for_address("127.0.0.1", 8765)
    assert g.token is None and g.host_ok("127.0.0.1:8765") and g.host_ok("LOCALHOST:8765") and g.host_ok("[::1]:8765")
    assert not g.host_ok("evil.example:8765") and not g.host_ok(None) and not g.host_ok("127.0.0.1:9999")
    assert Guard.for_address("127.0.0.1", 8765, ["photos.local"]).host_ok("photos.local:8765")
    lan = Guard.for_address("192.168.1.20", 8765)
    assert lan.token and len(lan.token) >= 24 and lan.host_ok("192.168.1.20:8765") and not lan.host_ok("evil:8765")
    assert Guard.for_address("0.0.0.0", 8765).hosts is None  # all interfaces: the token guards
    assert Guard.for_address("0.0.0.0", 8765).token != Guard.for_address("0.0.0.0", 8765).token
    t = Guard.for_address("127.0.0.1", 1, token="s3cret")
    assert t.token_ok(None, "Bearer s3cret", None) and t.token_ok("s3cret", None, None)
    assert not t.token_ok(None, "Bearer nope", None) and not t.token_ok(None, None, None)


def test_rebinding_host_refused_and_no_cors(db):
    with running_server(db) as base:
        port = base.rsplit(":", 1)[1]
        status, _, body = request(base + "/api/search?q=a+photo", {"Host": f"rebind.evil.example:{port}"})
        assert status == 403 and b"--allow-host" in body
        for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
            assert request(base + "/api/health", {"Host": host})[0] == 200
        for path, method in (("/api/search?q=a+photo", "GET"), ("/api/search?q=a+photo", "OPTIONS"), ("/", "GET")):
            _, headers, _ = request(base + path, {"Origin": "https://evil.example"}, method)
            assert not any(k.lower().startswith("access-control-") for k in headers), (path, method, headers)


def test_token_when_asked_for(db):
    with running_server(db, args=["--token", "s3cret"], health="/api/health?token=s3cret") as base:
        assert request(base + "/api/health")[0] == 401
        assert request(base + "/api/health", {"Authorization": "Bearer wrong"})[0] == 401
        assert request(base + "/api/health", {"Authorization": "Bearer s3cret"})[0] == 200
        status, headers, _ = request(base + "/?token=s3cret")
        assert status == 200 and "fusion_token=s3cret" in headers.get("set-cookie", "")
        assert "httponly" in headers["set-cookie"].lower() and "samesite=strict" in headers["set-cookie"].lower()
        assert request(base + "/api/search?q=a+photo", {"Cookie": "fusion_token=s3cret"})[0] == 200


def test_beyond_loopback_a_token_is_made_and_required(db):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "retrieval.cli", "serve", "--db", str(db), "--host", "0.0.0.0",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        token = re.search(r"\?token=([\w-]+)", line).group(1)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if request(base + "/api/health", {"Authorization": f"Bearer {token}"})[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "server did not start"
            time.sleep(0.1)
        assert request(base + "/api/health")[0] == 401
        assert request(base + "/api/search?q=a+photo&token=" + token)[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)
