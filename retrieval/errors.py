"""Typed errors of the library; only the CLI turns them into messages and exit codes."""


class FusionError(Exception):
    """Base of every error the library raises on purpose."""


class ImageError(FusionError):
    """A file could not be opened as a photo; the message names the file and the reason."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class ImageTooLargeError(ImageError):
    """The header announces more pixels than we agree to decode (decompression bomb guard)."""


class DatasetError(FusionError):
    """A dataset folder or captions file is malformed; the message names file and line."""


class WeightsError(FusionError):
    """A model weights file is missing or does not fit the network it is meant for."""


class CheckpointError(FusionError):
    """A checkpoint is missing, damaged, or was made for other encoders."""


class LibraryError(FusionError):
    """A library directory is missing, damaged, or cannot be used as asked."""


class ModelMismatchError(LibraryError):
    """The library was built with another encoder or checkpoint than the one in use."""
