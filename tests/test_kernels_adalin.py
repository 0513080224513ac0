"""kernels/adalin.py: the reference AdaLIN / LIN against Eq. (1) written out, the Triton kernels against the
reference (forward and every gradient; under TRITON_INTERPRET=1 on CPU, see conftest.py), and the dispatch switch."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import kernels.adalin
import ugatit
from benchmarks.kernels_compile import kernels_by_name, replay
from conftest import ROOT, layouts_agree, strided
from kernels import backend
from kernels.adalin import AdaLINFunction, adalin, adalin_eq1, adalin_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


SHAPES = [(1, 3, 2, 1), (2, 5, 7, 9), (3, 12, 33, 65), (2, 256, 16, 16)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("unbiased", [True, False])
def test_reference_is_adalin_eq1(shape, unbiased):
    N, C = shape[:2]
    x = torch.randn(shape, dtype=torch.float64) * 3 + 1000  # a large mean, to catch cancellation
    rho = torch.rand(1, C, 1, 1, dtype=torch.float64)
    for gamma, beta in ((torch.randn(N, C, dtype=torch.float64), torch.randn(N, C, dtype=torch.float64)),   # AdaLIN
                        (torch.randn(1, C, 1, 1, dtype=torch.float64), torch.randn(1, C, 1, 1, dtype=torch.float64))):  # LIN
        torch.testing.assert_close(adalin_reference(x, rho, gamma, beta, unbiased=unbiased),
                                   adalin_eq1(x, rho, gamma, beta, unbiased=unbiased), rtol=1e-9, atol=1e-9)


def test_float32_matches_float64():
    x = torch.randn(2, 64, 33, 31) * 3 + 1000
    rho, gamma, beta = torch.rand(1, 64, 1, 1), torch.randn(2, 64), torch.randn(2, 64)
    out = adalin_reference(x, rho, gamma, beta)
    ref = adalin_eq1(x.double(), rho.double(), gamma.double(), beta.double())
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=5e-3)


def test_rho_one_is_instance_norm_and_rho_zero_is_layer_norm():
    x = torch.randn(3, 6, 8, 10)
    ones, zeros = torch.ones(6), torch.zeros(6)
    rho1, rho0 = torch.ones(1, 6, 1, 1), torch.zeros(1, 6, 1, 1)
    torch.testing.assert_close(adalin(x, rho1, ones, zeros, unbiased=False), F.instance_norm(x, eps=1e-5),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(adalin(x, rho0, ones, zeros, unbiased=False), F.layer_norm(x, x.shape[1:], eps=1e-5),
                               rtol=1e-4, atol=1e-5)
    # The default, unbiased variance (the authors' torch.var) divides by HW - 1, so it is not IN's.
    ref = (x - x.mean((2, 3), keepdim=True)) / torch.sqrt(x.var((2, 3), keepdim=True) + 1e-5)
    torch.testing.assert_close(adalin(x, rho1, ones, zeros), ref, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(adalin(x, rho1, ones, zeros), F.instance_norm(x, eps=1e-5), atol=1e-3)


def test_gradcheck_float64():
    x = torch.randn(2, 4, 5, 3, dtype=torch.float64, requires_grad=True)
    rho = torch.rand(1, 4, 1, 1, dtype=torch.float64, requires_grad=True)
    gamma = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    beta = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(adalin_reference, (x, rho, gamma, beta))
    g1, b1 = (torch.randn(1, 4, 1, 1, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(adalin_reference, (x, rho, g1, b1))


def test_gradients_match_adalin_eq1():
    x = torch.randn(2, 7, 9, 11, dtype=torch.float64, requires_grad=True)
    rho = torch.rand(1, 7, 1, 1, dtype=torch.float64, requires_grad=True)
    gamma = torch.randn(2, 7, dtype=torch.float64, requires_grad=True)
    beta = torch.randn(2, 7, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 7, 9, 11, dtype=torch.float64)
    ours = torch.autograd.grad(adalin_reference(x, rho, gamma, beta), (x, rho, gamma, beta), g)
    ref = torch.autograd.grad(adalin_eq1(x, rho, gamma, beta), (x, rho, gamma, beta), g)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_backend_switch(monkeypatch):
    x = torch.zeros(1)
    monkeypatch.setenv("ATTNGAN_KERNELS", "auto")
    assert backend(x) == "torch"  # CPU tensor
    monkeypatch.setenv("ATTNGAN_KERNELS", "torch")
    assert backend(x) == "torch"
    monkeypatch.setenv("ATTNGAN_KERNELS", "triton")
    assert backend(x) == "triton"
    monkeypatch.setenv("ATTNGAN_KERNELS", "cuda")
    with pytest.raises(ValueError, match="ATTNGAN_KERNELS"):
        backend(x)


def test_a_broken_triton_install_warns_and_the_references_serve(tmp_path):
    """A `triton` that is found but fails to import: on a CUDA tensor, auto picks the reference, with one warning,
    and the ops run; before, the op files left their kernels undefined and auto picked them (NameError)."""
    (tmp_path / "triton").mkdir()
    (tmp_path / "triton/__init__.py").write_text("raise ImportError('libcuda.so.1: cannot open shared object file')\n")
    code = ("import torch, warnings; warnings.simplefilter('always')\n"
            "from kernels import backend\nfrom kernels.adalin import adalin\n"
            "cuda_like = type('T', (), {'is_cuda': True})()\n"
            "print(backend(cuda_like), backend(cuda_like))\n"
            "x = torch.randn(1, 2, 3, 3)\n"
            "print(adalin(x, torch.ones(1, 2, 1, 1), torch.ones(1, 2), torch.zeros(1, 2)).shape)\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "ATTNGAN_KERNELS": "auto"}
    env.pop("TRITON_INTERPRET", None)
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.splitlines() == ["torch torch", "torch.Size([1, 2, 3, 3])"]
    assert p.stderr.count("triton is installed but does not import (ImportError: libcuda.so.1") == 1


def inputs(shape, adaptive, dtype=torch.float32, mean=0.0):
    N, C = shape[:2]
    x = torch.randn(shape, device=DEVICE) * 3 + mean
    rho = torch.rand(1, C, 1, 1, device=DEVICE)
    if adaptive:   # AdaLIN: γ, β per image from the MLP
        gamma, beta = torch.randn(N, C, device=DEVICE), torch.randn(N, C, device=DEVICE)
    else:          # LIN: learned per channel
        gamma, beta = torch.randn(1, C, 1, 1, device=DEVICE), torch.randn(1, C, 1, 1, device=DEVICE)
    return [t.to(dtype).requires_grad_() for t in (x, rho, gamma, beta)]


# 40×40: two blocks of 1024 in a row; 50×90: three reduction chunks of 2048; 130 channels: two blocks of 128
KERNEL_SHAPES = [(1, 3, 1, 2), (2, 5, 7, 9), (3, 12, 33, 65), (2, 6, 40, 40), (2, 3, 50, 90), (3, 130, 3, 5)]


@pytest.mark.parametrize("shape", KERNEL_SHAPES)
@pytest.mark.parametrize("adaptive", [True, False])
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("mean", [0.0, 1000.0])
def test_triton_matches_reference(shape, adaptive, unbiased, mean):
    args = inputs(shape, adaptive, mean=mean)
    y = AdaLINFunction.apply(*args, 1e-5, unbiased)
    ref_args = [t.detach().double().requires_grad_() for t in args]
    ref = adalin_reference(*ref_args, unbiased=unbiased)
    torch.testing.assert_close(y.double(), ref, rtol=0, atol=1e-4)
    dy = torch.randn_like(y)
    ours = torch.autograd.grad(y, args, dy)
    theirs = torch.autograd.grad(ref, ref_args, dy.double())
    # ρ's gradient sums terms that cancel; fp32 PyTorch itself is 1.7e-3 off the fp64 value at the mean-1000 shapes.
    for name, a, b, tol in zip(("x", "rho", "gamma", "beta"), ours, theirs, (1e-5, 5e-3, 1e-4, 1e-5)):
        assert a.shape == b.shape and a.dtype == args[0].dtype
        err = (a.double() - b).abs().max() / b.abs().max().clamp_min(1)
        assert err < tol, (name, err.item())


@pytest.mark.parametrize("adaptive", [True, False])
def test_triton_one_pixel_maps_with_the_biased_variance(adaptive):
    """H×W = 1×1: instance statistics of one value (the unbiased variance would divide by zero, in the reference too)."""
    args = inputs((2, 3, 1, 1), adaptive, mean=5.0)
    y = AdaLINFunction.apply(*args, 1e-5, False)
    ref_args = [t.detach().double().requires_grad_() for t in args]
    ref = adalin_reference(*ref_args, unbiased=False)
    torch.testing.assert_close(y.double(), ref, rtol=0, atol=1e-4)
    for a, b in zip(torch.autograd.grad(y.sum(), args), torch.autograd.grad(ref.sum(), ref_args)):
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-4)


def test_triton_runs_are_bitwise_equal():
    args = inputs((2, 5, 33, 65), adaptive=True)
    dy = torch.randn(2, 5, 33, 65, device=DEVICE)
    first, second = ([AdaLINFunction.apply(*args, 1e-5, True)] for _ in range(2))
    for out in (first, second):
        out += torch.autograd.grad(out[0], args, dy)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_dispatch_uses_the_kernel_when_forced(monkeypatch):
    args = inputs((2, 3, 5, 5), adaptive=True)
    monkeypatch.setenv("ATTNGAN_KERNELS", "triton")
    assert adalin(*args).grad_fn.name().endswith("AdaLINFunctionBackward")
    monkeypatch.setenv("ATTNGAN_KERNELS", "torch")
    assert not adalin(*args).grad_fn.name().endswith("AdaLINFunctionBackward")


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-2), (torch.bfloat16, 1e-1)])
def test_triton_half_precision(dtype, tol):
    args = inputs((2, 64, 33, 65), adaptive=True, dtype=dtype)
    y = AdaLINFunction.apply(*args, 1e-5, True)
    ref = adalin_reference(*[t.detach().float() for t in args])
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), ref, rtol=tol, atol=tol)


def test_ugatit_step_with_the_kernel_matches_the_reference(monkeypatch):
    """A whole U-GAT-IT training step: the same losses and gradients with ATTNGAN_KERNELS=triton and =torch."""
    from test_ugatit import images, make_args
    results = []
    for choice in ("torch", "triton"):
        monkeypatch.setenv("ATTNGAN_KERNELS", choice)
        torch.manual_seed(0)
        m = ugatit.make_model(make_args(img_size=32, n_dis=4), torch.device(DEVICE))
        grads = {}
        step = m.optimizers["G"].step
        m.optimizers["G"].step = lambda *a, **kw: (grads.update(
            {i: p.grad.clone() for i, p in enumerate(m.optimizers["G"].param_groups[0]["params"])}), step(*a, **kw))
        torch.manual_seed(1)
        losses = m.train_step(*(x.to(DEVICE) for x in images(2, 32)))
        results.append((losses, grads))
    (l_ref, g_ref), (l_tri, g_tri) = results
    for k in l_ref:
        torch.testing.assert_close(l_tri[k], l_ref[k], rtol=1e-4, atol=1e-4)
    for i in g_ref:
        scale = g_ref[i].abs().max().clamp_min(1e-3)
        assert (g_tri[i] - g_ref[i]).abs().max() / scale < 1e-4, i


def constant_maps_eq1(x, rho, gamma, beta, unbiased):
    """Eq. (1) when every map of x is constant, written out: â_I is exactly 0 and has no gradient, â_L is as printed,
    or 0 where the whole image is constant too."""
    N, C = x.shape[:2]
    gamma, beta = gamma.reshape(-1, C, 1, 1), beta.reshape(-1, C, 1, 1)
    mu_L, var_L = x.mean((1, 2, 3), keepdim=True), x.var((1, 2, 3), keepdim=True, unbiased=unbiased)
    a_L = torch.where(var_L > 0, (x - mu_L) / torch.sqrt(var_L + 1e-5), 0)
    return gamma * (1 - rho) * a_L + beta


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("shape, unbiased", [((2, 5, 7, 9), True), ((2, 5, 7, 9), False), ((2, 3, 1, 1), False),
                                            ((3, 5, 1, 1), True)])
@pytest.mark.parametrize("whole_image", [False, True])
@pytest.mark.parametrize("adaptive", [True, False])
def test_constant_maps_have_no_instance_term(impl, shape, unbiased, whole_image, adaptive):
    """A single-colour image makes every map constant (σ_I² = 0; with 1×1 maps always). Eq. (1)'s â_I is 0 there,
    and the op passes it no gradient: 1/sqrt(ε) = 316 times dy per norm would overflow over U-GAT-IT's stacked norms.
    The values are large (mean 1000), so that rounding noise of the mean divided by sqrt(ε) would show."""
    N, C, H, W = shape
    args = inputs(shape, adaptive)
    x = (torch.randn(N, 1 if whole_image else C, 1, 1, device=DEVICE) * 3 + 1000).expand(shape).contiguous()
    args[0] = x.requires_grad_()
    y = AdaLINFunction.apply(*args, 1e-5, unbiased) if impl == "triton" else adalin_reference(*args, unbiased=unbiased)
    ref_args = [t.detach().double().requires_grad_() for t in args]
    ref = constant_maps_eq1(*ref_args, unbiased=unbiased)
    torch.testing.assert_close(y.double(), ref, rtol=0, atol=1e-3)
    dy = torch.randn_like(y)
    for name, a, b in zip(("x", "rho", "gamma", "beta"), torch.autograd.grad(y, args, dy),
                          torch.autograd.grad(ref, ref_args, dy.double())):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-3, msg=name)


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("adaptive", [True, False])
def test_one_pixel_maps_with_the_unbiased_variance_pass_no_gradient(impl, adaptive):
    """1×1 maps with the unbiased variance (the default): each map is one value, constant, so with ρ = 1 (the
    instance term alone) the output is β and dx is exactly 0. The divisor n − 1 = 0 made dx NaN on both paths."""
    x, _, gamma, beta = inputs((3, 5, 1, 1), adaptive)
    rho = torch.ones(1, 5, 1, 1, device=DEVICE, requires_grad=True)
    y = (AdaLINFunction.apply(x, rho, gamma, beta, 1e-5, True) if impl == "triton" else
         adalin_reference(x, rho, gamma, beta, unbiased=True))
    dx, = torch.autograd.grad(y, x, torch.randn_like(y))
    assert (dx == 0).all(), dx


def test_small_maps_take_blocks_as_wide_as_a_row():
    """16×16 maps (U-GAT-IT's CPU preset): every pass, the elementwise ones too, takes blocks of 256, where blocks
    of 1024 left three quarters of the lanes masked."""
    found = set()
    replay(adalin, inputs((1, 64, 16, 16), adaptive=True), found)
    blocks = {name: dict(zip(kernels_by_name()[name].arg_names, (v for _, v in types)))["BLOCK"]
              for (_, name), (types, _) in found if "BLOCK" in kernels_by_name()[name].arg_names}
    assert set(blocks) == {"_chunk_moments", "_row_affine", "_chunk_grad_sums", "_row_dx"}
    assert set(blocks.values()) == {256}, blocks


def test_a_second_backward_through_the_kernels_raises():
    args = inputs((2, 5, 7, 9), adaptive=True)
    dx, = torch.autograd.grad(AdaLINFunction.apply(*args, 1e-5, True).square().sum(), args[0], create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        dx.sum().backward()


@pytest.mark.parametrize("case", ["fp16 x, fp32 parameters", "channels-last x"])
def test_triton_returns_the_references_dtype_and_memory_format(case):
    x, rho, gamma, beta = (t.detach() for t in inputs((2, 5, 7, 9), adaptive=True))
    x = x.half() if case.startswith("fp16") else x.contiguous(memory_format=torch.channels_last)
    y, ref = AdaLINFunction.apply(x, rho, gamma, beta, 1e-5, True), adalin_reference(x, rho, gamma, beta)
    assert layouts_agree(y, ref), (y.dtype, y.stride(), ref.dtype, ref.stride())
    torch.testing.assert_close(y, ref, rtol=1e-3, atol=1e-3)


def test_triton_moments_are_exact_for_an_outlier_on_a_large_offset():
    """x = 1000 + 0.01·N(0, 1) with the first pixel at 1010: one-pass sums of deviations from that pixel cancel
    in fp32 (the kernel's earlier moments: output error 1.06, σ_I off by 0.4%); each block's two-pass moments,
    merged, give Eq. (1) in float64 to fp32's rounding."""
    x = 1000 + 0.01 * torch.randn(1, 2, 256, 256)
    x[:, :, 0, 0] = 1010
    rho, gamma, beta = torch.full((1, 2, 1, 1), 0.7), torch.ones(1, 2), torch.zeros(1, 2)
    y = AdaLINFunction.apply(*(t.to(DEVICE) for t in (x, rho, gamma, beta)), 1e-5, True)
    ref = adalin_eq1(*(t.double() for t in (x, rho, gamma, beta)))
    assert (y.double().cpu() - ref).abs().max() < 1e-2


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("rho_shape, affine_shape", [((1, 4, 1, 1), ()), ((4,), (4,)), ((), (1, 4, 1, 1))])
def test_both_paths_take_one_rho_or_one_per_channel_in_any_shape(impl, rho_shape, affine_shape):
    """ρ, γ, β of one value for all channels, or C values as C or 1×C×1×1: Eq. (1) with each broadcast over the
    channels, in float64, values and gradients in the parameters' own shapes."""
    x = torch.randn(2, 4, 5, 6, requires_grad=True)
    rho = torch.rand(rho_shape, requires_grad=True)
    gamma, beta = (torch.randn(affine_shape, requires_grad=True) for _ in range(2))
    args = (x, rho, gamma, beta)
    f = adalin_reference if impl == "reference" else lambda *a: AdaLINFunction.apply(*a, 1e-5, True)
    y = f(*args)
    per_channel = lambda p: p.double().reshape(1, -1, 1, 1).expand(1, 4, 1, 1)  # noqa: E731
    ref_args = [x.detach().double().requires_grad_()] + [p.detach().double().requires_grad_() for p in args[1:]]
    ref = adalin_eq1(ref_args[0], *(per_channel(p) for p in ref_args[1:]))
    torch.testing.assert_close(y.double(), ref, rtol=0, atol=1e-4)
    dy = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, args, dy), torch.autograd.grad(ref, ref_args, dy.double())):
        assert a.shape == b.shape
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-3)


class Launches(TorchDispatchMode):
    """Counts kernel launches and records the aten ops run outside them. Every kernel of kernels.adalin is wrapped,
    so that what the interpreter runs inside a launch (copies to and from numpy) is not recorded."""

    def __init__(self):
        super().__init__()
        self.ops, self.launches, self.inside = [], 0, False

    def wrap(self, kernel):
        mode = self

        class Counted:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    mode.launches, mode.inside = mode.launches + 1, True
                    try:
                        return kernel[grid](*args, **kwargs)
                    finally:
                        mode.inside = False
                return launch
        return Counted()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.inside:
            self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


# Allocations and dtype queries; anything else (a reduction, an elementwise op) would be a launch of its own on a GPU.
NOT_LAUNCHES = {"empty", "empty_like", "promote_types"}


@pytest.mark.parametrize("adaptive", [True, False])
def test_forward_and_backward_are_three_launches_each_and_nothing_else(monkeypatch, adaptive):
    forward, backward = Launches(), Launches()
    for name in ("_chunk_moments", "_coefficients", "_row_affine"):
        monkeypatch.setattr(kernels.adalin, name, forward.wrap(getattr(kernels.adalin, name)))
    for name in ("_chunk_grad_sums", "_grad_coefficients", "_row_dx"):
        monkeypatch.setattr(kernels.adalin, name, backward.wrap(getattr(kernels.adalin, name)))
    args = inputs((2, 5, 7, 9), adaptive)
    dy = torch.randn(2, 5, 7, 9, device=DEVICE)
    with forward:
        y = AdaLINFunction.apply(*args, 1e-5, True)
    with backward:
        torch.autograd.grad(y, args, dy)
    for mode in (forward, backward):
        assert mode.launches == 3
        assert set(mode.ops) <= NOT_LAUNCHES, mode.ops


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("shape", [(2, 1), (3,), (2, 4, 1)])
def test_both_paths_refuse_other_parameter_shapes(monkeypatch, impl, shape):
    """One value per image (N×1), or any count but 1, C and N×C: one clear error on either path, where the
    reference alone used to broadcast some of them and the kernels read out of bounds."""
    monkeypatch.setenv("ATTNGAN_KERNELS", impl)
    x = torch.randn(2, 4, 5, 6, device=DEVICE)
    with pytest.raises(ValueError, match=r"adalin: a parameter of shape .* one value, 4 .* or 2×4"):
        adalin(x, torch.rand(4, device=DEVICE), torch.ones(shape, device=DEVICE), torch.zeros(4, device=DEVICE))


@pytest.mark.parametrize("adaptive", [True, False])
def test_triton_non_contiguous_input_parameters_and_upstream_gradient(adaptive):
    args = [strided(t) for t in inputs((2, 5, 7, 9), adaptive)]
    assert not any(t.is_contiguous() for t in args)
    y = AdaLINFunction.apply(*args, 1e-5, True)
    ref_args = [t.detach().double().contiguous().requires_grad_() for t in args]
    ref = adalin_reference(*ref_args)
    torch.testing.assert_close(y.double(), ref, rtol=0, atol=1e-4)
    dy = strided(torch.randn_like(y))
    for a, b in zip(torch.autograd.grad(y, args, dy), torch.autograd.grad(ref, ref_args, dy.double())):
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-4)
