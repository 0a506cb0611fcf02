"""What queries answer: hits, caption hits, results with notes, the filters a query takes,
and the error a query that cannot be answered raises."""

from __future__ import annotations

from dataclasses import dataclass, field

from retrieval.errors import FusionError


class QueryError(FusionError):
    """A query or its options cannot be answered as given."""


@dataclass(frozen=True)
class Filters:
    under: str | None = None  # absolute folder prefix
    after: float | None = None  # epoch seconds, on EXIF capture time else mtime
    before: float | None = None

    def active(self) -> bool:
        return any(v is not None for v in (self.under, self.after, self.before))


@dataclass
class Hit:
    rank: int
    id: int
    path: str
    score: float  # what the order is by: itc + weight * the reranker's match logit
    itc: float  # cosine in the shared space
    itm: float | None = None  # the reranker's calibrated match probability, when reranked
    share: float | None = None  # chance it is the photo described, if that is among the candidates
    also: list[str] = field(default_factory=list)  # the same shot's other files (a RAW beside its JPEG)
    likely: bool | None = None  # among the top results holding LIKELY of the shares (None: not drawn)


@dataclass
class CaptionHit:
    rank: int
    id: int | None  # the caption's id in the library; None for one from the caption memory
    text: str
    score: float  # what the order is by: ITC, rescored as the model's describe settings say
    image_path: str | None = None  # the photo a library caption was written for, if any
    source: str = "library"  # or "memory": the captions shipped with the model


@dataclass
class Results:
    hits: list
    notes: list[str] = field(default_factory=list)  # e.g. the query was truncated
