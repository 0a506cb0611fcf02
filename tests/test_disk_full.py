"""A full disk, made real with RLIMIT_FSIZE (Python ignores SIGXFSZ, so writes past the limit
fail with EFBIG exactly where a full disk fails with ENOSPC): indexing stops with one line
and exit 1, keeps what it committed, and a rerun with space finishes; thumbnails are served
without being cached; a checkpoint that cannot be written leaves the old one whole."""

import contextlib
import json
import resource
import shutil
import sqlite3
import subprocess
import sys

import pytest
import torch

from indexer.run import index_paths
from retrieval.errors import DiskFullError
from retrieval.model.checkpoint import save_checkpoint
from retrieval.model.heads import FUSION_VARIANTS, FusionHead, ModelConfig, SharedSpace
from retrieval.model.runtime import Runtime
from retrieval.serve.server import thumbnail


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def counts(db):
    con = sqlite3.connect(db / "library.sqlite")
    photos = con.execute("select count(*) from photos").fetchone()[0]
    paths = con.execute("select count(distinct path) from photos").fetchone()[0]
    con.close()
    return photos, paths


def test_indexing_on_a_full_disk_stops_cleanly_and_a_rerun_finishes(tmp_path, demo_photos):
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in demo_photos[:12]:
        shutil.copy(p, photos)
    db = tmp_path / "lib"
    index_paths([photos], db, runtime=Runtime())
    for p in demo_photos[12:]:
        shutil.copy(p, photos)
    limit = 40_000  # below what 48 photos' vectors take on disk

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = subprocess.run([sys.executable, "-m", "retrieval.cli", "index", str(photos), "--db", str(db)],
                       preexec_fn=small_disk, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and "the disk is full" in last and "free some space" in last
    assert "Traceback" not in r.stderr
    kept, _ = counts(db)
    assert kept >= 12  # what was committed before stays
    s = index_paths([photos], db, runtime=Runtime())  # space again
    assert s["photos"] == 48 and counts(db) == (48, 48)
    info = json.loads(subprocess.run([sys.executable, "-m", "retrieval.cli", "info", "--db", str(db), "--json"],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["photos"] == info["vectors"] == 48
    assert not list(db.glob("*.tmp"))


def test_thumbnails_on_a_full_disk_are_served_uncached(tmp_path, demo_photos):
    with file_size_limit(2_000):
        out = thumbnail(tmp_path, 1, str(demo_photos[0]), 512)
    assert isinstance(out, bytes) and out[:2] == b"\xff\xd8" and len(out) > 2_000
    assert not any(p.suffix == ".jpg" for p in (tmp_path / "thumbs").iterdir())  # nothing half-written kept
    cached = thumbnail(tmp_path, 1, str(demo_photos[0]), 512)  # space again: cached as usual
    assert cached.is_file() and cached.read_bytes()[:2] == b"\xff\xd8"


def test_a_checkpoint_that_cannot_be_written_leaves_the_old_one(tmp_path):
    cfg = ModelConfig(image_dim=32, text_dim=16, fusion_dim=8)
    space = SharedSpace(cfg, torch.nn.functional.normalize(torch.randn(1000, 16), dim=-1))
    heads = {v: FusionHead(v, cfg) for v in FUSION_VARIANTS}
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"the previous checkpoint")
    with file_size_limit(4_096), pytest.raises(DiskFullError, match="the disk is full.*run fusion train again"):
        save_checkpoint(out, cfg, space, heads, {v: 0.5 for v in heads}, {})
    assert out.read_bytes() == b"the previous checkpoint" and not list(tmp_path.glob("*.tmp"))
