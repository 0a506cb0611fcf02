"""Typed errors of the library; only the CLI turns them into messages and exit codes."""


class FusionError(Exception):
    """Base of every error the library raises on purpose."""


class ImageError(FusionError):
    """A file could not be opened as a photo; the message names the file and the reason."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # pickled as it was made (fusion index --ray sends skips back from workers)
        return type(self), (self.path, self.reason)


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


class DiskFullError(LibraryError):
    """A write failed because the disk (or the file size limit) is full; nothing committed is lost."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` is a write that failed for lack of space: ENOSPC, EDQUOT, EFBIG (a file
    size limit), SQLite's "database or disk is full" or "disk I/O error" (how SQLite reports
    EFBIG), or FAISS's write error naming one of these."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    text = str(exc)
    return any(s in text for s in ("database or disk is full", "disk I/O error", "No space left on device",
                                   "File too large", "Disk quota exceeded"))


def disk_full(path, exc: BaseException, what: str = "run it again") -> DiskFullError:
    return DiskFullError(f"{path}: the disk is full ({type(exc).__name__}: {str(exc).splitlines()[0][:100]}); "
                         f"free some space, then {what}: nothing already written is lost")
