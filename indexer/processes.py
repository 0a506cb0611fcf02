"""Photos read, hashed, decoded and encoded by worker processes on this machine, results back
in input order to the one writer (as with --ray, without Ray). With torch, one process running
it on two threads leaves cores idle: the network's small steps scale poorly across threads, and
two Python threads in one process are held back by the GIL (Lite0 forward on 2 cores: one
process x 2 threads 48.8 photos/s, 2 threads x 1 torch thread 38.8, a process per core ~74).
ONNX Runtime (the default engine) uses both cores in one process and releases the GIL while
the decode thread runs, so `fusion index` stays in-process on it unless asked: on 370 COCO-size
photos two ONNX Runtime workers were a draw with one process (61-64 against 61-66 photos/s,
benchmarks/results/index_speed.md). Torch workers start in ~4 s (torch and the model; ONNX
Runtime's import no torch), so small runs stay in-process."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from indexer.pipeline import PhotoEncoder, Timing
from indexer.scan import FileStat
from retrieval.encoders.onnx_engine import usable_cpus
from retrieval.errors import FusionError, LibraryError

MIN_PHOTOS = 300  # below this many photos to encode, starting workers costs more than they save
MAX_PROCESSES = 4  # each holds the model and the caption memory (~0.5 GB); more threads each beyond
PER_TASK = 32  # photos per task: one SQLite transaction in the writer

_encoder: PhotoEncoder | None = None
_failure = ""  # why this worker could not load the model (raised with its first task)


def plan_processes(photos: int, requested: int | None, engine: str = "onnx") -> tuple[int, int]:
    """(processes, engine threads each) for `photos` to encode; `requested` None is automatic:
    in-process on ONNX Runtime; on torch, a process per core (at most MAX_PROCESSES) for
    MIN_PHOTOS or more on 2+ cores, else 0 (in-process). 0 or 1 requested: in-process."""
    cpus = usable_cpus()
    if requested is None:
        wanted = engine == "torch" and photos >= MIN_PHOTOS and cpus >= 2
        requested = min(cpus, MAX_PROCESSES) if wanted else 0
    if requested <= 1 or photos == 0:
        return 0, 0
    return requested, max(1, cpus // requested)


def _start(checkpoint, image_weights, precision, rename_shas, threads, batch_size) -> None:
    global _encoder, _failure
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True).start()
    try:
        _encoder = PhotoEncoder(checkpoint, image_weights, rename_shas, threads, batch_size, precision)
    except Exception as e:  # an initializer's exception would only print a traceback and break the pool
        _failure = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


def _exit_with(parent: int) -> None:
    """A worker outlives a kill -9'd parent otherwise (its queues' pipes stay open in the
    other workers): leave within a second of the parent's end."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _encode(stats: list[FileStat]) -> dict:
    if _encoder is None:
        raise FusionError(f"a worker process could not load the model ({_failure}); what was committed stays")
    return _encoder({"path": [s.path for s in stats], "size": [s.size for s in stats],
                     "mtime_ns": [s.mtime_ns for s in stats]})


def process_photo_stream(stats: list[FileStat], runtime, rename_shas: set, timing: Timing, processes: int,
                         threads: int, batch_size: int = 4):
    """What pipeline.photo_stream yields (skips, rename candidates, encoded batches), computed
    by `processes` workers, in the order of `stats`. Two tasks per worker are in flight."""
    tasks = [stats[i:i + PER_TASK] for i in range(0, len(stats), PER_TASK)]
    pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"), initializer=_start,
                               initargs=(runtime.checkpoint_path, runtime.image_weights, runtime.image_precision, rename_shas, threads,
                                         batch_size))
    try:
        pending = deque(pool.submit(_encode, t) for t in tasks[:2 * processes])
        queued = iter(tasks[2 * processes:])
        while pending:
            out = pending.popleft().result()
            nxt = next(queued, None)
            if nxt is not None:
                pending.append(pool.submit(_encode, nxt))
            if out["fingerprint"][0] != runtime.fingerprint:  # an installation changed under us
                raise LibraryError(f"a worker process encodes with model {out['fingerprint'][0]}, this library's "
                                   f"is {runtime.fingerprint}; run fusion index again")
            timing.decode_s += out["decode_s"][0]
            timing.forward_s += out["forward_s"][0]
            timing.network_s += out["network_s"][0]
            yield from pickle.loads(out["events"][0])
    except BrokenProcessPool:
        raise FusionError("a worker process died (out of memory, or killed); what was committed stays, run "
                          "fusion index again (--processes 0 encodes in this process)") from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
