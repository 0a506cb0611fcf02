"""ONNX Runtime, the inference engine of the encoders (`fusion index`, `search`, `similar`,
`describe`, `serve`, the index workers and Ray actors): the same networks as the torch
modules, exported from the same weights (retrieval/encoders/onnx_export.py), about twice as
fast on two cores, and a text query needs neither torch nor a hand-written forward pass.

Graphs are built once per machine and model, then cached (`onnx_cache_dir()`, about 24 MB for
Lite0 and 90 MB for MiniLM): the weights already ship in their own packages, and shipping the
graphs too would triple the package. Building one imports torch (a few seconds); `fusion
export-onnx` builds them ahead, and `fusion index` builds them before its first photo. A graph's
file name carries a hash of what it is made from (network, input side, folded batch norms, the
weights file's path, size and time, the export code's version), so new weights get a new graph."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from retrieval.data.cache import onnx_cache_dir
from retrieval.errors import WeightsError

EXPORT_VERSION = 1  # bump when onnx_export changes what a graph computes
ENGINES = ("onnx", "torch")
_lock = threading.RLock()  # one build at a time in a process (threads of fusion serve); re-entered
# by the int8 graph, whose build ensures the float32 graph first


def default_engine() -> str:
    """The engine the query side and the indexer use: FUSION_ENGINE, else ONNX Runtime."""
    engine = os.environ.get("FUSION_ENGINE", "onnx")
    if engine not in ENGINES:
        raise WeightsError(f"FUSION_ENGINE={engine!r}: use one of {', '.join(ENGINES)}")
    return engine


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def file_identity(path: Path) -> str:
    st = Path(path).stat()
    return f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"


def graph_path(kind: str, ident: str, cache_dir: Path | None = None) -> Path:
    key = hashlib.sha256(f"{EXPORT_VERSION}|{ident}".encode()).hexdigest()[:16]
    return (cache_dir or onnx_cache_dir()) / f"{kind}-{key}.onnx"


def _source_record(source: Path) -> dict:
    st = source.stat()
    return {"path": str(source.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _stale(record_file: Path) -> bool:
    """Whether the graph beside `record_file` was exported from weights that are gone or were
    replaced (a reinstalled package: same path, another size or time), or by a fusion that
    kept no record (it cannot tell; exporting again takes seconds)."""
    try:
        record = json.loads(record_file.read_text())
        return _source_record(Path(record["path"])) != record
    except (OSError, ValueError, KeyError, TypeError):
        return True


def sweep_stale(path: Path) -> list[Path]:
    """Remove the cached graphs of `path`'s network (`name-<hash>.onnx` beside it) that are
    stale (_stale): each is 24-90 MB, and every reinstall of a weights package would otherwise
    leave one behind. Returns the graphs removed."""
    kind = path.stem.rsplit("-", 1)[0]
    pattern = re.compile(re.escape(kind) + r"-[0-9a-f]{16}\.onnx")
    gone = []
    for other in path.parent.glob(f"{kind}-*.onnx"):
        if other != path and pattern.fullmatch(other.name) and _stale(other.with_suffix(".source")):
            other.unlink(missing_ok=True)
            other.with_suffix(".source").unlink(missing_ok=True)
            gone.append(other)
    return gone


class Graph:
    """One cached graph and its ONNX Runtime session, built and loaded on first use. `source`:
    the weights file it is exported from, recorded beside it so that a later export can tell a
    stale graph (sweep_stale)."""

    def __init__(self, path: Path, build: Callable[[Path], Path], threads: int | None = None, label: str = "",
                 source: Path | None = None):
        self.path, self._build, self.threads, self.source = path, build, threads, source
        self.label = label or path.stem  # what a notice calls it
        self._session = None

    def ensure(self, notice: Callable[[str], None] | None = None) -> Path:
        """The graph file, exported first if this machine does not have it yet."""
        with _lock:
            if not self.path.is_file():
                if notice:
                    notice(f"exporting {self.label} to ONNX Runtime (once per machine and model, seconds)")
                try:
                    self._build(self.path)
                    if self.source is not None:
                        self.path.with_suffix(".source").write_text(json.dumps(_source_record(self.source)))
                        sweep_stale(self.path)
                except OSError as e:
                    raise WeightsError(f"{self.path}: cannot write the ONNX graph ({e.strerror or e}); "
                                       "set FUSION_CACHE to a writable folder") from None
        return self.path

    @property
    def session(self):
        if self._session is None:
            preloaded = _take_preloaded(self.path, self.threads)
            if preloaded is not None:
                self._session = preloaded
                return preloaded
            for attempt in (1, 2):
                try:
                    self._session = open_session(self.ensure(), self.threads)
                    break
                except WeightsError:
                    raise
                except Exception as e:  # a truncated or foreign file in the cache: build it again, once
                    self.path.unlink(missing_ok=True)
                    if attempt == 2:
                        raise WeightsError(f"{self.path}: unreadable ONNX graph ({str(e).splitlines()[0][:200]})"
                                           "; run fusion export-onnx --force") from None
        return self._session

    def run(self, feeds: dict) -> list[np.ndarray]:
        return self.session.run(None, feeds)


def open_session(path: Path, threads: int | None = None):
    """An ONNX Runtime session on `path`, tuned for these small CPU machines."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or usable_cpus()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # warnings about unused initialisers are noise here
    # idle threads sleep instead of spinning: the photos' decode threads need the cores
    # (370 COCO photos indexed in one process: 58.6-61.7 photos/s spinning, 72.4-78.9 not)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


_preloads: dict[tuple, tuple[threading.Thread, list]] = {}


def preload(path: Path, threads: int | None = None) -> None:
    """Start loading the session of an existing graph in a thread: ONNX Runtime reads and
    optimises the graph without the GIL, so a cold `fusion search` loads MiniLM (0.2 s) while
    it imports the query layer and opens the library. The Graph of `path` takes it over."""
    key = (str(path), threads)
    if key in _preloads or not Path(path).is_file():
        return
    box: list = []

    def load():
        try:
            box.append(open_session(Path(path), threads))
        except Exception:  # the Graph loads it again and reports what is wrong
            pass

    # not a daemon: a command that fails before it takes the session over (no library there,
    # another model's library) must not exit while ONNX Runtime is still building it, which
    # aborted the process (exit 134) after the one-line error; it waits the ~0.2 s instead
    thread = threading.Thread(target=load, name="onnx-preload", daemon=False)
    _preloads[key] = (thread, box)
    thread.start()


def _take_preloaded(path: Path, threads: int | None):
    entry = _preloads.pop((str(path), threads), None)
    if entry is None:
        return None
    entry[0].join()
    return entry[1][0] if entry[1] else None
