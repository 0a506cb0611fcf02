"""Model commands: encode, train, bench."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


from retrieval.cli.base import fusion_errors, image_encoder_options, main


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
@click.option("--distractors", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of uncaptioned photos (e.g. ../shared/data/distractors): the shared space "
                   "also trains on them with pseudo-captions (the 3 memory captions each recalls), and "
                   "the reranker learns to sort candidates ranked among them, as in a real library.")
@click.option("--rerank-weight", type=click.FloatRange(0, None),
              help="Weight of the reranker in search's score (itc + weight x logit); default: "
                   "tuned on the training candidates. benchmarks/open_world.py tunes it on held-out folds.")
@click.option("--describe-weight", default=0.0, show_default=True, type=click.FloatRange(0, None),
              help="The reranker's weight when fusion describe ranks captions for a photo "
                   "(benchmarks/open_world.py measures each).")
@click.option("--describe-prior", default=0.0, show_default=True, type=click.FloatRange(0, None),
              help="Weight of the caption prior in fusion describe: each candidate caption loses this "
                   "times its mean similarity to its 10 nearest --distractors photos (generic captions "
                   "that fit every photo sink).")
@click.option("--memory-describe-weight", type=click.FloatRange(0, None),
              help="The reranker's weight when fusion describe ranks the caption memory (a library "
                   "without captions; benchmarks/open_world.py and describe_memory.py measure each); "
                   "default: --rerank-weight.")
@click.option("--neighbour-weight", default=0.25, show_default=True, type=click.FloatRange(0, None),
              help="Weight of the captions each photo borrows from its 20 most alike training photos "
                   "(by the image encoder's features) in its search vector; 0: off (docs/quality.md).")
@click.option("--image-size", type=click.IntRange(96, 640),
              help="Input side in pixels the image encoder is fed, a multiple of 32; the checkpoint "
                   "records it and indexing uses it. Default: 256 for efficientnet-lite0 (measured "
                   "better than the 224 it was trained at: docs/quality.md), else its training size.")
@click.option("--tune-tops", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dataset folder to fine-tune the encoders' tops on first (Lite0's last block and head "
                   "convolution, MiniLM's top layer), e.g. ../shared/data/flickr8k; the checkpoint carries "
                   "them (~6 MB) and every photo and caption is encoded with them. Default: frozen encoders.")
@click.option("--tops-epochs", default=12, show_default=True, type=click.IntRange(1, None),
              help="Passes over the --tune-tops photos.")
@click.option("--tops-mix", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="How far the tops move from the pretrained weights towards the tuned ones (WiSE-FT "
                   "weight-space ensembling: 0.5 kept most of the Flickr8k gain and lost nothing on COCO).")
@click.option("--tops-depth", default=1, show_default=True, type=click.IntRange(1, 6),
              help="How many of each encoder's last blocks / layers --tune-tops tunes (Lite0's blocks, "
                   "MiniLM's layers). 2 gained about a point on whole captions on Flickr8k dev and one COCO "
                   "split, lost on short queries (the demo's one-word, COCO's 3-word at R@5 and R@10) and "
                   "takes twice the tuning time, so 1 ships (docs/quality.md).")
@click.option("--fragment-share", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Chance that ITC trains a sampled caption as 1 to 3 of its content words in order "
                   "(\"black dog beach\"), so that the shared space also learns short queries. 0.1 gained "
                   "short queries a point on Flickr8k dev but lost 0.5 to 1.7 on COCO's, and describe 0.9, "
                   "so 0 ships (docs/quality.md).")
@click.option("--reranker-hidden", default=0, show_default=True, type=click.IntRange(0, 1024),
              help="Width of a hidden layer in the evidence reranker (0: linear). The shipped model "
                   "uses 64: at 7.4k captioned photos it gained search R@5 and R@10 1.5 to 1.8 on COCO "
                   "and 0.7 on Flickr8k dev (R@1 +0.7 and +0.3); at 1.4k a hidden layer lost, so 0 "
                   "stays the default for small collections (docs/quality.md).")
@click.option("--baselines", is_flag=True,
              help="Also train the five fusion-head baselines (additive, multiplicative, concat-mlp, "
                   "cross-attention, late-interaction) that `fusion bench recall` compares; no search "
                   "uses them, and on 35k captions they take most of the training time.")
@click.option("--seed", default=0, show_default=True, help="Seed for splits, sampling and init.")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path),
              help="Feature cache folder [default: $FUSION_CACHE or ~/.cache/fusion/features].")
@image_encoder_options
@fusion_errors
def train(data, out, exclude, val_photos, seed, distractors, rerank_weight, describe_weight, describe_prior,
          memory_describe_weight, neighbour_weight, image_size, tune_tops, tops_epochs, tops_mix, tops_depth, fragment_share,
          reranker_hidden, baselines, cache, image_encoder,
          image_weights):
    """Train the shared space (ITC) and the evidence reranker (and, with --baselines, the
    fusion-head baselines).

    With --tune-tops, the encoders' tops are first fine-tuned on that folder's captioned
    photos and moved half way back to the pretrained weights (the checkpoint carries them);
    otherwise the encoders stay frozen. Features are computed once and cached. ITC stops early on
    the validation photos; the space is a soup of 5 such runs (seeds), weights averaged. Each
    photo's search vector also borrows the captions of the training photos it looks most
    like; the checkpoint carries their image features and mean caption vectors (no photos,
    no caption text). The reranker learns from cross-fitted candidates: each fold's
    captions ranked by an ITC model that never saw their photos, among --distractors; its
    weight is tuned on them (0 when it does not help), and its no-match threshold is
    measured on made-up queries. The shipped default was made with:

    \b
      fusion train --data ../shared/data/coco --data ../shared/data/coco-extra \\
                   --data ../shared/data/flickr8k --distractors ../shared/data/distractors \\
                   --exclude data/demo --tune-tops ../shared/data/flickr8k \\
                   --rerank-weight W --describe-weight D --describe-prior P \\
                   --memory-describe-weight M --reranker-hidden 64 \\
                   --out retrieval/model/checkpoints/default.safetensors

    where W, D, P and M are the weights the open-world folds chose (docs/quality.md).
    """
    from tqdm import tqdm

    from retrieval.training.loop import TrainConfig
    from retrieval.training.trainer import train_checkpoint

    tc = TrainConfig(seed=seed, rerank_weight=rerank_weight, describe_weight=describe_weight,
                     describe_prior=describe_prior, memory_describe_weight=memory_describe_weight,
                     image_size=image_size or 0, neighbour_weight=neighbour_weight,
                     tune_tops=str(tune_tops or ""), tops_epochs=tops_epochs, tops_mix=tops_mix, tops_depth=tops_depth,
                     fragment_share=fragment_share, reranker_hidden=reranker_hidden,
                     **({} if baselines else {"variants": ()}))
    # one step per ITC run (a soup, twice with pseudo-captions), fusion head and cross-fitting
    # fold, and one for the reranker; features and the caption memory have bars of their own
    steps = tc.soup * (2 if distractors and tc.pseudo_captions else 1) + len(tc.variants) + tc.rerank_folds + 1
    bars = []  # made at the first step, so that input refused before training draws none

    def say(line: str) -> None:
        tqdm.write(line, file=sys.stderr)

    def log(entry):
        if not bars:
            bars.append(tqdm(total=steps, desc="training", unit="step"))
        bar = bars[0]
        stage = entry.get("stage")
        if stage == "reranker":
            say(f"reranker: weight {entry['alpha']:g}, cross-fitted t2i {entry['crossfit_t2i']}, "
                f"no match below {entry['no_match_below']:.3f}")
        elif stage == "itc-run":
            bar.set_postfix_str(f"ITC run {entry['run']}/{entry['of']}, best epoch {entry['best_epoch']}")
        elif stage:
            bar.set_postfix_str(f"{stage} fold {entry['fold']}: {entry['photos']} photos ranked")
        elif "alpha" in entry:
            say(f"{entry['variant']}: rerank weight {entry['alpha']:g}, val t2i {entry['val']['t2i']}")
        elif "variant" not in entry:
            bar.set_postfix_str(f"ITC epoch {entry['epoch']}, loss {entry['loss']:.3f}, val t2i R@1 "
                                f"{entry['val']['t2i']['r1']:g}")
            return
        if stage in ("itc-run", "rerank-crossfit", "reranker") or "alpha" in entry:
            bar.update()

    record = train_checkpoint(list(data), out, list(exclude), val_photos, seed, image_encoder,
                              image_weights, cache, log=log, tc=tc, distractors=distractors)
    for bar in bars:
        bar.close()
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
