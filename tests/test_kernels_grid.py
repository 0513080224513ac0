"""Every kernel launch in kernels/ uses a 1-D grid: CUDA caps a grid's second and third axes at 65535 programs,
which the (rows, blocks of a row) grids passed at 4096² pixels (blend, box crop: blocks of 256) and 8192² (AdaLIN:
blocks of 1024). The first axis takes 2³¹ − 1. Under TRITON_INTERPRET=1 no limit is enforced, so the test records
the grids the ops launch with."""
import torch

import kernels.adalin
import kernels.blend
import kernels.boxmask

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class Recorder:
    """Stands in for a jitted kernel: notes the grid of each launch, then launches the kernel."""

    def __init__(self, kernel, grids):
        self.kernel, self.grids = kernel, grids

    def __getitem__(self, grid):
        self.grids.append(grid)
        return self.kernel[grid]


def test_every_launch_grid_is_one_dimensional(monkeypatch):
    grids = []
    launched = {kernels.adalin: ("_chunk_moments", "_coefficients", "_row_affine", "_chunk_grad_sums",
                                 "_grad_coefficients", "_row_dx"),
                kernels.blend: ("_blend_fwd", "_blend_bwd", "_softmax_fwd", "_softmax_bwd"),
                kernels.boxmask: ("_crop_fwd", "_crop_bwd")}
    for module, names in launched.items():
        for name in names:
            monkeypatch.setattr(module, name, Recorder(getattr(module, name), grids))
    x = torch.randn(2, 3, 40, 40, device=DEVICE, requires_grad=True)
    rho, gamma, beta = (torch.rand(*s, device=DEVICE, requires_grad=True) for s in ((1, 3, 1, 1), (2, 3), (2, 3)))
    outputs = [kernels.adalin.AdaLINFunction.apply(x, rho, gamma, beta, 1e-5, True),
               kernels.blend.BlendFunction.apply(x, x * 2, torch.rand(2, 1, 40, 40, device=DEVICE)),
               kernels.blend.BlendSoftmaxFunction.apply(x, torch.randn(2, 2, 3, 40, 40, device=DEVICE),
                                                        torch.randn(2, 3, 40, 40, device=DEVICE)),
               kernels.boxmask.BoxCropFunction.apply(x, torch.zeros(2, 2, 2, device=DEVICE, requires_grad=True),
                                                     torch.full((2, 2, 2), 0.5, device=DEVICE), 20.0)]
    torch.autograd.grad(sum(o.sum() for o in outputs), x)
    assert len(grids) == 12  # AdaLIN 3 + 3, each blend 1 + 1, the box crop 1 + 1
    assert all(len(g) == 1 for g in grids), grids
