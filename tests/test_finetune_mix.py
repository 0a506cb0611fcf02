"""Weight-space ensembling of the tuned tops (retrieval/training/tops.py: fusion train --tune-tops,
the lab's --tune-mix)."""

import copy

import torch
from torch import nn

from retrieval.training.tops import interpolate


def test_interpolate_puts_every_float_tensor_between_pretrained_and_tuned():
    torch.manual_seed(0)
    pretrained = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    tuned = copy.deepcopy(pretrained)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn_like(p))
    tuned.train()(torch.randn(8, 3, 5, 5))  # moves the batch-norm statistics and counts a batch
    pre, post = ({k: v.clone() for k, v in m.state_dict().items()} for m in (pretrained, tuned))
    assert any(not torch.equal(pre[k], post[k]) for k in pre if "running" in k)

    interpolate(pretrained, tuned, 0.25)

    for k, v in tuned.state_dict().items():
        if v.is_floating_point():  # weights and running statistics alike
            assert torch.allclose(v, 0.75 * pre[k] + 0.25 * post[k]), k
        else:  # the batch counter is not a weight
            assert torch.equal(v, post[k]), k
    for k, v in pretrained.state_dict().items():
        assert torch.equal(v, pre[k]), k
