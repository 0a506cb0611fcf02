"""The tops' training inputs (issue 32), cached once so that tuning stays CPU-feasible: each
photo's map entering Lite0's last blocks (and its mirror image's) and MiniLM's token states
entering its top layers (as many as each encoder's depth), made in a child process and kept
under the cache directory by the dataset file, the image encoder and the depth.
retrieval/training/tops.py trains on them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from retrieval.data.cache import cached


def photo_maps(ds, ie, depth: int = 1) -> dict:
    """Each photo's map entering the `depth` last blocks, and its mirror image's: (N, 2, C, S, S) float16."""
    from tqdm import tqdm

    from retrieval.encoders.images import load_many

    net, out = ie.network, []
    paths = [ds.image_path(i) for i in range(len(ds.images))]
    batch: list = []

    def flush():
        with torch.inference_mode():
            x = ie._to_tensor([p for pair in batch for p in pair])
            n = net.net
            h = n._swish(n._bn0(n._conv_stem(x)))
            for block in n._blocks[:-depth]:
                h = block(h)
            out.append(h.float().numpy().astype(np.float16).reshape(len(batch), 2, *h.shape[1:]))
        batch.clear()

    for _, pixels in tqdm(load_many(paths, ie.load, workers=1), total=len(paths), desc="photo maps",
                          unit="photo"):
        batch.append((pixels, np.ascontiguousarray(pixels[:, ::-1])))
        if len(batch) == 8:
            flush()
    if batch:
        flush()
    return {"maps": np.concatenate(out)}


def caption_states(ds, te, depth: int = 1) -> dict:
    """MiniLM's token states entering its `depth` top layers, ragged: (T, 384) float16 and offsets."""
    return text_states([c.text for c in ds.captions], te, depth, "caption states")


def fragment_states(ds, te, depth: int = 1, seed: int = 0) -> dict:
    """caption_states of every caption's fragments (retrieval/training/fragments.py), caption i's
    FRAGMENTS fragments at rows i * FRAGMENTS onwards."""
    from retrieval.training.fragments import fragment_texts

    return text_states(fragment_texts([c.text for c in ds.captions], seed), te, depth, "fragment states")


def text_states(texts: list[str], te, depth: int, desc: str) -> dict:
    from tqdm import tqdm

    net = te.network
    rows, lengths = [], []
    with torch.inference_mode():
        for s in tqdm(range(0, len(texts), 128), desc=desc, unit="batch"):
            enc, _ = te.tokenize(texts[s:s + 128])
            ids, mask = enc["input_ids"], enc["attention_mask"]
            pos = torch.arange(ids.shape[1])
            x = net.norm(net.word(ids) + net.position(pos)[None] + net.token_type.weight[0])
            keep = mask.bool()[:, None, None, :]
            for layer in net.layers[:-depth]:
                x = layer(x, keep)
            for r in range(len(ids)):
                n = int(mask[r].sum())
                rows.append(x[r, :n].numpy().astype(np.float16))
                lengths.append(n)
    return {"states": np.concatenate(rows), "offsets": np.concatenate([[0], np.cumsum(lengths)])}


def sides(depth) -> tuple[int, int]:
    """(image depth, text depth) of a tops depth: one number for both encoders, or a pair."""
    if isinstance(depth, int):
        return depth, depth
    image, text = depth
    return int(image), int(text)


def block_inputs(ds, ie, te, cache_dir: Path | None = None, depth=1,
                 fragment_seed: int | None = None) -> tuple[np.ndarray, dict]:
    """`ds`'s photo maps and caption states entering the top blocks and layers (photo_maps,
    caption_states), cached by the dataset file, the image encoder and the depth: (maps,
    {"states", "offsets"}). `depth`: how many blocks and layers, one number for both encoders
    or (image, text). With a `fragment_seed`, the text also holds "fragment_states" and
    "fragment_offsets": the captions' fragments cut with that seed (fragment_states).

    A missing cache is made in a child process. Made here, through `ie`'s own network, it
    changed the tuning that follows: a single forward pass of that network (even its stem
    alone) before tuning gave tops with another digest than tuning straight from the cache,
    the same seed and data (why, inside torch, is not known; tests/test_tops.py). Made apart,
    `fusion train` tunes the same tops on a fresh machine as on one that has the cache.
    """
    image, text = sides(depth)
    maps_file = _cache_files(ds, ie, cache_dir, image, ("maps",))[0]
    need = ("states", "fragments") if fragment_seed is not None else ("states",)
    _, states_file, fragments_file = _cache_files(ds, ie, cache_dir, text, need, fragment_seed or 0)
    states = cached(states_file, None)
    if fragment_seed is not None:
        frags = cached(fragments_file, None)
        states.update(fragment_states=frags["states"], fragment_offsets=frags["offsets"])
    return cached(maps_file, None)["maps"], states


def _cache_files(ds, ie, cache_dir: Path | None, depth: int, need: tuple[str, ...],
                 seed: int = 0) -> tuple[Path, Path, Path]:
    """The maps, states and fragment states files of one depth (fragments cut with `seed`), the
    `need`ed ones made first if missing."""
    from retrieval.training.fragments import FRAGMENTS, MAX_WORDS

    import json

    from retrieval.data.cache import cache_key, dataset_fingerprint, default_cache_dir

    ident = f"{json.dumps(dataset_fingerprint(ds.root, ds.source, ds.images))}|{ie.feature_id}|depth{depth}"
    key = cache_key(ident)
    cache = (cache_dir or default_cache_dir()) / "finetune"
    files = (cache / f"maps-{key}.npz", cache / f"states-{key}.npz",
             cache / f"fragments-{key}-{FRAGMENTS}x{MAX_WORDS}-seed{seed}.npz")
    wanted = [str(f) if kind in need else None for kind, f in zip(("maps", "states", "fragments"), files)]
    if not all(Path(f).is_file() for f in wanted if f):
        import subprocess

        from retrieval.errors import DatasetError

        args = [str(ds.source), ie.config.name, None if ie.weights is None else str(ie.weights),
                ie.config.image_size, ie.channels_last, *wanted, depth, seed]
        code = "import json, sys; from retrieval.training.block_inputs import _make_block_inputs; " \
               "_make_block_inputs(*json.loads(sys.argv[1]))"
        done = subprocess.run([sys.executable, "-c", code, json.dumps(args)])
        if done.returncode != 0 or not all(Path(f).is_file() for f in wanted if f):
            raise DatasetError(f"{ds.source}: computing its block inputs failed (exit code {done.returncode}, its "
                               "error above); run fusion train again")
    return files


def _make_block_inputs(source: str, name: str, weights, image_size: int, channels_last: bool, maps_file,
                       states_file, fragments_file=None, depth: int = 1, seed: int = 0) -> None:
    """block_inputs' child: the pretrained encoders as the parent made them, the caches asked
    for (a file name; None: not asked)."""
    from retrieval.data.datasets import load_dataset
    from retrieval.encoders.image_encoder import load_image_encoder
    from retrieval.encoders.text_encoder import load_text_encoder

    ds = load_dataset(Path(source))
    if maps_file:
        ie = load_image_encoder(name, weights, channels_last=channels_last, image_size=image_size)
        cached(Path(maps_file), lambda: photo_maps(ds, ie, depth))
    if states_file:
        cached(Path(states_file), lambda: caption_states(ds, load_text_encoder(), depth))
    if fragments_file:
        cached(Path(fragments_file), lambda: fragment_states(ds, load_text_encoder(), depth, seed))
