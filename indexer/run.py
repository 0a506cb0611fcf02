"""`fusion index` as a library function: paths in, an up-to-date library and a summary out."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.captions import index_captions
from indexer.pipeline import Encoded, Timing, photo_stream
from indexer.processes import plan_processes, process_photo_stream
from indexer.scan import plan, walk
from indexer.writer import Writer
from retrieval.data.datasets import is_dataset
from retrieval.errors import DiskFullError, LibraryError, disk_full, is_disk_full
from retrieval.store.library import (CAPTION_INDEX, DB_FILE, LOCK_FILE, PHOTO_INDEX, SHIPPED_MODEL, Library,
                                     check_root, library_dir, recorded_model)
from retrieval.model.runtime import Runtime

if TYPE_CHECKING:
    from indexer.on_ray import RayOptions

WRITE_BATCH = 32  # photos per SQLite transaction
LOCK_TRIES = 40  # x 50 ms before "another fusion index is writing"


def rebuild(root: Path, runtime: Runtime) -> None:
    """--rebuild, from what remains: the FAISS files always go (they are rebuilt from SQLite);
    SQLite goes too when it is unreadable or was made with another model, and then every photo
    is encoded again. Only our own files are ever deleted."""
    for name in (PHOTO_INDEX, CAPTION_INDEX, PHOTO_INDEX + ".tmp", CAPTION_INDEX + ".tmp"):
        (root / name).unlink(missing_ok=True)
    try:
        Library.open(root, runtime.fingerprint, runtime.dim).close()
    except LibraryError:
        for name in (DB_FILE, DB_FILE + "-wal", DB_FILE + "-shm"):
            (root / name).unlink(missing_ok=True)
        shutil.rmtree(root / "thumbs", ignore_errors=True)  # keyed by photo ids, which restart


def prepare_engine(runtime: Runtime, notice=None) -> None:
    """Export the encoders' ONNX graphs now if this machine lacks them (once per machine and
    model, a few seconds), before worker processes start and before the photos/s clock."""
    if runtime.image_encoder.runs_onnx:
        runtime.image_encoder.graph.ensure(notice)
    if runtime.engine == "onnx":
        runtime.text_encoder.graph.ensure(notice)


def prepare_memory(runtime: Runtime, notice=None) -> None:
    """Encode the model's caption memory now if this machine has not yet (once per machine,
    about a minute on two cores), saying so through `notice`."""
    from retrieval.model.memory import memory_cached

    if not runtime.config.memory_digest:
        return
    if notice and not memory_cached(runtime.text_encoder):
        notice("encoding the caption memory that describe and search use (once per machine, about a minute)")
    _ = runtime.memory


@contextlib.contextmanager
def writer_lock(root: Path):
    """One `fusion index` per library at a time: an flock on `index.lock`, released by the
    kernel however the process ends (kill -9 included), so it never needs cleaning up."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "a+") as f:
        for attempt in range(LOCK_TRIES):  # a server's probe (index_running) holds it for an instant
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == LOCK_TRIES - 1:
                    f.seek(0)
                    holder = f.read().strip() or "?"
                    raise LibraryError(f"{root}: another fusion index (pid {holder}) is writing this library; "
                                       "wait for it to finish, then run again") from None
                time.sleep(0.05)
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield


def index_paths(paths: list[Path], db: Path | None = None, rebuild_first: bool = False,
                runtime: Runtime | None = None, batch_size: int = 4, workers: int = 1,
                bar=None, index_type: str | None = None, ray: "RayOptions | None" = None,
                processes: int | None = None, notice=None) -> dict:
    """Bring the library up to date with `paths`. `bar(total)` may return a progress object
    with update(n) and set_postfix_str(s). With `ray`, photos are read, decoded and encoded
    on Ray Data workers (indexer/on_ray.py); else by `processes` worker processes (None:
    automatic, see indexer/processes.py; 0: in this process). Everything else is the same.
    `notice(text)`, if given, hears of one-off work before the photos (the caption memory).
    Returns the summary (see `fusion index --help`)."""
    root = library_dir(db)
    check_root(root)  # before the lock file is made in it
    runtime = runtime or Runtime(image_precision=Runtime.library_precision(recorded_model(root)[1]))
    with writer_lock(root):
        try:
            return _index(paths, root, rebuild_first, runtime, batch_size, workers, bar, index_type, ray, processes,
                          notice)
        except DiskFullError:
            raise
        except Exception as e:  # the batch in flight rolls back; committed photos stay
            if is_disk_full(e):
                raise disk_full(root, e, "run fusion index again") from None
            raise


def _index(paths, root: Path, rebuild_first: bool, runtime: Runtime, batch_size: int, workers: int,
           bar, index_type, ray, processes, notice) -> dict:
    start = time.perf_counter()
    if rebuild_first and root.is_dir():
        rebuild(root, runtime)
    model_path = str(Path(runtime.checkpoint_path).resolve()) if runtime.checkpoint_path else SHIPPED_MODEL
    with contextlib.closing(Library.open(root, runtime.fingerprint, runtime.dim, create=True, writer=True,
                                         model_path=model_path)) as lib:
        skipped: list[dict] = []
        files, roots = walk(paths, skipped)
        with lib.session() as s:
            todo = plan(s, files, roots, skipped)
        summary = {"added": 0, "updated": 0, "renamed": 0, "removed": 0, "unchanged": todo.unchanged,
                   "skipped": todo.skipped, "captions_added": 0, "captions_removed": 0}
        timing = Timing()
        writer = Writer(lib, timing)
        existing = {f.path: pid for pid, f in todo.changed}
        renames = {sha: pid for pid, (_path, sha) in todo.missing.items()}
        work = todo.new + [f for _pid, f in todo.changed]
        if work:  # one-off work first, so that photos/s counts only the photos' own
            prepare_engine(runtime, notice)
            prepare_memory(runtime, notice)
        progress = bar(len(work)) if (bar and work) else None
        photo_start = time.perf_counter()
        procs = (0, 0) if ray is not None else plan_processes(len(work), processes, runtime.engine)
        if ray is not None and work:
            from indexer.on_ray import ray_photo_stream  # Ray is imported only with --ray

            stream = ray_photo_stream(work, runtime, set(renames), timing, ray, batch_size)
        elif procs[0]:
            stream = process_photo_stream(work, runtime, set(renames), timing, *procs, batch_size)
        else:
            if work:
                runtime.image_encoder.warm()  # load before timing the photos
                photo_start = time.perf_counter()
            stream = photo_stream(work, runtime, set(renames), timing, workers, batch_size, WRITE_BATCH)
        summary["processes"] = procs[0]
        _write_photos(stream, writer, existing, renames, summary, skipped, progress, runtime, batch_size)
        photo_s = time.perf_counter() - photo_start
        writer.remove(list(renames.values()))  # missing and not renamed: deleted from disk
        summary["removed"] = len(renames)
        for p in paths:
            if is_dataset(p):
                added, removed = index_captions(lib, Path(p), runtime)
                summary["captions_added"] += added
                summary["captions_removed"] += removed
        lib.maintain(index_type)
        lib.save()
        if progress:
            progress.close()
        info = lib.info()
    seconds = time.perf_counter() - start
    encoded = summary["added"] + summary["updated"]
    summary.update(photos=info["photos"], captions=info["captions"], seconds=round(seconds, 3),
                   photos_per_s=round(encoded / photo_s, 1) if encoded else 0.0,
                   timing=timing.as_dict(), library=str(root))
    return summary


def _write_photos(stream, writer: Writer, existing: dict, renames: dict, summary: dict, skipped: list,
                  progress, runtime: Runtime, batch_size: int) -> None:
    """Commit what `stream` yields (see pipeline.photo_stream), in its order. A path is taken
    once: were Ray ever to hand back a task's results twice, nothing is written twice."""
    seen: set[str] = set()
    copies = []
    for event in stream:
        if isinstance(event, Encoded):
            keep = [n for n, it in enumerate(event.items) if it.stat.path not in seen]
            if keep:
                items = [event.items[n] for n in keep]
                writer.write(items, [event.rerank[n] for n in keep], event.vectors[keep],
                             [event.signatures[n] for n in keep], existing)
                for it in items:
                    seen.add(it.stat.path)
                    summary["updated" if it.stat.path in existing else "added"] += 1
            done = len(keep)
        elif (event.path if isinstance(event, Exception) else event.stat.path) in seen:
            continue
        elif isinstance(event, Exception):
            seen.add(event.path)
            skipped.append({"path": event.path, "reason": event.reason})
            done = 1
        else:  # same content as a photo gone from its old path
            seen.add(event.stat.path)
            pid = renames.pop(event.sha, None)
            if pid is None:  # a second copy of a renamed photo: encoded as a new one below
                copies.append(event.stat)
                continue
            writer.rename(pid, event)
            summary["renamed"] += 1
            done = 1
        if progress:
            progress.update(done)
    if copies:  # rare: encoded here, in-process
        for event in photo_stream(copies, runtime, set(), writer.timing, 1, batch_size, WRITE_BATCH):
            if isinstance(event, Exception):
                skipped.append({"path": event.path, "reason": event.reason})
            else:
                writer.write(event.items, event.rerank, event.vectors, event.signatures, existing)
                summary["added"] += len(event.items)
            if progress:
                progress.update(1 if isinstance(event, Exception) else len(event.items))
