"""Memory traffic and time of the fused ops in kernels/ against their eager PyTorch references.

    python benchmarks/kernels.py            # CUDA if present, else the CPU table

At the shapes the models use (AdaLIN 1×256×64×64 and 8×256×64×64; the blends at 1×3×256×256, n = 10 masks for
the softmax form, and on CUDA also at 8×3×256×256; box crop: 64 images × 4 boxes at 3×256×256), for the forward, the backward and both. AdaLIN's
eager reference is the one-affine-map form the CPU path runs; one more row gives Eq. 1 computed term by term
(`adalin_eq1`).
- always: the bytes the eager reference moves (inputs plus outputs of every aten op it runs, counted with a
  TorchDispatchMode: the profiler records input shapes only) beside the bytes the fused kernels must move (each
  kernel's reads and writes, from its code), and the eager reference's time on this device;
- on CUDA also: the time of the fused kernels beside the time their bytes take at the GPU's peak memory bandwidth,
  the time of torch.compile of the reference, GB/s of the fused kernels (their bytes over their time) and that as a
  share of the peak.
"""
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernels.adalin import AdaLINFunction, adalin_eq1, adalin_reference  # noqa: E402
from kernels.blend import (BlendFunction, BlendSoftmaxFunction, blend_reference,  # noqa: E402
                           blend_softmax_reference)
from kernels.boxmask import BoxCropFunction, box_crop_reference  # noqa: E402

HBM_PEAK_GBS = {"H100": 3350, "H200": 4800, "A100": 2039, "L4": 300, "A10": 600, "4090": 1008, "3090": 936}


class CountBytes(TorchDispatchMode):
    """Bytes of every tensor argument and result of every aten op run inside it."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves((args, kwargs, out)):
            if isinstance(t, torch.Tensor):
                self.bytes += t.numel() * t.element_size()
        return out


def nbytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def cases(device):
    """(name, make inputs, reference, fused autograd.Function.apply, fused bytes forward, fused bytes backward)."""
    def adalin_case(N, ref=adalin_reference, label=""):
        def make():
            x = torch.randn(N, 256, 64, 64, device=device)
            return [x, torch.rand(1, 256, 1, 1, device=device), torch.randn(N, 256, device=device),
                    torch.randn(N, 256, device=device)]
        # forward: x read twice (statistics, output), y written; backward: x and dy read twice, dx written
        return (f"adalin {N}x256x64x64{label}", make, ref,
                lambda x, r, g, b: AdaLINFunction.apply(x, r, g, b, 1e-5, True),
                lambda a: 3 * nbytes(a[0]), lambda a: 5 * nbytes(a[0]))

    def blend_make():
        return [torch.randn(1, 3, 256, 256, device=device), torch.randn(1, 3, 256, 256, device=device),
                torch.rand(1, 1, 256, 256, device=device)]

    def softmax_make(N=1):
        return [torch.randn(N, 3, 256, 256, device=device), torch.randn(N, 9, 3, 256, 256, device=device),
                torch.randn(N, 10, 256, 256, device=device)]

    def box_make():
        return [torch.randn(64, 3, 256, 256, device=device), torch.rand(64, 4, 2, device=device) - 0.5,
                torch.rand(64, 4, 2, device=device) * 0.3 + 0.2]
    lse = lambda a: a[2][:, 0].numel() * 4  # noqa: E731  (per-pixel fp32 log-sum-exp)
    table = [
        adalin_case(1), adalin_case(8), adalin_case(8, adalin_eq1, " (eager: Eq. 1 as printed)"),
        ("blend 1x3x256x256", blend_make, blend_reference, BlendFunction.apply,
         lambda a: nbytes(*a) + nbytes(a[0]), lambda a: 2 * nbytes(*a) + nbytes(a[0])),
        ("blend softmax n=10 1x3x256x256", softmax_make, blend_softmax_reference, BlendSoftmaxFunction.apply,
         lambda a: nbytes(*a) + nbytes(a[0]) + lse(a), lambda a: 2 * nbytes(*a) + 2 * nbytes(a[0]) + lse(a)),
        ("box crop 64x4 boxes 3x256x256", box_make, lambda X, c, h: box_crop_reference(X, c, h, 50.0),
         lambda X, c, h: BoxCropFunction.apply(X, c, h, 50.0),
         lambda a: 4 * nbytes(a[0]) * 2,          # X read once per box, R (4 boxes) written
         lambda a: nbytes(a[0]) * (1 + 4 + 1)),   # X read, dR read, dX written
    ]
    if device.type == "cuda":  # AttentionGAN's blend at batch 8: enough work to fill a GPU
        softmax = next(c for c in table if c[0].startswith("blend softmax"))
        table.append(("blend softmax n=10 8x3x256x256", lambda: softmax_make(8), *softmax[2:]))
    return table


def timed(fn, device, repeat):
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeat


def phases(f, make, device, repeat):
    """Seconds for forward, backward and both of f on fresh inputs that require grad."""
    args = [t.requires_grad_() for t in make()]
    out = f(*args)
    g = torch.randn_like(out)
    fwd = timed(lambda: f(*args), device, repeat)
    bwd = timed(lambda: torch.autograd.grad(out, args, g, retain_graph=True), device, repeat)
    both = timed(lambda: torch.autograd.grad(f(*args), args, g), device, repeat)
    return fwd, bwd, both


def eager_bytes(ref, make):
    args = [t.requires_grad_() for t in make()]
    with CountBytes() as fwd:
        out = ref(*args)
    g = torch.randn_like(out)
    with CountBytes() as bwd:
        torch.autograd.grad(out, args, g)
    return fwd.bytes, bwd.bytes


def main():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    repeat = 20 if device.type == "cuda" else 3
    peak = next((v for k, v in HBM_PEAK_GBS.items() if device.type == "cuda" and k in torch.cuda.get_device_name()),
                None)
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}"
          + (f", HBM peak {peak} GB/s" if peak else ""))
    print("| op | phase | eager MB | fused MB | fused/eager | eager ms |"
          + (" fused ms | ms at peak | compile ms | fused GB/s | % peak |" if device.type == "cuda" else ""))
    print("|---|---|---|---|---|---|" + ("---|---|---|---|---|" if device.type == "cuda" else ""))
    for name, make, ref, fused, fused_fwd, fused_bwd in cases(device):
        a = make()
        mine = fused_fwd(a), fused_bwd(a)
        mine = (*mine, mine[0] + mine[1])
        eager = eager_bytes(ref, make)
        eager = (*eager, eager[0] + eager[1])
        t_ref = phases(ref, make, device, repeat)
        if device.type == "cuda":
            t_fused = phases(fused, make, device, repeat)
            t_comp = phases(torch.compile(ref), make, device, repeat)
        for i, phase in enumerate(("forward", "backward", "both")):
            row = (f"| {name} | {phase} | {eager[i] / 1e6:.1f} | {mine[i] / 1e6:.1f} | {mine[i] / eager[i]:.2f} | "
                   f"{t_ref[i] * 1e3:.2f} |")
            if device.type == "cuda":  # beside the measured time, the time the fused bytes take at peak bandwidth
                gbs = mine[i] / t_fused[i] / 1e9
                at_peak = f"{mine[i] / peak / 1e6:.3f}" if peak else "-"
                row += (f" {t_fused[i] * 1e3:.3f} | {at_peak} | {t_comp[i] * 1e3:.3f} | {gbs:.0f} |"
                        + (f" {100 * gbs / peak:.0f} |" if peak else " - |"))
            print(row, flush=True)


if __name__ == "__main__":
    main()
