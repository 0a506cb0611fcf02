"""The fusion classifier search reranks with: a small learning-to-rank model over cross-modal
evidence that sees both sides, the query (its ITC vector and its MiniLM sentence vector) and
the photo (its ITC vector, the captions it recalls from the caption memory, its ImageNet
labels from the whole photo and from each grid cell). Its output is a match logit, trained
with binary cross-entropy on cross-fitted candidates plus a listwise softmax term: the
softmax over one query's candidates is the share search shows, and a Platt-scaled sigmoid
is the match probability on its own.

Per photo the library stores ids, weights, a look-alike key and a hubness (`PhotoEvidence`, 690 bytes); everything
else is computed per query over the K candidates, so a rerank of 32 costs well under 20 ms."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from retrieval.model.evidence import EVIDENCE, LABELS, MEMORY_SIZE, TOP4, PhotoEvidence, evidence  # noqa: F401


class Reranker(nn.Module):
    """Standardised evidence -> match logit: linear (hidden=0) or one small hidden layer."""

    def __init__(self, n_features: int = len(EVIDENCE), hidden: int = 0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        # Platt scaling of the logit into a probability, fitted after the ranking loss (whose
        # listwise term sharpens logits past calibration); monotone, so it never reorders
        self.register_buffer("prob_scale", torch.ones(()))
        self.register_buffer("prob_bias", torch.zeros(()))
        if hidden:
            self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.GELU(), nn.Linear(hidden, 1))
        else:
            self.net = nn.Sequential(nn.Linear(n_features, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[..., :len(self.mean)]  # a reranker trained on fewer features reads the first ones
        return self.net((x - self.mean) / self.std).squeeze(-1)

    def logits(self, feats: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.eval()(torch.from_numpy(np.ascontiguousarray(feats, np.float32))).numpy()

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated match probabilities of `logits`."""
        z = float(self.prob_scale) * np.asarray(logits, np.float64) + float(self.prob_bias)
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))
