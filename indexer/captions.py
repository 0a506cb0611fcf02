"""Caption corpora: the captions of a dataset folder (linked to its photos) or a text-only
`.jsonl`, re-indexed whole when the file changes. A source's size/mtime are recorded only
after all its captions are committed, so a crash mid-way is redone on the next run."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import delete, select

from retrieval.data.datasets import load_dataset
from retrieval.store.library import Library
from retrieval.store.meta import VECTOR_DTYPE, Caption, CaptionSource, new_ids

CHUNK = 512


def index_captions(lib: Library, dataset: Path, runtime, progress=None) -> tuple[int, int]:
    """(added, removed) captions for one dataset folder or captions file."""
    ds = load_dataset(dataset, check_images=False)
    source_path = os.path.abspath(ds.source)
    st = ds.source.stat()
    with lib.session() as s, s.begin():
        src = s.scalar(select(CaptionSource).where(CaptionSource.path == source_path))
        if src is not None and src.size == st.st_size and src.mtime_ns == st.st_mtime_ns:
            return 0, 0
        if src is None:
            src = CaptionSource(path=source_path, size=-1, mtime_ns=-1)  # -1: not complete yet
            s.add(src)
            s.flush()
        old = list(s.scalars(select(Caption.id).where(Caption.source_id == src.id)))
        s.execute(delete(Caption).where(Caption.source_id == src.id))
        src.size, src.mtime_ns, source_id = -1, -1, src.id
    lib.captions.remove(old)
    root = Path(os.path.abspath(ds.root))
    caps = ds.captions
    for start in range(0, len(caps), CHUNK):
        chunk = caps[start:start + CHUNK]
        pooled = runtime.text_encoder.encode([c.text for c in chunk], normalize=False).pooled
        vectors = runtime.embed_texts(pooled)
        with lib.session() as s, s.begin():
            ids = new_ids(s, Caption.id, len(chunk))
            s.add_all([Caption(id=i, source_id=source_id, line=c.line, text=c.text,
                               vector=v.astype(VECTOR_DTYPE).tobytes(),
                               image_path=None if c.image is None else str(root / ds.images[c.image]))
                       for i, c, v in zip(ids, chunk, vectors)])
        lib.captions.add(ids, vectors)
        if progress:
            progress(len(chunk))
    with lib.session() as s, s.begin():
        src = s.get(CaptionSource, source_id)
        src.size, src.mtime_ns = st.st_size, st.st_mtime_ns
    return len(caps), len(old)
