"""The `fusion` command: thin click commands over library functions. This is the only module
that prints for the user or chooses exit codes; library errors become one-line messages here."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from retrieval.errors import FusionError

EPILOG = "Nothing is downloaded: the encoders and the default checkpoint ship with the package."


def fusion_errors(fn):
    """Turn the library's typed errors into `Error: <one line>` and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FusionError as e:
            raise click.ClickException(str(e)) from None

    return wrapper


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fusion-retrieval")
def main():
    """Fusion Retrieval: find photos by describing them, on your own machine.

    \b
    Typical use:
      fusion index ~/Pictures                 index (and later re-sync) a photo folder
      fusion search "a dog on a beach"        find photos by describing them
      fusion similar photo.jpg                photos that look like this one
      fusion describe photo.jpg               the captions that fit a photo
      fusion info                             what the library holds
      fusion serve                            web page + JSON API on http://127.0.0.1:8765/
      fusion encode data/demo                 what the image network sees in each photo
      fusion bench recall --data data/demo    how well text finds photos, and back
      fusion train --data DIR --out FILE      train your own shared space and reranker
    """


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1, 256),
              help="Photos per forward pass (4 is fastest on 2 CPU cores).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 32),
              help="Threads decoding photos while the network runs.")
@click.option("--top", default=3, show_default=True, type=click.IntRange(0, 10),
              help="ImageNet labels to print per photo (0: none).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of text.")
@fusion_errors
def encode(paths, batch_size, workers, top, as_json):
    """Encode photos (files, folders, or dataset folders) with the image encoder.

    Prints each photo's top ImageNet labels and the throughput; unreadable files are
    skipped with a one-line reason. Exit code 0 if every photo was encoded, 3 if some
    were skipped.
    """
    from tqdm import tqdm

    from retrieval.encoders.encode import encode_photos, find_photos
    from retrieval.encoders.image_encoder import imagenet_classes

    files = find_photos(paths)
    if not files:
        raise click.ClickException(f"no photos found under {', '.join(map(str, paths))}")
    with tqdm(total=len(files), unit="photo", disable=as_json or None, file=sys.stderr) as bar:
        report = encode_photos(files, batch_size=batch_size, workers=workers, progress=bar.update)
    if as_json:
        click.echo(json.dumps(report.summary(), indent=2))
    else:
        classes = imagenet_classes()
        for path, labels in report.top_labels(top, classes):
            click.echo(f"{path}: {', '.join(labels)}" if labels else str(path))
        for err in report.errors:
            click.echo(f"skipped {err}", err=True)
        s = report.summary()
        click.echo(f"encoded {s['encoded']} photos ({s['dim']}-d) in {s['seconds']:.2f} s: "
                   f"{s['photos_per_s']:.1f} photos/s, {s['skipped']} skipped")
    if report.errors:
        sys.exit(3)


def db_option(fn):
    return click.option("--db", type=click.Path(path_type=Path),
                        help="Library folder [default: $FUSION_HOME, else ~/.local/share/fusion].")(fn)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@db_option
@click.option("--rebuild", is_flag=True,
              help="Rebuild from what remains: FAISS from an intact SQLite of this model, else "
                   "everything from the photos (needed after a model change or damage).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 32),
              help="Threads decoding photos while the network runs.")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1, 256),
              help="Photos per forward pass (4 is fastest on 2 CPU cores).")
@click.option("--index-type", type=click.Choice(["auto", "flat", "ivf"]),
              help="Photo vector index: exact (flat), IVF with 8-bit codes (ivf), or by library size "
                   "(auto: ivf from 200,000 photos). Remembered by the library. [default: auto]")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@fusion_errors
def index(paths, db, rebuild, workers, batch_size, index_type, as_json):
    """Index photos under PATHS into the library; run it again whenever they change.

    Finds jpg, jpeg, png, webp, bmp, tif(f) and gif files recursively. Unchanged files (same
    size and mtime) are not read, changed ones are re-encoded, moved or renamed ones are
    recognised by content and not re-encoded, deleted ones leave the library. A PATH holding
    captions.jsonl (or a .jsonl file) also indexes its captions, for `fusion describe`.

    Exit code 0 when every photo was indexed, 3 when some files were skipped (each is listed
    with its reason), 1 on an error that stopped the run (the library keeps what was
    committed; run again to finish).
    """
    from tqdm import tqdm

    from indexer.run import index_paths

    def bar(total):
        return tqdm(total=total, unit="photo", file=sys.stderr, disable=as_json or None)

    s = index_paths(list(paths), db, rebuild, batch_size=batch_size, workers=workers, bar=bar,
                    index_type=index_type)
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


@main.command()
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print as one JSON object.")
@fusion_errors
def info(db, as_json):
    """What the library holds: photos, captions, index type, model, bytes on disk."""
    from retrieval.store.library import Library, library_dir
    from retrieval.model.runtime import Runtime

    rt = Runtime()
    data = Library.open(library_dir(db), rt.fingerprint, rt.dim).info()
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            click.echo(f"{key:>16}: {value}")


def filter_options(fn):
    fn = click.option("--before", metavar="DATE", help="Only photos taken before DATE (YYYY-MM-DD; EXIF time, else file time).")(fn)
    fn = click.option("--after", metavar="DATE", help="Only photos taken on or after DATE (YYYY-MM-DD).")(fn)
    return click.option("--under", type=click.Path(path_type=Path), help="Only photos under this folder.")(fn)


def make_filters(under, after, before):
    import os

    from retrieval.query.search import Filters

    return Filters(os.path.abspath(under) if under else None, _date(after, "--after"), _date(before, "--before"))


def _date(value, name):
    from datetime import datetime

    if value is None:
        return None
    for fmt in ("%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m", "%Y"):
        try:
            return datetime.strptime(value, fmt).timestamp()
        except ValueError:
            pass
    raise click.BadParameter(f"{value!r} is not a date; use YYYY-MM-DD, e.g. 2024-06-30", param_hint=name)


K_RANGE = click.IntRange(1, 1000)


def print_hits(results, as_json):
    from dataclasses import asdict

    if as_json:
        click.echo(json.dumps([asdict(h) for h in results.hits], indent=2))
    else:
        for note in results.notes:
            click.echo(f"note: {note}", err=True)
        if not results.hits:
            click.echo("no results", err=True)
        for h in results.hits:
            label = getattr(h, "path", None) or getattr(h, "text", "")
            click.echo(f"{h.rank:>3}  {h.score:7.3f}  {label}")


@main.command()
@click.argument("query")
@click.option("-k", "k", default=10, show_default=True, type=K_RANGE, help="Results to show.")
@click.option("--candidates", default=32, show_default=True, type=K_RANGE,
              help="ITC top-K that the fusion classifier reranks.")
@click.option("--no-rerank", is_flag=True, help="Rank by the shared space (ITC) alone.")
@filter_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list with rank, path, score, itc, itm.")
@db_option
@fusion_errors
def search(query, k, candidates, no_rerank, under, after, before, as_json, db):
    """Find photos by describing them: fusion search "a dog on a beach".

    Takes the library's top --candidates photos by the shared space, reranks them with the
    fusion classifier from stored features (photos are not decoded), and prints rank,
    score and path. Ties break by id, so the order is stable.
    """
    from retrieval.query.search import open_searcher

    filters = make_filters(under, after, before)
    print_hits(open_searcher(db).text(query, k, candidates, not no_rerank, filters), as_json)


@main.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("-k", "k", default=10, show_default=True, type=K_RANGE, help="Results to show.")
@filter_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@db_option
@fusion_errors
def similar(image, k, under, after, before, as_json, db):
    """Photos that look like IMAGE (which need not be in the library)."""
    from retrieval.query.search import open_searcher

    print_hits(open_searcher(db).similar(image, k, make_filters(under, after, before)), as_json)


@main.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("-k", "k", default=5, show_default=True, type=K_RANGE, help="Captions to show.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@db_option
@fusion_errors
def describe(image, k, as_json, db):
    """The captions nearest to IMAGE, from the caption corpora in the library
    (index one first, e.g. fusion index ../shared/data/coco-captions-val2017.jsonl)."""
    from retrieval.query.search import open_searcher

    print_hits(open_searcher(db).describe(image, k), as_json)


@main.command()
@db_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; the default answers this machine only.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(1, 65535))
@fusion_errors
def serve(db, host, port):
    """Keep the model and library loaded and answer JSON requests over HTTP:

    \b
      GET /api/search?q=a+dog+on+a+beach&k=10&candidates=32&rerank=true
      GET /api/similar?id=ID&k=10      GET /api/describe?id=ID&k=5
      GET /api/photo/ID                GET /api/health      (API docs: /api/docs)
    """
    from retrieval.query.search import open_searcher
    from retrieval.serve.server import serve as run

    searcher = open_searcher(db)
    click.echo(f"serving {searcher.lib.root} on http://{host}:{port}/ (Ctrl-C stops)", err=True)
    run(searcher, host, port)


def image_encoder_options(fn):
    fn = click.option("--image-weights", type=click.Path(dir_okay=False, path_type=Path),
                      help="State-dict file for the image encoder (required for resnet50).")(fn)
    return click.option("--image-encoder", default="efficientnet-lite0", show_default=True,
                        type=click.Choice(["efficientnet-lite0", "resnet50"]),
                        help="Image network the checkpoint was (or is to be) trained on.")(fn)


@main.command()
@click.option("--data", "data", multiple=True, required=True,
              type=click.Path(exists=True, path_type=Path),
              help="Dataset folder (captions.jsonl + images); repeat for several. "
                   "Validation photos come from the first.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint to write (safetensors; a .json beside it describes it).")
@click.option("--exclude", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Dataset whose photos (by file name) must not be trained or validated on, "
                   "e.g. a test set.")
@click.option("--val-photos", default=50, show_default=True, type=click.IntRange(2, None),
              help="Photos of the first dataset held out for early stopping and tuning.")
@click.option("--seed", default=0, show_default=True, help="Seed for splits, sampling and init.")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path),
              help="Feature cache folder [default: $FUSION_CACHE or ~/.cache/fusion/features].")
@image_encoder_options
@fusion_errors
def train(data, out, exclude, val_photos, seed, cache, image_encoder, image_weights):
    """Train the shared space (ITC) and the fusion rerankers (ITM) on captioned photos.

    Encoders stay frozen; their features are computed once and cached. ITC stops early on
    the validation photos; each fusion head is trained on hard negatives mined by ITC models
    that never saw those photos, and its rerank weight is tuned on validation (0 when it
    does not help). The shipped default was made with:

    \b
      fusion train --data ../shared/data/coco --data ../shared/data/flickr8k \\
                   --exclude data/demo --out retrieval/model/checkpoints/default.safetensors
    """
    from retrieval.training.trainer import train_checkpoint

    def log(entry):
        if "alpha" in entry:
            click.echo(f"{entry['variant']}: rerank weight {entry['alpha']:g}, val t2i {entry['val']['t2i']}",
                       err=True)
        elif "variant" not in entry:
            click.echo(f"itc epoch {entry['epoch']}: loss {entry['loss']:.3f}, "
                       f"val t2i {entry['val']['t2i']} i2t {entry['val']['i2t']}", err=True)

    record = train_checkpoint(list(data), out, list(exclude), val_photos, seed, image_encoder,
                              image_weights, cache, log=log)
    click.echo(f"wrote {out} (hash {record['content_hash']}): {record['train_photos']} training photos, "
               f"ITC best epoch {record['itc_best_epoch']}, val t2i {record['val_itc']['t2i']}")


@main.group()
def bench():
    """Measure quality (recall@k) of the current checkpoint."""


@bench.command("recall")
@click.option("--data", required=True, type=click.Path(exists=True, path_type=Path),
              help="Captioned dataset folder to measure on (photos must be unseen in training).")
@click.option("--candidates", default=32, show_default=True, type=click.IntRange(1, 1000),
              help="ITC top-K that the fusion heads rerank (as fusion search does).")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint to measure [default: the one shipped in the package].")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the full report as JSON to this file.")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), help="Feature cache folder.")
@image_encoder_options
@fusion_errors
def bench_recall(data, candidates, checkpoint, json_out, cache, image_encoder, image_weights):
    """Recall@1/5/10, text->image and image->text, for ITC alone, ITC + the shipped rerank,
    every fusion variant, and the untrained ImageNet-label bridge. Recall is in percent."""
    from retrieval.evaluation.bench import recall_report, to_markdown

    report = recall_report(data, checkpoint, candidates, image_encoder, image_weights, cache)
    if json_out:
        json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    click.echo(to_markdown(report))


if __name__ == "__main__":
    main()
