"""The `fusion` command: thin click commands over library functions. This package is the only
place that prints for the user or chooses exit codes."""

from retrieval.cli import library, model, onnx  # noqa: F401  (they register their commands)
from retrieval.cli.base import main

__all__ = ["main"]
