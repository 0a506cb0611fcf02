"""The Python API, the same one the `fusion` command calls:

    import retrieval

    lib = retrieval.open_library("my-library")          # a folder; made by the first index
    lib.index(["data/demo"], progress=lambda done, total: print(f"{done}/{total}", end="\\r"))
    for hit in lib.search("a dog on a beach", k=3).hits:
        print(hit.rank, f"{hit.share:.0%}", hit.path)

Results are plain dataclasses (retrieval.query.results: Results with hits and notes, Hit,
CaptionHit; Group for duplicates; IndexSummary here); errors are the typed ones of
retrieval.errors (FusionError and its kinds), never exits or prints.

The model: `open_library(db, model=FILE)` indexes with a checkpoint from `fusion train`; the
library records it, and every later open of that library uses it without being told.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Callable, Sequence

from retrieval.errors import CheckpointError, WeightsError
from retrieval.model.runtime import Runtime
from retrieval.query.results import Filters, QueryError, Results
from retrieval.store.library import library_dir, recorded_model

DATE_FORMATS = ("%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m", "%Y")


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class IndexSummary:
    """What an index run did (`fusion index --json` prints it)."""
    added: int
    updated: int
    renamed: int
    removed: int
    unchanged: int
    skipped: list[Skipped]
    captions_added: int
    captions_removed: int
    photos: int  # in the library afterwards
    captions: int
    seconds: float
    photos_per_s: float  # photos encoded per second of the photos' own work
    library: str
    processes: int = 0
    timing: dict = field(default_factory=dict)  # decode_s, forward_s, write_s, ...

    def as_dict(self) -> dict:
        return asdict(self)


def open_library(db: str | os.PathLike | None = None, model: str | os.PathLike | None = None) -> "PhotoLibrary":
    """The library in folder `db` (default: $FUSION_HOME, else ~/.local/share/fusion).
    `model`: a checkpoint file from `fusion train` to index with; None: the model the library
    was indexed with (the shipped one for a new library). Raises CheckpointError when the
    model cannot be loaded, LibraryError / ModelMismatchError as the queries do."""
    return PhotoLibrary(library_dir(db), model)


def model_runtime(root: Path, model: str | os.PathLike | None) -> Runtime:
    """The Runtime of `model`, else of the checkpoint the library at `root` recorded; its image
    network at the precision the library was made with, unless FUSION_IMAGE_PRECISION asks for
    another (a plain index then refuses the library, and --rebuild encodes it again at that
    precision) or another model is given; a new library: FUSION_IMAGE_PRECISION, else int8
    where the network's calibration ships."""
    recorded, fingerprint = recorded_model(root)  # one read of the library's record for both
    same_model = model is None or (recorded is not None and str(Path(model).expanduser().resolve()) == recorded)
    precision = Runtime.library_precision(fingerprint) if same_model else None
    if model is None:
        if not recorded:
            return Runtime(image_precision=precision)
        if not Path(recorded).is_file():
            raise CheckpointError(f"{root}: indexed with the model {recorded}, which is gone; put it back, or "
                                  f"re-index with another: fusion index --rebuild --model FILE PATH --db {root}")
        model = recorded
    path = Path(model).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file; give a checkpoint made by fusion train --out FILE")
    runtime = Runtime(path.resolve(), image_precision=precision)
    _ = runtime.fingerprint  # reads the file: a damaged or foreign one fails here, in one line
    return runtime


class PhotoLibrary:
    """One library and the model it is indexed with. Queries open the library on first use."""

    def __init__(self, root: Path, model: str | os.PathLike | None = None):
        self.root = root
        self.runtime = model_runtime(root, model)
        self._searcher = None

    @property
    def model(self) -> str:
        """The model's fingerprint (what the library records and checks)."""
        return self.runtime.fingerprint

    @property
    def searcher(self):
        """The query engine (retrieval.query.search.Searcher), opened once."""
        if self._searcher is None:
            from retrieval.query.search import open_searcher

            self._searcher = open_searcher(self.root, self.runtime)
        return self._searcher

    def index(self, paths: Sequence[str | os.PathLike], progress: Callable[[int, int], None] | None = None,
              notice: Callable[[str], None] | None = None, rebuild: bool = False, workers: int = 1,
              batch_size: int = 4, processes: int | None = None, index_type: str | None = None,
              ray=None, bar=None) -> IndexSummary:
        """Index (or re-sync) photo folders, photos and captions files. `progress(done, total)`
        is called as photos are done; `notice(text)` hears of one-off work (the caption memory);
        `bar(total)` may instead return a tqdm-like object. Skipped files are listed in the
        summary, not raised; an error that stops the run raises (committed photos stay)."""
        from indexer.run import index_paths

        self.require_image_network()
        if progress is not None and bar is None:
            bar = _CallbackBar.maker(progress)
        self.close()
        s = index_paths([Path(p) for p in paths], self.root, rebuild, runtime=self.runtime, batch_size=batch_size,
                        workers=workers, bar=bar, index_type=index_type, ray=ray, processes=processes,
                        notice=notice)
        s["skipped"] = [Skipped(**item) for item in s["skipped"]]
        return IndexSummary(**s)

    def require_image_network(self) -> None:
        """WeightsError in one line naming the model file, before any photo is read, when the
        model's image network is unknown to this fusion or not installed here."""
        from retrieval.encoders.image_encoder import CONFIGS
        from retrieval.encoders.networks import require_network

        name = self.runtime.config.image_encoder
        try:
            if name not in CONFIGS:
                raise WeightsError(f"made for the image network {name!r}, which this fusion does not have "
                                   f"({', '.join(CONFIGS)})")
            require_network(name)
            if name == "resnet50" and self.runtime.image_weights is None:
                raise WeightsError("made for resnet50, whose weights file fusion index does not take; "
                                   "train on efficientnet-lite0/1/2 to index with it")
        except WeightsError as e:
            raise WeightsError(f"{self.runtime.query.path}: {e}") from None

    def search(self, text: str | None = None, k: int = 10, *, like: str | os.PathLike | None = None,
               add: Sequence[str] = (), minus: Sequence[str] = (), candidates: int = 32, rerank: bool = True,
               under: str | os.PathLike | None = None, after=None, before=None) -> Results:
        """Photos by words, by an example photo (`like`) or both, with words to add or take
        away; `under`, `after`, `before` filter by folder and date (a date, datetime,
        "YYYY-MM-DD" or epoch seconds). Hits come best first with their share."""
        from retrieval.query.combine import Combined

        if text is None and like is None and not add:
            raise QueryError("give words, a photo to look like (like=...) or words to add (add=...)")
        q = Combined(text, Path(like) if like is not None else None, tuple(add), tuple(minus))
        return self.searcher.combined(q, k, candidates, rerank, filters(under, after, before))

    def similar(self, photo: str | os.PathLike, k: int = 10, *, under=None, after=None, before=None) -> Results:
        """Photos that look like `photo` (which need not be in the library)."""
        return self.searcher.similar(Path(photo), k, filters(under, after, before))

    def describe(self, photo: str | os.PathLike, k: int = 5) -> Results:
        """The captions that fit `photo` best (CaptionHit), from indexed captions else the memory."""
        return self.searcher.describe(Path(photo), k)

    def duplicates(self, threshold: float | None = None) -> list:
        """Groups (retrieval.query.duplicates.Group) of near-duplicate photos; never deletes."""
        from retrieval.query.duplicates import DEFAULT_THRESHOLD, duplicate_groups

        return duplicate_groups(self.searcher.lib, DEFAULT_THRESHOLD if threshold is None else threshold)

    def info(self) -> dict:
        """What the library holds: photos, captions, index type, model and its file, bytes."""
        return self.searcher.lib.info()

    def close(self) -> None:
        if self._searcher is not None:
            self._searcher.lib.close()
            self._searcher = None

    def __enter__(self) -> "PhotoLibrary":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def filters(under=None, after=None, before=None) -> Filters:
    return Filters(os.path.abspath(under) if under else None, timestamp(after, "after"), timestamp(before, "before"))


def timestamp(value, name: str) -> float | None:
    """Epoch seconds of a date filter: a date, datetime, number or text such as 2024-06-30."""
    if value is None or isinstance(value, (int, float)):
        return value
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day).timestamp()
    for fmt in DATE_FORMATS:
        try:
            return datetime.strptime(str(value), fmt).timestamp()
        except ValueError:
            pass
    raise QueryError(f"{name}={value!r} is not a date; use YYYY-MM-DD, e.g. 2024-06-30")


class _CallbackBar:
    """The progress-bar protocol indexer.run expects, calling progress(done, total)."""

    def __init__(self, progress, total: int):
        self.progress, self.total, self.done = progress, total, 0

    @classmethod
    def maker(cls, progress):
        return lambda total: cls(progress, total)

    def update(self, n: int) -> None:
        self.done += n
        self.progress(self.done, self.total)

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass
