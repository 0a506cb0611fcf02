"""`fusion serve`: models and indexes stay loaded; JSON search, similar and describe over HTTP
on localhost (FastAPI on uvicorn)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import date, datetime
from pathlib import Path

from starlette.requests import Request  # module level: FastAPI resolves the annotation here

from retrieval.encoders.images import NOT_FOR_BROWSERS
from retrieval.errors import FusionError, is_disk_full
from retrieval.model.query_side import LIKELY
from retrieval.query.combine import Combined, Upload
from retrieval.query.duplicates import DEFAULT_THRESHOLD, duplicate_groups
from retrieval.query.results import Filters, QueryError
from retrieval.query.search import Searcher
from retrieval.serve.guard import Guard, install

MAX_QUERY_CHARS = 2000
MAX_PARTS = 8  # add + minus words per query
RENDITION = 2048  # longer side of the JPEG sent for photos browsers cannot show
MAX_UPLOAD = 64 << 20  # bytes of a photo sent to search by (POST /api/search)


def create_app(searcher: Searcher, guard: Guard | None = None):
    from fastapi import FastAPI, Query
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="Fusion Retrieval", docs_url="/api/docs", openapi_url="/api/openapi.json")
    install(app, guard or Guard.for_address("127.0.0.1", 8765))  # Host check, token; no CORS headers
    # One query at a time, always on the same thread: torch already uses every core for one
    # query, and work spread over the request threads left memory in each thread's malloc arena
    # (server RSS crept 825 -> 899 MB over 8,000 requests; in one thread the same work stays
    # flat). Thumbnails decode on two threads of their own. FUSION_SERVE_PARALLEL=1 lets reads
    # overlap instead, only for benchmarks/serve_load.py to measure the difference.
    parallel = os.environ.get("FUSION_SERVE_PARALLEL") == "1"
    models = ThreadPoolExecutor(8 if parallel else 1, thread_name_prefix="fusion-model")
    images = ThreadPoolExecutor(2, thread_name_prefix="fusion-image")

    def model(fn, *args):
        return models.submit(fn, *args).result()

    def fresh() -> Searcher:
        searcher.refresh()  # a stat of four files; reopens only after an index run
        return searcher

    @app.exception_handler(FusionError)
    async def _fusion_error(_request, exc: FusionError):
        return JSONResponse({"error": str(exc)}, status_code=400)

    def hits(results) -> dict:
        # likely_level: the share the hits flagged `likely` hold together (the page's line says it)
        return {"results": [asdict(h) for h in results.hits], "notes": results.notes, "likely_level": LIKELY}

    def filters(under, after, before) -> Filters:
        ts = [None if d is None else datetime.combine(d, datetime.min.time()).timestamp() for d in (after, before)]
        return Filters(under, *ts)

    @app.get("/api/health")
    def health():
        model(fresh)
        return {"photos": len(searcher.lib.photos), "captions": len(searcher.lib.captions),
                "model": searcher.runtime.fingerprint}

    @app.get("/api/search")
    def search(q: str | None = Query(None, max_length=MAX_QUERY_CHARS),
               like: int | None = Query(None, ge=1, description="id of a library photo the results should look like"),
               add: list[str] = Query([], max_length=MAX_QUERY_CHARS, description="words to match too"),
               minus: list[str] = Query([], max_length=MAX_QUERY_CHARS, description="words not to match"),
               k: int = Query(10, ge=1, le=1000), candidates: int = Query(32, ge=1, le=1000),
               rerank: bool = True, under: str | None = Query(None, max_length=4096),
               after: date | None = None, before: date | None = None):
        if len(add) + len(minus) > MAX_PARTS:
            raise QueryError(f"{len(add) + len(minus)} add/minus parts: at most {MAX_PARTS}")
        def work():
            s = fresh()
            query = Combined(q, None if like is None else s.photo_path(like), tuple(add), tuple(minus))
            return hits(s.combined(query, k, candidates, rerank, filters(under, after, before)))

        return model(work)

    @app.post("/api/search")
    async def search_by_photo(request: Request, q: str | None = Query(None, max_length=MAX_QUERY_CHARS),
                              add: list[str] = Query([], max_length=MAX_QUERY_CHARS),
                              minus: list[str] = Query([], max_length=MAX_QUERY_CHARS),
                              k: int = Query(10, ge=1, le=1000), candidates: int = Query(32, ge=1, le=1000),
                              rerank: bool = True, under: str | None = Query(None, max_length=4096),
                              after: date | None = None, before: date | None = None):
        """A photo that is not in the library (the request body: its bytes, as a browser sends
        a dropped file), with the same words and filters as GET /api/search."""
        if len(add) + len(minus) > MAX_PARTS:
            raise QueryError(f"{len(add) + len(minus)} add/minus parts: at most {MAX_PARTS}")
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_UPLOAD:
                return JSONResponse({"error": f"the photo is over {MAX_UPLOAD >> 20} MB; send a smaller one"},
                                    status_code=413)
        if not data:
            raise QueryError("no photo: send its bytes as the request body (POST, e.g. a dropped file)")
        upload = Upload("the photo you sent", bytes(data))

        def work():
            s = fresh()
            return hits(s.combined(Combined(q, upload, tuple(add), tuple(minus)), k, candidates, rerank,
                                   filters(under, after, before)))

        return await run_in_threadpool(model, work)

    @app.get("/api/similar")
    def similar(id: int = Query(..., ge=1), k: int = Query(10, ge=1, le=1000),
                under: str | None = Query(None, max_length=4096), after: date | None = None,
                before: date | None = None):
        return model(lambda: hits(fresh().similar(searcher.photo_path(id), k, filters(under, after, before))))

    @app.get("/api/describe")
    def describe(id: int = Query(..., ge=1), k: int = Query(5, ge=1, le=100)):
        return model(lambda: hits(fresh().describe(searcher.photo_path(id), k)))

    @app.get("/api/duplicates")
    def duplicates(threshold: float = Query(DEFAULT_THRESHOLD, gt=0, le=1)):
        groups = model(lambda: duplicate_groups(fresh().lib, threshold))
        return {"groups": [asdict(g) for g in groups]}

    @app.get("/", include_in_schema=False)
    def page():
        return HTMLResponse(_page())

    @app.get("/api/thumb/{photo_id}")
    def thumb(photo_id: int, size: int = Query(256, ge=32, le=1024)):
        path = model(lambda: fresh().servable_photo(photo_id))
        return jpeg_response(images.submit(thumbnail, searcher.lib.root, photo_id, path, size).result(), 86400)

    @app.get("/api/photo/{photo_id}")
    def photo(photo_id: int):
        # only files the library records, by id: no path from the request reaches the disk
        path = model(lambda: fresh().servable_photo(photo_id))
        if Path(path).suffix.lower() in NOT_FOR_BROWSERS:  # HEIC, TIFF, RAW: a JPEG rendition
            return jpeg_response(images.submit(thumbnail, searcher.lib.root, photo_id, path, RENDITION).result(), 3600)
        return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})

    return app


def _page() -> str:
    from importlib import resources

    return resources.files("retrieval.serve").joinpath("web/index.html").read_text("utf-8")


def jpeg_response(thumb: "Path | bytes", max_age: int):
    from fastapi.responses import FileResponse, Response

    headers = {"Cache-Control": f"private, max-age={max_age}"}
    if isinstance(thumb, bytes):
        return Response(thumb, media_type="image/jpeg", headers=headers)
    return FileResponse(thumb, media_type="image/jpeg", headers=headers)


def thumbnail(root: Path, photo_id: int, path: str, size: int) -> "Path | bytes":
    """A JPEG thumbnail cached under the library folder (never beside the user's photos),
    keyed by photo id, file mtime and size so an edited photo gets a new one. When the disk
    is full it is made in memory and not cached: the page keeps working."""
    import io

    from PIL import Image

    from retrieval.encoders.images import open_image

    mtime = os.stat(path).st_mtime_ns
    out = root / "thumbs" / f"{photo_id}-{mtime}-{size}.jpg"
    if not out.is_file():
        img = open_image(path, min_side=size)
        img.thumbnail((size, size), Image.BICUBIC)
        buf = io.BytesIO()  # encoded in memory: PIL's encoder can cut a file short on a full disk
        img.save(buf, "JPEG", quality=85)
        # a name of its own per call: two requests for the same thumbnail at once (the page asks
        # for it while a client does too) must not write and rename the same temporary file
        tmp = out.with_name(f"{out.name}.{os.getpid()}-{threading.get_ident()}.tmp")
        try:
            out.parent.mkdir(exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(buf.getvalue())
            os.replace(tmp, out)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if not is_disk_full(e):
                raise
            return buf.getvalue()
    return out


def serve(searcher: Searcher, host: str = "127.0.0.1", port: int = 8765, guard: Guard | None = None) -> None:
    import uvicorn

    searcher.text("warm up", 1)  # load the text model before the first request
    # bounded: at most 128 requests in flight (past that 503; 32 clients measured without one in
    # benchmarks/results/serve_load.md), short keep-alive, GET with bounded query strings only
    uvicorn.run(create_app(searcher, guard or Guard.for_address(host, port)), host=host, port=port, log_level="warning",
                limit_concurrency=128, timeout_keep_alive=5, h11_max_incomplete_event_size=16_384)
