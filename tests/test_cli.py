"""The `fusion` command through click's CliRunner and as a real subprocess."""

import json
import shutil
import subprocess
import sys

from click.testing import CliRunner

from retrieval.cli import main


def test_help_lists_commands():
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0
    for cmd in ("encode",):
        assert f"  {cmd}" in r.output


def test_encode_json_reports_skips(tmp_path, demo_photos):
    for p in demo_photos[:3]:
        shutil.copy(p, tmp_path)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "notes.txt").write_text("ignored: not a photo suffix")
    r = CliRunner().invoke(main, ["encode", str(tmp_path), "--json"])
    assert r.exit_code == 3, r.output
    s = json.loads(r.stdout)
    assert s["encoded"] == 3 and s["skipped"] == 1 and s["dim"] == 1280
    assert s["errors"][0]["path"].endswith("broken.png")


def test_encode_subprocess_prints_labels(demo_dir):
    photo = demo_dir / "images" / "000000113354.jpg"
    r = subprocess.run([sys.executable, "-m", "retrieval.cli", "encode", str(photo)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "zebra" in r.stdout.splitlines()[0]
    assert "encoded 1 photos" in r.stdout


def test_encode_missing_path_is_one_line_error(tmp_path):
    r = CliRunner().invoke(main, ["encode", str(tmp_path / "nothing")])
    assert r.exit_code != 0
    assert "nothing" in r.output


def test_share_text_never_claims_certainty():
    from retrieval.cli.output import share_text

    assert [share_text(s) for s in (0.0, 0.0004, 0.0005, 0.2345, 0.9994, 0.9995, 1.0)] == [
        " <0.1%", " <0.1%", "  0.1%", " 23.4%", " 99.9%", ">99.9%", ">99.9%"]
    assert len({len(share_text(s)) for s in (0.0, 0.5, 1.0)}) == 1  # the column stays aligned


def test_a_cold_search_that_fails_exits_with_its_error_not_an_abort(tmp_path):
    """A cold search starts loading MiniLM's session in a thread before it opens the library;
    when opening fails at once (no library there), the process must end with the one-line
    error and exit 1, not abort while ONNX Runtime is still building the session (it exited
    134, 'terminate called', about one time in two)."""
    for _ in range(4):
        r = subprocess.run([sys.executable, "-m", "retrieval.cli", "search", "zebras", "--db", str(tmp_path / "none")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 1, r.stderr[-500:]
        assert r.stderr.strip().splitlines() == [f"Error: {tmp_path / 'none'}: no library here yet; index photos "
                                                 f"first: fusion index PATH --db {tmp_path / 'none'}"]
