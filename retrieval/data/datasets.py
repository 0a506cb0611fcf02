"""Captioned dataset folders: `captions.jsonl` (one `{"image", "caption"}` object a line) plus the
images it names, relative to the folder. A captions file whose lines have no `image` is a
text-only caption corpus."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.errors import DatasetError

CAPTIONS_FILE = "captions.jsonl"


@dataclass(frozen=True)
class Caption:
    text: str  # the caption, stripped
    image: int | None  # index into Dataset.images, None for a text-only corpus line
    line: int  # 1-based line number in the captions file
    extra: dict = field(default_factory=dict, compare=False)  # the line's other fields


@dataclass
class Dataset:
    root: Path  # the dataset folder (or the folder holding a bare .jsonl corpus)
    source: Path  # the captions file read
    images: list[str]  # image paths relative to root, in order of first mention
    captions: list[Caption]

    def image_path(self, index: int) -> Path:
        return self.root / self.images[index]

    def texts_by_path(self) -> dict[str, list[str]]:
        """Each captioned image's resolved path with its captions' texts, in file order."""
        out: dict[str, list[str]] = {}
        for c in self.captions:
            if c.image is not None:
                out.setdefault(str(self.image_path(c.image).resolve()), []).append(c.text)
        return out

    def captions_of(self) -> list[list[int]]:
        """For each image, the indices of its captions."""
        out: list[list[int]] = [[] for _ in self.images]
        for i, c in enumerate(self.captions):
            if c.image is not None:
                out[c.image].append(i)
        return out


def is_dataset(path: str | os.PathLike) -> bool:
    """A folder holding captions.jsonl, or a .jsonl file itself."""
    p = Path(path)
    return (p.is_dir() and (p / CAPTIONS_FILE).is_file()) or (p.is_file() and p.suffix == ".jsonl")


def load_dataset(path: str | os.PathLike, check_images: bool = True) -> Dataset:
    """Read a dataset folder (or a bare captions .jsonl). Raises DatasetError naming the file
    and line for malformed JSON, a missing `caption`, an empty caption or a missing image."""
    p = Path(path)
    if p.is_dir():
        source = p / CAPTIONS_FILE
        if not source.is_file():
            raise DatasetError(f"{p}: not a dataset folder (no {CAPTIONS_FILE} inside)")
    elif p.is_file():
        source = p
    else:
        raise DatasetError(f"{p}: no such dataset folder or captions file")
    root = source.parent
    images: list[str] = []
    index: dict[str, int] = {}
    captions: list[Caption] = []
    with open(source, "rb") as f:
        for n, line in enumerate(f, start=1):
            try:
                raw = line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DatasetError(f"{source}:{n}: not UTF-8 text (byte {e.start + 1} of the line); "
                                   "save the file as UTF-8") from None
            if not raw.strip():
                continue
            obj = _parse(source, n, raw)
            text = obj.get("caption")
            if not isinstance(text, str):
                raise DatasetError(f"{source}:{n}: no \"caption\" string on this line")
            if not text.strip():
                raise DatasetError(f"{source}:{n}: empty caption")
            image = obj.get("image")
            slot = None
            if image is not None and not isinstance(image, str):  # a list or object: unhashable too
                raise DatasetError(f"{source}:{n}: \"image\" must be a non-empty relative path")
            if image is not None:
                slot = index.get(image)
                if slot is None:
                    _check_image(source, n, root, image, check_images)
                    slot = index[image] = len(images)
                    images.append(image)
            extra = {k: v for k, v in obj.items() if k not in ("caption", "image")}
            captions.append(Caption(text.strip(), slot, n, extra))
    if not captions:
        raise DatasetError(f"{source}: holds no captions")
    return Dataset(root, source, images, captions)


def _parse(source: Path, n: int, raw: str) -> dict:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{source}:{n}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{source}:{n}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _check_image(source: Path, n: int, root: Path, image, check: bool) -> None:
    if not isinstance(image, str) or not image:
        raise DatasetError(f"{source}:{n}: \"image\" must be a non-empty relative path")
    if os.path.isabs(image) or ".." in Path(image).parts:
        raise DatasetError(f"{source}:{n}: image path {image!r} must stay inside {root}")
    if check and not (root / image).is_file():
        raise DatasetError(f"{source}:{n}: image {image} not found under {root}")
