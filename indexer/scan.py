"""Find photos under the given paths and compare them with the library: new, changed, unchanged
(same size and mtime: not read at all) and missing (indexed under these roots, gone from disk)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from retrieval.encoders.images import is_photo_name
from retrieval.store.meta import Photo, PhotoFeatures


@dataclass(frozen=True)
class FileStat:
    path: str  # absolute, symlinks in the folder part resolved
    size: int
    mtime_ns: int


@dataclass
class Plan:
    new: list[FileStat] = field(default_factory=list)
    changed: list[tuple[int, FileStat]] = field(default_factory=list)  # (photo id, new stat)
    unchanged: int = 0
    missing: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> (path, sha)
    skipped: list[dict] = field(default_factory=list)  # {path, reason}


def walk(roots: list[Path], skipped: list[dict]) -> tuple[list[FileStat], list[Path]]:
    """Photo files under `roots` (files named directly count too, except .jsonl caption
    files, which are caption corpora, not photos). Symlinked folders are not
    followed (no loops, no escaping the tree); broken links and unreadable entries are skipped
    with a reason. Returns the files and the resolved roots."""
    files: dict[str, FileStat] = {}
    resolved = []
    for root in roots:
        root = Path(os.path.abspath(root))
        resolved.append(root)
        if root.is_file():
            if root.suffix.lower() != ".jsonl":  # a caption corpus, indexed as captions
                _add(root, files, skipped)
            continue
        if not root.is_dir():
            skipped.append({"path": str(root), "reason": "no such file or folder"})
            continue

        def onerror(e, _skipped=skipped):
            _skipped.append({"path": e.filename, "reason": f"cannot list folder ({e.strerror})"})

        for folder, _dirs, names in os.walk(root, onerror=onerror):
            for name in names:
                if is_photo_name(name):
                    _add(Path(folder) / name, files, skipped)
    return sorted(files.values(), key=lambda f: f.path), resolved


def _add(path: Path, files: dict, skipped: list) -> None:
    try:
        st = path.stat()  # follows a symlinked file to its photo
    except OSError as e:
        reason = "broken symlink" if path.is_symlink() else (e.strerror or str(e))
        skipped.append({"path": str(path), "reason": reason})
        return
    if not os.path.isfile(path):
        skipped.append({"path": str(path), "reason": "not a regular file"})
        return
    files[str(path)] = FileStat(str(path), st.st_size, st.st_mtime_ns)


def plan(s: Session, files: list[FileStat], roots: list[Path], skipped: list[dict]) -> Plan:
    """Compare the files on disk with the photos the library holds under `roots`."""
    out = Plan(skipped=skipped)
    known = {p.path: p for p in s.scalars(select(Photo)).all() if _under(p.path, roots)}
    with_features = set(s.scalars(select(PhotoFeatures.photo_id).where(
        PhotoFeatures.rerank.is_not(None), PhotoFeatures.signature.is_not(None))))
    for f in files:
        row = known.pop(f.path, None)
        if row is None:
            out.new.append(f)
        elif row.size == f.size and row.mtime_ns == f.mtime_ns and row.id in with_features:
            out.unchanged += 1
        else:
            out.changed.append((row.id, f))
    skipped_paths = {d["path"] for d in skipped}
    for path, row in known.items():
        if path not in skipped_paths:  # a file we could not read this time is not deleted
            out.missing[row.id] = (path, row.sha)
    return out


def _under(path: str, roots: list[Path]) -> bool:
    return any(path == str(r) or path.startswith(str(r).rstrip(os.sep) + os.sep) for r in roots)
