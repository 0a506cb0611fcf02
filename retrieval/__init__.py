"""Fusion Retrieval: search photos by describing them, offline."""

import os

# numpy's OpenBLAS threads spin-wait after each call and steal the cores from torch's next
# step: a served search took 21.7 ms with them, 13.1 ms without (2 cores; our numpy work is
# a query's small matrices). Set before numpy loads; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
