"""SQLite metadata through SQLAlchemy: photos, captions, caption sources, the rerank feature
store and the library's own facts (schema version, model fingerprint). SQLite is the source of
truth; the FAISS files are rebuilt from it whenever they disagree."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (Float, ForeignKey, Index, Integer, LargeBinary, String, Text, create_engine, event, func,
                        select, text)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from retrieval.errors import LibraryError, disk_full, is_disk_full
from retrieval.store.reader import BUSY_MS, SCHEMA_VERSION, VECTOR_DTYPE  # noqa: F401 (re-exported)


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Photo(Base):
    __tablename__ = "photos"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # = its FAISS id
    path: Mapped[str] = mapped_column(Text, unique=True, index=True)  # absolute
    size: Mapped[int] = mapped_column(Integer)
    mtime_ns: Mapped[int] = mapped_column(Integer)
    sha: Mapped[str] = mapped_column(String(40), index=True)  # content hash: finds renames
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    taken_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # EXIF capture time, epoch s
    camera: Mapped[str | None] = mapped_column(Text, nullable=True)
    indexed_at: Mapped[float] = mapped_column(Float)


class PhotoFeatures(Base):
    """What search needs without decoding the photo: the ITC vector (FAISS is rebuilt from it)
    and the rerank features: the shipped fusion head's own projection of the image (256
    float16 values; grid cells x 256 for a cross-attention head), computed at index time."""

    __tablename__ = "photo_features"
    # the ids alone, in a b-tree of ~12 bytes a row: opening a library checks them against
    # FAISS without reading the 1.5 KB rows (retrieval/store/library.py, reconcile)
    __table_args__ = (Index("ix_photo_features_ids", "photo_id"),)
    photo_id: Mapped[int] = mapped_column(ForeignKey("photos.id", ondelete="CASCADE"), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # ITC embedding, VECTOR_DTYPE
    rerank: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # float16; NULL: encode again
    # near-duplicate signature (retrieval/encoders/signature.py); NULL: encode again
    signature: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class CaptionSource(Base):
    __tablename__ = "caption_sources"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)  # the captions .jsonl file
    size: Mapped[int] = mapped_column(Integer)
    mtime_ns: Mapped[int] = mapped_column(Integer)


class Caption(Base):
    __tablename__ = "captions"
    __table_args__ = (Index("ix_captions_ids", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # = its FAISS id (caption index)
    source_id: Mapped[int] = mapped_column(ForeignKey("caption_sources.id", ondelete="CASCADE"), index=True)
    line: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    image_path: Mapped[str | None] = mapped_column(Text, nullable=True, index=True)  # absolute
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # ITC embedding, VECTOR_DTYPE


# Each step takes the schema from version N-1 to N; a library is migrated one step at a time.
MIGRATIONS: dict[int, list[str]] = {
    # v2: raw pooled features (2.5 KB) and grid cells give way to the rerank head's projection
    # (0.5 KB) and vectors become float16. Neither converts in SQL: the features go, and the
    # next `fusion index` encodes those photos again (same ids); captions are re-read.
    2: ["DELETE FROM photo_features",
        "ALTER TABLE photo_features ADD COLUMN rerank BLOB",
        "ALTER TABLE photo_features DROP COLUMN pooled",
        "ALTER TABLE photo_features DROP COLUMN grid",
        "DELETE FROM captions",
        "ALTER TABLE captions DROP COLUMN tokens",
        "UPDATE caption_sources SET size = -1, mtime_ns = -1"],
    # v3: near-duplicate signatures; photos without one are encoded again on the next index run
    # and id-only indexes, so opening a library checks FAISS ids without reading whole rows
    3: ["ALTER TABLE photo_features ADD COLUMN signature BLOB",
        "CREATE INDEX IF NOT EXISTS ix_photo_features_ids ON photo_features (photo_id)",
        "CREATE INDEX IF NOT EXISTS ix_captions_ids ON captions (id)"],
}


def open_db(path: Path) -> Engine:
    """Open (or create) the library database in WAL mode, migrating its schema step by step.
    Raises LibraryError when the file is not a readable SQLite database of ours."""
    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _pragmas(conn, _record):
        cur = conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")  # readers never block on the indexer
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={BUSY_MS}")
        cur.close()

    try:
        Base.metadata.create_all(engine)
        with Session(engine) as s, s.begin():
            version = s.get(Meta, "schema_version")
            if version is None:
                s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
            else:
                _migrate(s, int(version.value), path)
    except LibraryError:
        raise
    except Exception as e:
        if is_disk_full(e):  # never advise --rebuild for a full disk
            raise disk_full(path, e, "run again") from None
        raise LibraryError(f"{path}: not a readable library database ({type(e).__name__}: "
                           f"{str(e).splitlines()[0]}); rebuild it with `fusion index --rebuild`") from None
    return engine


def _migrate(s: Session, version: int, path: Path) -> None:
    if version > SCHEMA_VERSION:
        raise LibraryError(f"{path}: made by a newer fusion (schema {version}, this one reads "
                           f"{SCHEMA_VERSION}); upgrade fusion-retrieval")
    for step in range(version + 1, SCHEMA_VERSION + 1):
        for statement in MIGRATIONS[step]:
            s.execute(text(statement))
        s.get(Meta, "schema_version").value = str(step)


def get_meta(s: Session, key: str) -> str | None:
    row = s.get(Meta, key)
    return None if row is None else row.value


def new_ids(s: Session, column, n: int) -> list[int]:
    """`n` ids for new rows of `column`'s table that no row ever had, deleted ones included
    (a plain SQLite rowid reuses the highest after it is deleted). A server can still hold a
    FAISS snapshot with a deleted id: it must never find another photo or caption under it."""
    key = f"last_id.{column.table.name}"
    last = max(int(get_meta(s, key) or 0), s.scalar(select(func.max(column))) or 0)
    set_meta(s, key, str(last + n))
    return list(range(last + 1, last + n + 1))


def set_meta(s: Session, key: str, value: str) -> None:
    row = s.get(Meta, key)
    if row is None:
        s.add(Meta(key=key, value=value))
    else:
        row.value = value
