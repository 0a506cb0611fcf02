"""Library commands: index, info, search, similar, describe, serve."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


from retrieval.cli.base import K_RANGE, db_option, fusion_errors, main
from retrieval.cli.output import print_hits


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@db_option
@click.option("--rebuild", is_flag=True,
              help="Rebuild from what remains: FAISS from an intact SQLite of this model, else "
                   "everything from the photos (needed after a model change or damage).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 32),
              help="Threads decoding photos while the network runs.")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1, 256),
              help="Photos per forward pass (4 is fastest on 2 CPU cores).")
@click.option("--processes", type=click.IntRange(0, 64), help="Worker processes that read, decode and encode "
              "photos; 0: this process. [default: this process; with FUSION_ENGINE=torch, one per core, at most "
              "4, for 300+ photos to encode]")
@click.option("--index-type", type=click.Choice(["auto", "flat", "ivf"]),
              help="Photo vector index: exact (flat), IVF (ivf: only the query's nearest lists scanned; float16 "
                   "codes below 200,000 photos, 8-bit from there), or by library size "
                   "(auto: ivf from 50,000 photos). Remembered by the library. "
                   "[default: auto]")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Read, decode and encode the photos on Ray Data workers (pip install "
                   "'fusion-retrieval[ray]'): --ray alone starts a local Ray on this machine's CPUs; "
                   "--ray=ADDRESS joins a running cluster (auto, HOST:6379 or ray://HOST:10001). "
                   "Every node needs the same fusion-retrieval installed and must read the photos at "
                   "the same paths (a shared filesystem). This machine still plans the run and "
                   "writes the one library (files are listed here, read and hashed only on the "
                   "workers); the result is the same library as without --ray.")
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path),
              help="A checkpoint from fusion train --out FILE to index with. The library records it: "
                   "search, similar, describe, duplicates and serve then use it without being told. "
                   "A library indexed with another model needs --rebuild. [default: the library's "
                   "model; for a new library, the one shipped with fusion]")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@fusion_errors
def index(paths, db, rebuild, workers, batch_size, processes, index_type, ray_address, model, as_json):
    """Index photos under PATHS into the library; run it again whenever they change.

    Finds jpg, jpeg, png, webp, bmp, tif(f), gif, heic/heif (iPhone), avif and camera RAW
    files (dng, cr2, cr3, nef, arw, raf, orf, rw2: the embedded JPEG preview, else a half-size
    demosaic) recursively; other files (videos, sidecars, .txt) are left alone. A file that
    cannot be read as a photo is skipped with its reason: empty, truncated or damaged, not an
    image, a decompression bomb (over 64 megapixels announced), unreadable. A RAW and a JPEG of
    the same shot are both indexed and show once in results. Unchanged files (same
    size and mtime) are not read, changed ones are re-encoded, moved or renamed ones are
    recognised by content and not re-encoded, deleted ones leave the library. A PATH holding
    captions.jsonl (or a .jsonl file) also indexes its captions, for `fusion describe`.

    Exit code 0 when every photo was indexed, 3 when some files were skipped (each is listed
    with its reason), 1 on an error that stopped the run (the library keeps what was
    committed; run again to finish).
    """
    from tqdm import tqdm

    from retrieval.api import open_library

    paths, ray = list(paths), None
    if ray_address is not None:
        if ray_address != "local" and Path(ray_address).exists():  # `--ray ~/Photos`: a folder, not an address
            paths, ray_address = [Path(ray_address)] + paths, "local"
        ray = _ray_options(ray_address)
    if not paths:
        raise click.UsageError("give at least one photo folder, photo or captions file to index")

    def bar(total):
        return tqdm(total=total, unit="photo", file=sys.stderr, disable=as_json or None)

    def notice(text):
        if not as_json:
            click.echo(text, err=True)

    with open_library(db, model) as lib:
        summary = lib.index(paths, notice=notice, rebuild=rebuild, workers=workers, batch_size=batch_size,
                            processes=processes, index_type=index_type, ray=ray, bar=bar)
    s = summary.as_dict()
    if as_json:
        click.echo(json.dumps(s, indent=2))
    else:
        for item in s["skipped"]:
            click.echo(f"skipped {item['path']}: {item['reason']}", err=True)
        t = s["timing"]
        click.echo(f"{s['added']} added, {s['updated']} updated, {s['renamed']} renamed, "
                   f"{s['removed']} removed, {s['unchanged']} unchanged, {len(s['skipped'])} skipped; "
                   f"{s['captions_added']} captions added. Library: {s['photos']} photos, "
                   f"{s['captions']} captions in {s['library']}")
        if s["added"] + s["updated"]:
            click.echo(f"{s['photos_per_s']} photos/s (decode {t['decode_s']} s, forward "
                       f"{t['forward_s']} s, writes {t['write_s']} s); total {s['seconds']} s")
    if s["skipped"]:
        sys.exit(3)


def _ray_options(address: str):
    try:
        from indexer.on_ray import RayOptions
        import ray  # noqa: F401
    except ImportError:
        raise click.UsageError("--ray needs Ray Data: pip install 'fusion-retrieval[ray]'") from None
    return RayOptions(address=None if address == "local" else address)


@main.command()
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print as one JSON object.")
@fusion_errors
def info(db, as_json):
    """What the library holds: photos, captions, index type, model, bytes on disk."""
    from retrieval.api import open_library

    with open_library(db) as lib:
        data = lib.info()
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            click.echo(f"{key:>16}: {value}")


def filter_options(fn):
    fn = click.option("--before", metavar="DATE", help="Only photos taken before DATE (YYYY-MM-DD; EXIF time, else file time).")(fn)
    fn = click.option("--after", metavar="DATE", help="Only photos taken on or after DATE (YYYY-MM-DD).")(fn)
    return click.option("--under", type=click.Path(path_type=Path), help="Only photos under this folder.")(fn)


def check_dates(after, before):
    """--after and --before as usage errors here, before any model loads."""
    from retrieval.api import timestamp
    from retrieval.query.results import QueryError

    for value, name in ((after, "--after"), (before, "--before")):
        try:
            timestamp(value, name)
        except QueryError:
            raise click.BadParameter(f"{value!r} is not a date; use YYYY-MM-DD, e.g. 2024-06-30",
                                     param_hint=name) from None


@main.command()
@click.argument("query", required=False)
@click.option("-k", "k", default=10, show_default=True, type=K_RANGE, help="Results to show.")
@click.option("--candidates", default=32, show_default=True, type=K_RANGE,
              help="ITC top-K that the fusion classifier reranks.")
@click.option("--no-rerank", is_flag=True, help="Rank by the shared space (ITC) alone.")
@click.option("--like", type=click.Path(dir_okay=False, path_type=Path),
              help="A photo the results should look like; with QUERY, photos like it that also match the words.")
@click.option("--add", multiple=True, metavar="WORDS", help="Words the results should also match (repeatable).")
@click.option("--minus", multiple=True, metavar="WORDS", help="Words the results should not match (repeatable).")
@filter_options
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list with rank, path, score, itc, itm (match probability), share, "
                   "likely (above the line).")
@db_option
@fusion_errors
def search(query, k, candidates, no_rerank, like, add, minus, under, after, before, as_json, db):
    """Find photos by describing them: fusion search "a dog on a beach".

    Takes the library's top --candidates photos by the shared space, reranks them with the
    fusion classifier from stored features (photos are not decoded), and prints rank, the
    chance that this is the photo you described if it is among the candidates, and path
    (--json adds the match probability on its own, itm); with --no-rerank, the shared-space
    cosine instead. A line (on stderr, so piped output stays one path a line) marks where the
    likely ones end: the top results whose shares add up to 90%. When even the best photo's
    match probability is below what made-up words reach, a note says no photo matches well.
    Ties break by id, so the order is stable.

    \b
    Combined queries (the share is then a softmax of the fused score; --json has that score):
      fusion search "at night" --like photo.jpg    photos like photo.jpg, at night
      fusion search "a beach" --add "dog"          a beach, and a dog too
      fusion search "a street" --minus "cars"      a street, without cars
    Each part is searched alone, the candidates pooled, and each part's scores standardised
    before they are added (minus parts subtracted); words also count by how many of the
    captions a photo recalls from the caption memory use them. Beside words, --like counts
    only up to a cap: it says which photos look like the photo, and the words choose among
    them, so give the words that tell the photo you want from its look-alikes.
    """
    if query or add or minus:  # words to encode: MiniLM loads while the query layer imports
        from retrieval.encoders.text_encoder import preload_text_model
        from retrieval.model.query_side import shipped_text_tops

        preload_text_model(shipped_text_tops())
    from retrieval.api import open_library

    if query is None and like is None and not add:
        raise click.UsageError("give QUERY, --like PHOTO or --add WORDS, e.g. fusion search \"a dog on a beach\"")
    check_dates(after, before)
    with open_library(db) as lib:
        hits = lib.search(query, k, like=like, add=add, minus=minus, candidates=candidates, rerank=not no_rerank,
                          under=under, after=after, before=before)
    print_hits(hits, as_json)


@main.command()
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Cosine of two photos' signatures from which they count as copies of one shot; "
                   "lower finds more (and more false pairs). [default: 0.85, measured in "
                   "benchmarks/results/duplicates.md]")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of groups.")
@db_option
@fusion_errors
def duplicates(threshold, as_json, db):
    """Groups of near-duplicate photos: the same shot resized, recompressed, slightly cropped
    or recoloured, and bursts. Uses the signature each photo got when it was indexed (no photo
    is decoded); libraries indexed by an older fusion get signatures on their next index run.
    Lists only: nothing is ever deleted or moved.
    """
    from dataclasses import asdict

    from retrieval.api import open_library

    with open_library(db) as lib:
        groups = lib.duplicates(threshold)
    if as_json:
        click.echo(json.dumps([asdict(g) for g in groups], indent=2))
        return
    if not groups:
        click.echo("no near-duplicates found", err=True)
    for n, g in enumerate(groups, start=1):
        click.echo(f"group {n}: {len(g.paths)} photos, similarity {g.similarity:.3f}")
        for path in g.paths:
            click.echo(f"  {path}")
    if groups:
        click.echo(f"{len(groups)} groups, {sum(len(g.paths) for g in groups)} photos", err=True)


@main.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("-k", "k", default=10, show_default=True, type=K_RANGE, help="Results to show.")
@filter_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@db_option
@fusion_errors
def similar(image, k, under, after, before, as_json, db):
    """Photos that look like IMAGE (which need not be in the library)."""
    from retrieval.api import open_library

    check_dates(after, before)
    with open_library(db) as lib:
        hits = lib.similar(image, k, under=under, after=after, before=before)
    print_hits(hits, as_json)


@main.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("-k", "k", default=5, show_default=True, type=K_RANGE, help="Captions to show.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@db_option
@fusion_errors
def describe(image, k, as_json, db):
    """The captions that fit IMAGE best: from the caption corpora indexed in the
    library (fusion index FILE.jsonl, one {"caption": "..."} a line), else from the
    23,013 MS-COCO captions shipped with the model (a note says so).

    Each line: rank, score, caption. The score is the photo's cosine to the caption in
    the shared space, less the caption's prior (how well it fits photos in general, so
    captions that fit any photo sink): it orders one photo's captions and is not a
    probability. A caption met twice is shown once.
    """
    from retrieval.api import open_library

    with open_library(db) as lib:
        hits = lib.describe(image, k)
    print_hits(hits, as_json)


@main.command()
@db_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; the default answers this machine only.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(1, 65535))
@click.option("--allow-host", multiple=True, metavar="NAME",
              help="Another name this server may be reached by (Host header), e.g. photos.local.")
@click.option("--token", help="Require this token (default: one is made and printed whenever --host "
                              "is not loopback; optional on loopback).")
@fusion_errors
def serve(db, host, port, allow_host, token):
    """Keep the model and library loaded and answer JSON requests over HTTP:

    \b
      GET /api/search?q=a+dog+on+a+beach&k=10&candidates=32&rerank=true
      GET /api/similar?id=ID&k=10      GET /api/describe?id=ID&k=5
      GET /api/photo/ID                GET /api/health      (API docs: /api/docs)

    Web pages you visit cannot use it to read your photos: requests naming another host
    (DNS rebinding) are refused, no CORS headers are sent, and beyond loopback every request
    needs the token printed at start (the printed URL sets it as a cookie).
    """
    from retrieval.api import open_library
    from retrieval.serve.guard import Guard
    from retrieval.serve.server import serve as run

    guard = Guard.for_address(host, port, allow_host, token)
    searcher = open_library(db).searcher
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    url = f"http://{shown}:{port}/" + (f"?token={guard.token}" if guard.token else "")
    click.echo(f"serving {searcher.lib.root} on {url} (Ctrl-C stops)", err=True)
    run(searcher, host, port, guard)
