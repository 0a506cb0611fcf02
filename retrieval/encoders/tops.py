"""Tuned tops: a checkpoint may carry new weights for the top of each encoder (Lite0's last block
and head convolution, MiniLM's top layer: `fusion train --tune-tops`), which replace the
pretrained ones wherever the encoder runs (torch, the ONNX graphs exported from it, worker
processes, Ray actors). Everything cached from an encoder's output (features, the caption
memory's vectors, ONNX graphs) is keyed by `digest`, so tuned and pretrained never mix."""

from __future__ import annotations

import hashlib

import numpy as np

from retrieval.errors import WeightsError


def digest(tops: dict | None) -> str:
    """sha256 prefix over the sorted names and float32 bytes ('' for none)."""
    if not tops:
        return ""
    h = hashlib.sha256()
    for name in sorted(tops):
        h.update(name.encode())
        h.update(np.ascontiguousarray(tops[name], np.float32).tobytes())
    return h.hexdigest()[:12]


def label(tops_digest: str) -> str:
    """What an encoder's cache identity appends for tops of this digest ('' for none)."""
    return f"+tops-{tops_digest}" if tops_digest else ""


def memo_label(tops: dict | None, memo: dict) -> str:
    """label(digest(tops)), hashed once per tops object (`memo`: the encoder's own dict), not on
    every cache lookup of a search's start-up."""
    if "label" not in memo or memo["of"] is not tops:
        memo.update(of=tops, label=label(digest(tops)))
    return memo["label"]


def install(module, tops: dict, what: str) -> None:
    """Copy `tops` (name relative to `module` -> array) into `module`'s weights, in place;
    WeightsError naming the first that does not fit."""
    import torch

    state = module.state_dict()
    with torch.no_grad():
        for name, value in tops.items():
            if name not in state or tuple(state[name].shape) != tuple(np.shape(value)):
                have = tuple(state[name].shape) if name in state else "no such weight"
                raise WeightsError(f"the checkpoint's tuned {what} weight {name} {tuple(np.shape(value))} does not "
                                   f"fit the network ({have}); use the checkpoint with the encoder it was trained for")
            state[name].copy_(torch.as_tensor(np.asarray(value, np.float32)))
