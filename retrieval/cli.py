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
      fusion encode data/demo        encode photos, show what the image network sees
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

    from retrieval.encode import encode_photos, find_photos
    from retrieval.image_encoder import imagenet_classes

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


if __name__ == "__main__":
    main()
