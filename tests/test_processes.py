"""`fusion index` with worker processes (indexer/processes.py): the same library as in one
process (demo photos and the hostile battery), a worker killed mid-run, the driver killed
mid-run then a rerun, a worker without the model. The real model and real files."""

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from indexer.processes import MIN_PHOTOS, plan_processes, usable_cpus
from indexer.run import index_paths
from retrieval.errors import FusionError
from tests.test_crash import count
from tests.test_hostile import battery
from tests.test_ray import assert_same_library, assert_same_run, runtime_whose_checkpoint_is_gone


def copies(tmp_path, demo_photos, n=3) -> Path:
    photos = tmp_path / "p"
    photos.mkdir()
    for k in range(n):
        for p in demo_photos:
            shutil.copy(p, photos / f"{k}-{p.name}")
    return photos


def test_automatic_plan():
    cpus = usable_cpus()
    assert plan_processes(MIN_PHOTOS - 1, None, "torch") == (0, 0)  # small runs: starting workers costs more
    assert plan_processes(10, 0) == (0, 0) and plan_processes(10, 1) == (0, 0) and plan_processes(0, 4) == (0, 0)
    assert plan_processes(10, 2) == (2, max(1, cpus // 2)) == plan_processes(10, 2, "torch")
    auto = plan_processes(MIN_PHOTOS, None, "torch")
    assert auto == ((min(cpus, 4), max(1, cpus // min(cpus, 4))) if cpus >= 2 else (0, 0))
    assert plan_processes(100_000, None, "onnx") == (0, 0)  # ONNX Runtime uses both cores in one process


def test_processes_give_the_same_library_on_the_demo_collection_and_the_battery(tmp_path, demo_dir, demo_photos):
    photos = tmp_path / "photos"
    shutil.copytree(demo_dir, photos)
    battery(photos / "messy", demo_photos)
    here, there = tmp_path / "in-process", tmp_path / "processes"
    a = index_paths([photos], here, processes=0)
    b = index_paths([photos], there, processes=2)
    assert (a["processes"], b["processes"]) == (0, 2)
    assert_same_run(a, b, here, there)
    os.rename(photos / "images" / demo_photos[0].name, photos / "moved.jpg")  # renamed, not re-encoded
    (photos / "images" / demo_photos[1].name).write_bytes(demo_photos[2].read_bytes())  # changed
    a = index_paths([photos], here, processes=0)
    b = index_paths([photos], there, processes=2)
    assert (a["renamed"], a["updated"], a["added"]) == (b["renamed"], b["updated"], b["added"]) == (1, 1, 0)
    assert_same_library(here, there)


def test_a_worker_killed_mid_run_stops_with_one_error_and_a_rerun_completes(tmp_path, demo_photos):
    photos = copies(tmp_path, demo_photos)
    killed = []

    class KillAWorker:  # the progress bar: at the first committed batch, kill -9 one worker
        def update(self, n):
            if not killed:
                child = multiprocessing.active_children()[0]
                os.kill(child.pid, signal.SIGKILL)
                killed.append(child.pid)

        def close(self):
            pass

    db = tmp_path / "lib"
    with pytest.raises(FusionError, match="a worker process died"):
        index_paths([photos], db, processes=2, bar=lambda total: KillAWorker())
    assert killed
    left = count(db, "select count(*) from photos")
    assert 0 < left < 144
    s = index_paths([photos], db, processes=2)
    assert s["added"] == 144 - left and s["unchanged"] == left
    assert count(db, "select count(distinct path) from photos") == count(db, "select count(*) from photos") == 144


def test_killing_the_driver_mid_run_leaves_no_worker_behind_and_a_rerun_completes(tmp_path, demo_photos):
    photos = copies(tmp_path, demo_photos, n=6)  # 9 tasks: the kill lands with several uncommitted
    db = tmp_path / "lib"
    cmd = [sys.executable, "-m", "retrieval.cli", "index", str(photos), "--db", str(db), "--processes", "2", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline and count(db, "select count(*) from photos") == 0:
        time.sleep(0.02)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = count(db, "select count(*) from photos")
    assert 0 < left < 288 and len(workers) >= 2
    deadline = time.monotonic() + 60  # orphaned workers notice the closed pipe and exit
    while any(Path(f"/proc/{w}").exists() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [w for w in workers if Path(f"/proc/{w}").exists()
             and Path(f"/proc/{w}/stat").read_text().split(") ")[-1][0] != "Z"]
    assert not alive, alive
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    s = json.loads(done.stdout)
    assert s["added"] == 288 - left and s["unchanged"] == left and s["processes"] == 2
    assert count(db, "select count(distinct path) from photos") == count(db, "select count(*) from photos") == 288


def test_a_worker_that_cannot_load_the_model_stops_with_one_error(tmp_path, demo_photos, capfd):
    runtime = runtime_whose_checkpoint_is_gone(tmp_path)
    photos = copies(tmp_path, demo_photos[:4], 1)
    with pytest.raises(FusionError) as e:
        index_paths([photos], tmp_path / "lib", runtime=runtime, processes=2)
    assert str(e.value).startswith("a worker process could not load the model (") and "not found" in str(e.value)
    captured = capfd.readouterr()
    assert "Traceback" not in captured.out + captured.err
