"""`fusion index --ray`: the photos are read, hashed, decoded and encoded by an actor pool on
Ray Data (the model loaded once per actor), and each task's results stream back, in order, to
the one writer in the driver, which commits them exactly as the in-process indexer does
(indexer/run.py). The driver only lists and stats files; a file's bytes are read once, on the
worker that encodes it, where its content hash is taken too. Imported only with --ray."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import sys
from dataclasses import dataclass

from indexer.pipeline import PhotoEncoder, Timing
from indexer.scan import FileStat
from retrieval.errors import FusionError, LibraryError


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # a running cluster ("auto", "ray://host:10001", "host:6379"); None: start one here
    actors: int | None = None  # actor pool size [default: the cluster's CPUs / cpus_per_actor]
    cpus_per_actor: float = 1.0  # each actor runs torch on this many threads
    photos_per_task: int = 32  # one task = one actor call = one SQLite transaction in the driver


def connect(opts: RayOptions) -> bool:
    """Join `opts.address`, or start a local Ray on this machine's CPUs. True when this call
    started or joined it (and the caller shuts it down); False when the process was already
    connected (a test session, a notebook)."""
    import ray

    if opts.address not in (None, "auto"):
        _reachable(opts.address)  # Ray itself retries an unreachable address for minutes
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # Ray's notices stay in its log files
    logging.getLogger("ray").setLevel(logging.ERROR)
    quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
    try:
        with _stderr_to_devnull():  # Ray's C++ core prints a line about that very setting
            if opts.address is None:
                ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **quiet)
            else:
                ray.init(address=opts.address, **quiet)
        _quiet_worker_errors()
    except (ConnectionError, ValueError, RuntimeError) as e:
        name = f"--ray={opts.address}" if opts.address else "--ray"
        raise FusionError(f"{name}: cannot start or reach Ray ({str(e).splitlines()[0][:160]}); on the head node "
                          "use --ray=auto, from elsewhere the address `ray status` prints with the cluster's "
                          "auth token in RAY_AUTH_TOKEN") from None
    return True


def _quiet_worker_errors() -> None:
    """Ray's driver prints every failed attempt of a worker (a traceback each, hundreds of
    lines before it gives up) to stdout, where `--json` promises one JSON object: they go to
    the debug log instead; the run still ends with one line naming the worker's error."""
    import ray._private.worker as ray_worker

    log = logging.getLogger("fusion.ray")

    def to_log(data, ignore_prefix=False):
        for line in data.get("lines", []):
            log.debug("%s: %s", data.get("pid", "ray"), line)

    if hasattr(ray_worker, "print_to_stdstream"):
        ray_worker.print_to_stdstream = to_log


def _reachable(address: str, timeout_s: float = 5.0) -> None:
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise FusionError(f"--ray={address}: not a Ray address; use auto, HOST:6379 or ray://HOST:10001")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise FusionError(f"--ray={address}: nothing answers there ({e.strerror or e}); start the cluster "
                          "(ray start --head) or check the address `ray status` prints") from None


@contextlib.contextmanager
def _stderr_to_devnull():
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def ray_photo_stream(stats: list[FileStat], runtime, rename_shas: set, timing: Timing, opts: RayOptions,
                     batch_size: int = 4):
    """What pipeline.photo_stream yields, computed on Ray: skips, rename candidates and
    encoded photos (a batch per task of `opts.photos_per_task`), in the order of `stats`."""
    import ray

    started = connect(opts)
    try:
        yield from _stream(stats, runtime, rename_shas, timing, opts, batch_size)
    except ray.exceptions.RayError as e:  # committed photos stay; a rerun goes on from there
        raise FusionError(f"--ray: a worker failed ({str(e).strip().splitlines()[-1][:200]}); "
                          "what was committed stays, run fusion index again") from None
    finally:
        if started:
            ray.shutdown()


def _stream(stats, runtime, rename_shas, timing, opts: RayOptions, batch_size):
    import ray
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver's own progress bar counts committed photos
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = True  # ids are given in the same order as in-process
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    cpus = float(ray.cluster_resources().get("CPU", 1))
    per_actor = max(opts.cpus_per_actor, 1.0)
    per_task = max(1, opts.photos_per_task)
    tasks = math.ceil(len(stats) / per_task)
    actors = min(opts.actors or max(1, int(cpus // per_actor)), tasks)
    rows = [{"path": s.path, "size": s.size, "mtime_ns": s.mtime_ns} for s in stats]
    ds = ray.data.from_items(rows, override_num_blocks=tasks).map_batches(
        PhotoEncoder, batch_size=per_task, batch_format="numpy",
        fn_constructor_kwargs=dict(checkpoint=runtime.checkpoint_path, image_weights=runtime.image_weights,
                                   rename_shas=rename_shas, threads=max(1, int(per_actor)), batch_size=batch_size,
                                   precision=runtime.image_precision),
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=per_actor)
    mine = runtime.fingerprint
    # whole blocks as they come (iter_rows held results back until several tasks had finished)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
        for n in range(len(batch["events"])):  # a row per actor call, in input order
            if batch["fingerprint"][n] != mine:
                raise LibraryError(f"a Ray worker encodes with model {batch['fingerprint'][n]}, this library's is "
                                   f"{mine}; install the same fusion-retrieval (and --checkpoint) on every node")
            timing.decode_s += float(batch["decode_s"][n])
            timing.forward_s += float(batch["forward_s"][n])
            timing.network_s += float(batch["network_s"][n])
            yield from pickle.loads(batch["events"][n])
