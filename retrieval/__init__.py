"""Fusion Retrieval: search photos by describing them, offline.

The Python API (retrieval/api.py) is here at the top, loaded on first use:

    import retrieval
    lib = retrieval.open_library("my-library")
    lib.index(["data/demo"])
    print(lib.search("a dog on a beach", k=3).hits[0].path)
"""

import os

# numpy's OpenBLAS threads spin-wait after each call and steal the cores from torch's next
# step: a served search took 21.7 ms with them, 13.1 ms without (2 cores; our numpy work is
# a query's small matrices). Set before numpy loads; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"

# name -> module it comes from; imported when first asked for, so that `fusion search` pays
# for none of it
_API = {
    "open_library": "retrieval.api", "PhotoLibrary": "retrieval.api", "IndexSummary": "retrieval.api",
    "Skipped": "retrieval.api", "Results": "retrieval.query.results", "Hit": "retrieval.query.results",
    "CaptionHit": "retrieval.query.results", "QueryError": "retrieval.query.results",
    "Group": "retrieval.query.duplicates", "FusionError": "retrieval.errors", "ImageError": "retrieval.errors",
    "LibraryError": "retrieval.errors", "ModelMismatchError": "retrieval.errors",
    "CheckpointError": "retrieval.errors", "DatasetError": "retrieval.errors",
}
__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
