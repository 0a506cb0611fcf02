"""The trained parts: `image_fc` and `text_fc` into one shared space (ITC), and the fusion
classifiers (ITM) that judge whether a photo and a text match.

The shared space is MiniLM's own 384-d space. A photo starts at its ImageNet-label bridge
(the softmax-weighted MiniLM embedding of its top ImageNet class names) and `image_fc` adds
a zero-initialised correction from the pooled image features (and, in models trained since
they exist, the pooled mid-level features: colour, texture and parts that the last block
abstracts away into ImageNet's classes); a text starts at its MiniLM
vector and `text_fc` adds a zero-initialised residual. Training therefore starts from a
working zero-shot model instead of from noise, which matters with ~1k training photos.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.model.config import ModelConfig  # noqa: E402,F401  (defined there, torch-free)

FUSION_VARIANTS = ("additive", "multiplicative", "concat-mlp", "cross-attention", "late-interaction")
GRID_VARIANTS = ("cross-attention", "late-interaction")  # heads that read grid cells and tokens
# late-interaction's MaxSim (a mean cosine) enters its zero-initialised weight at ITC's starting
# logit scale: unscaled, that weight moved too little in an epoch on 32k captions to reorder anything
LATE_SCALE = 20.0


class SharedSpace(nn.Module):
    """ITC: image_fc and text_fc into MiniLM's space, L2-normalised, with a learnable
    temperature for the symmetric contrastive loss."""

    def __init__(self, config: ModelConfig, class_embeddings: torch.Tensor):
        super().__init__()
        self.config = config
        self.register_buffer("class_embeddings", class_embeddings.float())  # (1000, text_dim)
        norm = SplitNorm(config.image_dim, config.mid_dim) if config.mid_dim else nn.LayerNorm(config.image_dim)
        width = config.image_dim + config.mid_dim
        if config.image_hidden:
            self.image_fc = nn.Sequential(norm, nn.Linear(width, config.image_hidden), nn.GELU(),
                                          nn.Linear(config.image_hidden, config.text_dim))
        else:
            self.image_fc = nn.Sequential(norm, nn.Linear(width, config.text_dim))
        self.text_fc = nn.Linear(config.text_dim, config.text_dim)
        if config.text_hidden:
            self.text_fc = nn.Sequential(nn.Linear(config.text_dim, config.text_hidden), nn.GELU(),
                                         nn.Linear(config.text_hidden, config.text_dim))
        # the corrections start at zero (a full projection, without the bridge, cannot)
        last_text = self.text_fc[-1] if config.text_hidden else self.text_fc
        for layer in ((self.image_fc[-1],) if config.image_bridge else ()) + (last_text,):
            nn.init.zeros_(layer.weight), nn.init.zeros_(layer.bias)
        self.logit_scale = nn.Parameter(torch.tensor(float(torch.log(torch.tensor(20.0)))))
        self.neighbours = None  # look-alike training photos to borrow captions from (neighbours.py)

    def labels(self, logits: torch.Tensor, cells: torch.Tensor | None = None):
        """The bridge's ImageNet classes and softmax weights, (N, bridge_top) each, best first.
        `cells` (max over grid cells of each cell's logits) name objects too small to win the
        pooled logits; they join in when the config says so."""
        if self.config.bridge_cells:
            logits = (logits + cells) / 2
        top, idx = logits.topk(self.config.bridge_top, dim=-1)
        return idx, F.softmax(top / self.config.bridge_temperature, dim=-1)

    def bridge(self, logits: torch.Tensor, cells: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax over the top-k ImageNet logits, mixing the class-name embeddings."""
        idx, weights = self.labels(logits, cells)
        return F.normalize((weights.unsqueeze(-1) * self.class_embeddings[idx]).sum(1), dim=-1)

    def embed_image(self, pooled: torch.Tensor, logits: torch.Tensor, cells: torch.Tensor | None = None,
                    mid: torch.Tensor | None = None) -> torch.Tensor:
        """The photo's ITC vector: its bridge plus image_fc's correction."""
        if self.config.mid_dim:
            if mid is None:
                raise ValueError("this model reads mid-level image features: pass mid")
            pooled = torch.cat([pooled, mid], dim=-1)
        if not self.config.image_bridge:
            return F.normalize(self.image_fc(pooled), dim=-1)
        return F.normalize(self.bridge(logits, cells) + self.image_fc(pooled), dim=-1)

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        text = F.normalize(text, dim=-1)
        return F.normalize(text + self.text_fc(text), dim=-1)

    def loss(self, img: torch.Tensor, txt: torch.Tensor, hard_weight: float = 0.0,
             margin: float = 0.2) -> torch.Tensor:
        """Symmetric InfoNCE over a batch of matching (image, text) embedding pairs, plus
        `hard_weight` x VSE++'s max-violation hinge (Faghri et al. 2018): each pair's hardest
        negative in the batch, both ways, must stay `margin` below it."""
        sim = img @ txt.T
        logits = self.logit_scale.exp().clamp(max=100) * sim
        target = torch.arange(len(img), device=img.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        if hard_weight:
            pos = sim.diag()
            neg = sim.masked_fill(torch.eye(len(sim), dtype=torch.bool, device=sim.device), -2.0)
            hinge = (margin + neg.max(1).values - pos).clamp(min=0) + (margin + neg.max(0).values - pos).clamp(min=0)
            loss = loss + hard_weight * hinge.mean()
        return loss


class SplitNorm(nn.Module):
    """LayerNorm of the pooled and the mid-level features each on its own (their spreads
    differ tenfold), concatenated: image_fc's input when it reads both."""

    def __init__(self, image_dim: int, mid_dim: int):
        super().__init__()
        self.image_dim = image_dim
        self.pooled, self.mid = nn.LayerNorm(image_dim), nn.LayerNorm(mid_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.pooled(x[..., :self.image_dim]), self.mid(x[..., self.image_dim:])], dim=-1)


class FusionHead(nn.Module):
    """ITM: a match logit for (photo, text) pairs. Every variant is a residual on the ITC score,
    `a * itc + b + h(photo, text)` with `h` zero-initialised, so it starts exactly where ITC is
    and can only move a ranking where training found evidence. `h` is the fusion:

    - additive: the seed's `classifier(image_fc(i) + text_fc(t))`, late fusion. Linear, so
      h = f(i) + g(t): separable, it cannot reorder photos for a fixed text. Kept as a baseline.
    - multiplicative: MLP(P(i) * Q(t)), late fusion with interaction.
    - concat-mlp: MLP([P(i), Q(t), P(i) * Q(t)]), mid fusion.
    - cross-attention: the text's tokens attend over the photo's grid cells (8x8 at 256 px), mid fusion
      at the cell level; MLP over (attended cells * tokens), mean over tokens.
    - late-interaction: ColBERT's MaxSim, the lighter cell-level match: each projected token's
      best cosine over the projected grid cells, averaged over the tokens, times a learned weight
      (at LATE_SCALE).
    """

    def __init__(self, variant: str, config: ModelConfig):
        super().__init__()
        if variant not in FUSION_VARIANTS:
            raise ValueError(f"unknown fusion variant {variant!r}")
        self.variant = variant
        d, hid = config.fusion_dim, config.fusion_dim
        self.image_proj = nn.Sequential(nn.LayerNorm(config.image_dim), nn.Linear(config.image_dim, d))
        self.text_proj = nn.Sequential(nn.LayerNorm(config.text_dim), nn.Linear(config.text_dim, d))
        self.itc_scale = nn.Parameter(torch.tensor(10.0))
        self.itc_bias = nn.Parameter(torch.tensor(-5.0))
        if variant == "additive":
            self.classifier = nn.Linear(d, 1)
            last = self.classifier
        elif variant == "late-interaction":
            self.match = nn.Linear(1, 1)
            last = self.match
        else:
            width = {"multiplicative": d, "concat-mlp": 3 * d, "cross-attention": d}[variant]
            self.mlp = nn.Sequential(nn.Linear(width, hid), nn.GELU(), nn.Dropout(0.1), nn.Linear(hid, 1))
            last = self.mlp[-1]
        if variant == "cross-attention":
            self.attn = nn.MultiheadAttention(d, num_heads=4, batch_first=True, dropout=0.1)
        nn.init.zeros_(last.weight), nn.init.zeros_(last.bias)

    def project_image(self, pooled, grid=None) -> torch.Tensor:
        """What a library stores per photo for this head (computed once at index time):
        the projected pooled features (N, d), or projected grid cells (N, cells, d) for
        cross-attention."""
        return self.image_proj(grid if self.variant in GRID_VARIANTS else pooled)

    def residual(self, pooled, text, grid=None, tokens=None, mask=None, grid_index=None) -> torch.Tensor:
        """h(photo, text) for aligned rows: pooled (N, image_dim), text (N, text_dim); the
        cross-attention variant also takes grid cells, tokens (N, L, text_dim) and mask (N, L),
        True on real tokens. grid is (N, cells, image_dim), or (U, cells, image_dim) for U
        distinct photos with grid_index (N,) picking each row's photo: projected once each."""
        return self.residual_projected(self.project_image(pooled, grid), text, tokens, mask, grid_index)

    def residual_projected(self, image, text, tokens=None, mask=None, grid_index=None) -> torch.Tensor:
        """h from `project_image` output (rows, or distinct photos with grid_index)."""
        if grid_index is not None:
            image = image[grid_index]
        if self.variant == "cross-attention":
            toks = self.text_proj(tokens)
            attended, _ = self.attn(toks, image, image, need_weights=False)
            per_token = self.mlp(attended * toks).squeeze(-1)
            m = mask.to(per_token.dtype)
            return (per_token * m).sum(1) / m.sum(1).clamp(min=1)
        if self.variant == "late-interaction":
            toks = nn.functional.normalize(self.text_proj(tokens), dim=-1)
            best = torch.einsum("nld,ncd->nlc", toks, nn.functional.normalize(image, dim=-1)).amax(-1)
            m = mask.to(best.dtype)
            return self.match(LATE_SCALE * ((best * m).sum(1) / m.sum(1).clamp(min=1))[:, None]).squeeze(-1)
        i, t = image, self.text_proj(text)
        if self.variant == "additive":
            return self.classifier(i + t).squeeze(-1)
        if self.variant == "multiplicative":
            return self.mlp(i * t).squeeze(-1)
        return self.mlp(torch.cat([i, t, i * t], dim=-1)).squeeze(-1)

    def forward(self, itc, *inputs) -> torch.Tensor:
        """The match logit trained with binary cross-entropy; `inputs` as for residual."""
        return self.itc_scale * itc + self.itc_bias + self.residual(*inputs)
