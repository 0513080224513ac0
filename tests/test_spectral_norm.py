"""common.blocks' spectral norm against torch.nn.utils.spectral_norm (one power-iteration step per training forward):
the same outputs, gradients and u, v, also when one layer runs two training forwards before one backward (the
authors' U-GAT-IT discriminator loss passes real and fake separately)."""
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from common.blocks import SNConv2d, SNLinear
from conftest import ROOT


def twins(kind):
    """Our layer and torch's, with the same weight, bias and starting u, in float64."""
    torch.manual_seed(0)
    ours = (SNConv2d(3, 5, 3, 2, 1) if kind == "conv" else SNLinear(6, 4)).double()
    plain = nn.Conv2d(3, 5, 3, 2, 1) if kind == "conv" else nn.Linear(6, 4)
    plain = plain.double()
    plain.load_state_dict({"weight": ours.weight.detach(), "bias": ours.bias.detach()})
    theirs = nn.utils.spectral_norm(plain)  # v is recomputed from u before it is used, so only u must agree
    theirs.weight_u.copy_(ours.weight_u)
    return ours, theirs


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_two_training_forwards_then_one_backward_match_torch(kind):
    ours, theirs = twins(kind)
    shape = (2, 3, 8, 8) if kind == "conv" else (2, 6)
    x1, x2 = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    x1.requires_grad_(True)
    y_ours = [ours(x1), ours(x2)]
    y_theirs = [theirs(x1), theirs(x2)]
    for a, b in zip(y_ours, y_theirs):
        torch.testing.assert_close(a, b)
    g = [torch.randn_like(y) for y in y_ours]
    loss_ours = sum((y * gi).sum() for y, gi in zip(y_ours, g))
    loss_theirs = sum((y * gi).sum() for y, gi in zip(y_theirs, g))
    grads_ours = torch.autograd.grad(loss_ours, [x1, ours.weight, ours.bias])
    grads_theirs = torch.autograd.grad(loss_theirs, [x1, theirs.weight_orig, theirs.bias])
    for a, b in zip(grads_ours, grads_theirs):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(ours.weight_u, theirs.weight_u)
    torch.testing.assert_close(ours.weight_v, theirs.weight_v)


def test_the_two_pass_benchmark_runs():
    """benchmarks/probes/sn_passes.py: its TwoPasses model is the authors' D loss (two training forwards of each D per
    update, then one backward, which the in-place bug made fail); one row per reported iteration."""
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks/probes/sn_passes.py"), "--steps", "2", "--every", "1"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    rows = [line for line in p.stdout.splitlines() if line[:1].isdigit()]
    assert [r.split(" |")[0] for r in rows] == ["1", "2"]
