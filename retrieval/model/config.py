"""The model's configuration: which encoders, the shared space's shape and the query layer's
weights and thresholds. Plain data, importable without torch (a text search never loads it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelConfig:
    image_encoder: str = "efficientnet-lite0"  # image tower the heads were trained on
    image_dim: int = 1280  # pooled / grid-cell feature size of that tower
    image_size: int = 0  # input side the tower is fed, in pixels (0: the size it was trained at, as
    # every checkpoint before sizes were recorded)
    mid_dim: int = 0  # size of the tower's mid-level features image_fc also reads (0: none)
    image_bridge: bool = True  # a photo starts at its ImageNet-label bridge and image_fc adds a
    # zero-initialised correction (False: image_fc alone, a full learned projection)
    text_hidden: int = 0  # hidden width of text_fc's correction (0: one linear layer; an experiment,
    # the numpy query side reads only the linear one)
    image_hidden: int = 0  # hidden width of image_fc's correction (0: one linear layer, as every
    # checkpoint before; docs/quality.md measures widths on Flickr8k dev and the open-world folds)
    text_encoder: str = "all-MiniLM-L6-v2"  # text tower
    text_dim: int = 384  # its hidden size; also the shared space's size
    bridge_top: int = 20  # ImageNet classes mixed into a photo's bridge vector
    bridge_temperature: float = 2.0  # softmax temperature on the ImageNet logits
    bridge_cells: bool = False  # bridge from the mean of pooled and per-cell-max logits
    memory_beta: float = 0.0  # weight of the recalled captions in a photo's search vector (0: off)
    memory_tau: float = 0.05  # softmax temperature of a photo's recall weights over its captions
    fusion_dim: int = 256  # hidden width of the fusion heads
    rerank: str = "cross-attention"  # what search reranks with: "evidence" or a fusion variant
    rerank_weight: float = 0.0  # alpha in score = itc + alpha * itm, tuned on validation
    reranker_hidden: int = 0  # hidden width of the evidence reranker (0: linear)
    describe_weight: float = 0.0  # the reranker's weight when ranking captions for a photo
    describe_prior: float = 0.0  # weight of the caption prior (retrieval/model/prior.py) in describe
    memory_describe_weight: float | None = None  # the reranker's weight when describe ranks the caption
    # memory (a library with no captions indexed); None: search's rerank_weight.
    # On the open-world folds (both splits) that ranks a photo's own captions among the memory's 23k
    # first 18.8 / 18.4% of the time against 13.3 / 12.8 with describe_weight and describe_prior,
    # which stay for the library's own captions (there 69.1 / 66.7 against 59.1 / 55.8): docs/quality.md
    memory_describe_prior: float = 0.0  # the caption prior's weight there
    memory_digest: str = ""  # content hash of the caption memory the model was trained with
    match_threshold: float = 0.0  # best match probability below which search says none matches well
    share_temperature: float = 0.0  # shares = softmax((itc + rerank_weight x logit) / T) (0: of the logit)
    neighbour_weight: float = 0.0  # weight of the captions borrowed from look-alike training photos
    # in a photo's search vector (retrieval/model/neighbours.py; 0: off, as every checkpoint before)
    neighbour_k: int = 20  # look-alike training photos each photo borrows from
    neighbour_tau: float = 0.1  # softmax temperature over their cosines
    image_tops: str = ""  # digest of the tuned weights of the image network's top the checkpoint
    # carries (retrieval/encoders/tops.py; '': the pretrained network, as every checkpoint before)
    text_tops: str = ""  # the same for MiniLM's top layer

    def to_dict(self) -> dict:
        return asdict(self)
