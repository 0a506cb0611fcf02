"""How the CLI prints results: one line a hit (rank, share or score, path or caption), notes
on stderr, or JSON."""

from __future__ import annotations

import json

import click


def print_hits(results, as_json):
    from dataclasses import asdict

    if as_json:
        click.echo(json.dumps([asdict(h) for h in results.hits], indent=2))
    else:
        for note in results.notes:
            click.echo(f"note: {note}", err=True)
        if not results.hits:
            click.echo("no results", err=True)
        for h, after in zip(results.hits, results.hits[1:] + [None]):
            label = getattr(h, "path", None) or getattr(h, "text", "")
            if getattr(h, "also", None):
                label += f"  (also {', '.join(h.also)})"
            share = getattr(h, "share", None)
            score = share_text(share) if share is not None else f"{h.score:6.3f}"
            click.echo(f"{h.rank:>3}  {score}  {label}")
            if getattr(h, "likely", None) and after is not None and after.likely is False:
                click.echo(likely_line(), err=True)  # stderr: piped, stdout stays one result a line


def likely_line() -> str:
    """The line under the top results whose shares add up to LIKELY."""
    from retrieval.model.query_side import LIKELY

    return (f"  {'-' * 6}  likely ends here: if the photo described is among the results, it is above "
            f"this line {round(100 * LIKELY)}% of the time")


def share_text(share: float) -> str:
    """A share as printed: one decimal, and "<0.1%" / ">99.9%" beyond what that shows; a share
    is a softmax, never exactly 0 or 1, and "0.0%" / "100.0%" read as "certainly not" / "surely"."""
    if share < 0.0005:
        return " <0.1%"
    return f"{100 * share:5.1f}%" if share < 0.9995 else ">99.9%"
