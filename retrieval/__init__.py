"""Fusion Retrieval: search photos by describing them, offline."""

__version__ = "0.1.0"
