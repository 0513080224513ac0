"""kernels/blend.py: the Triton blends against the references, values and every gradient (under TRITON_INTERPRET=1
on CPU, see conftest.py)."""
import pytest
import torch

from conftest import layouts_agree, strided
from kernels.blend import (BlendFunction, BlendSoftmaxFunction, blend, blend_reference, blend_softmax,
                           blend_softmax_reference)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# 400 pixels > one 256-pixel block; 40 channels > one 16-channel step of a program (16, 16, then 8); one channel
SHAPES = [(1, 3, 1, 1), (2, 3, 7, 9), (1, 5, 33, 65), (3, 3, 20, 20), (2, 40, 5, 7), (2, 1, 6, 6)]


def leaf(*shape, scale=1.0, shift=0.0):
    return (torch.randn(*shape, device=DEVICE) * scale + shift).requires_grad_()


def check(fn, ref, args):
    out = fn(*args)
    ref_args = [t.detach().double().requires_grad_() for t in args]
    expected = ref(*ref_args)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, args, g), torch.autograd.grad(expected, ref_args, g.double())):
        assert a.shape == b.shape and a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_single_mask_matches_reference(shape):
    N, C, H, W = shape
    a = torch.rand(N, 1, H, W, device=DEVICE).requires_grad_()
    check(BlendFunction.apply, blend_reference, [leaf(*shape), leaf(*shape), a])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [2, 10])
def test_softmax_matches_reference(shape, n):
    N, C, H, W = shape
    logits = leaf(N, n, H, W, scale=5.0, shift=30.0)  # large logits: the online softmax must not overflow
    check(BlendSoftmaxFunction.apply, blend_softmax_reference, [leaf(*shape), leaf(N, n - 1, C, H, W), logits])


def test_properties_of_the_references():
    x, c = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    assert torch.equal(blend_reference(x, c, torch.ones(2, 1, 5, 5)), c)    # all attention: the content
    assert torch.equal(blend_reference(x, c, torch.zeros(2, 1, 5, 5)), x)   # none: the input
    # A background logit far above the others gives the input back; n = 2 is the single-mask form with a = σ(l0 − l1).
    logits = torch.randn(2, 2, 5, 5)
    torch.testing.assert_close(blend_softmax_reference(x, c[:, None], logits),
                               blend_reference(x, c, torch.sigmoid(logits[:, :1] - logits[:, 1:])))
    far = torch.cat([torch.zeros(2, 9, 5, 5), torch.full((2, 1, 5, 5), 100.0)], 1)
    torch.testing.assert_close(blend_softmax_reference(x, torch.randn(2, 9, 3, 5, 5), far), x)


def test_gradcheck_references_float64():
    x, c = (torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    a = torch.rand(1, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(blend_reference, (x, c, a))
    cs = torch.randn(1, 3, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(1, 4, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(blend_softmax_reference, (x, cs, logits))


def test_runs_are_bitwise_equal_and_dispatch(monkeypatch):
    args = [leaf(2, 3, 33, 65), leaf(2, 9, 3, 33, 65), leaf(2, 10, 33, 65)]
    g = torch.randn(2, 3, 33, 65, device=DEVICE)
    runs = []
    for _ in range(2):
        out = BlendSoftmaxFunction.apply(*args)
        runs.append([out, *torch.autograd.grad(out, args, g)])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    monkeypatch.setenv("ATTNGAN_KERNELS", "triton")
    assert blend_softmax(*args).grad_fn.name().endswith("BlendSoftmaxFunctionBackward")
    assert blend(args[0], args[0], args[2][:, :1]).grad_fn.name().endswith("BlendFunctionBackward")
    monkeypatch.setenv("ATTNGAN_KERNELS", "torch")
    assert not blend_softmax(*args).grad_fn.name().endswith("BlendSoftmaxFunctionBackward")


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_half_precision(dtype, tol):
    x, c, l = torch.randn(2, 3, 33, 65, device=DEVICE), torch.randn(2, 9, 3, 33, 65, device=DEVICE), \
        torch.randn(2, 10, 33, 65, device=DEVICE)
    out = BlendSoftmaxFunction.apply(x.to(dtype), c.to(dtype), l.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), blend_softmax_reference(x, c, l), rtol=tol, atol=tol)
    a = torch.rand(2, 1, 33, 65, device=DEVICE)
    out = BlendFunction.apply(x.to(dtype), c[:, 0].to(dtype), a.to(dtype))
    torch.testing.assert_close(out.float(), blend_reference(x, c[:, 0], a), rtol=tol, atol=tol)


@pytest.mark.parametrize("x_shape, c_shape, a_shape", [((2, 3, 5, 7), (2, 3, 5, 7), (1, 1, 5, 7)),
                                                       ((2, 3, 5, 7), (1, 3, 5, 7), (2, 1, 5, 7)),
                                                       ((2, 3, 5, 7), (2, 3, 5, 7), (2, 3, 5, 7))])
def test_shapes_the_kernels_cannot_index_broadcast_as_pytorch_does(monkeypatch, x_shape, c_shape, a_shape):
    """One map for the batch, one content for the batch, one map per channel: a·c + (1 − a)·x broadcast, values and
    gradients, not reads out of bounds."""
    monkeypatch.setenv("ATTNGAN_KERNELS", "triton")
    x, c, a = leaf(*x_shape), leaf(*c_shape), torch.rand(*a_shape, device=DEVICE).requires_grad_()
    check(blend, lambda x, c, a: a * c + (1 - a) * x, [x, c, a])


def test_softmax_logits_shared_by_the_batch_broadcast(monkeypatch):
    monkeypatch.setenv("ATTNGAN_KERNELS", "triton")
    check(blend_softmax, blend_softmax_reference, [leaf(2, 3, 5, 7), leaf(2, 2, 3, 5, 7), leaf(1, 3, 5, 7)])


@pytest.mark.parametrize("softmax", [False, True])
def test_a_second_backward_through_the_kernels_raises(softmax):
    x = leaf(2, 3, 5, 7)
    out = BlendSoftmaxFunction.apply(x, leaf(2, 2, 3, 5, 7), leaf(2, 3, 5, 7)) if softmax else \
        BlendFunction.apply(x, leaf(2, 3, 5, 7), torch.rand(2, 1, 5, 7, device=DEVICE).requires_grad_())
    dx, = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        dx.sum().backward()


def test_a_wide_input_takes_its_channels_a_block_at_a_time():
    """An uncapped power-of-two channel tile (256 × 256 values per tensor at C = 256) would spill registers: each
    kernel takes at most its own block (chosen from the compiled registers, tests/test_kernels_compile.py)."""
    from kernels.blend import CONFIG, _grid
    for kernel, (cap, _) in CONFIG.items():
        blocks = [_grid(torch.empty(1, C, 4, 4), kernel)[3]["BLOCK_C"] for C in (1, 3, 16, 17, 256)]
        assert blocks == [1, 4, min(16, cap), cap, cap], kernel


def blends(shape, n=None):
    """x, content, attention (or logits for n masks) for a blend of N×C×H×W images."""
    N, C, H, W = shape
    if n is None:
        return [leaf(*shape), leaf(*shape), torch.rand(N, 1, H, W, device=DEVICE).requires_grad_()]
    return [leaf(*shape), leaf(N, n - 1, C, H, W), leaf(N, n, H, W, scale=3.0)]


FUNCTIONS = {None: (BlendFunction.apply, blend_reference), 3: (BlendSoftmaxFunction.apply, blend_softmax_reference)}


@pytest.mark.parametrize("n", [None, 3])
def test_non_contiguous_inputs_and_upstream_gradient(n):
    fn, ref = FUNCTIONS[n]
    args = [strided(t) for t in blends((2, 3, 7, 9), n)]
    assert not any(t.is_contiguous() for t in args)
    out = fn(*args)
    ref_args = [t.detach().double().contiguous().requires_grad_() for t in args]
    expected = ref(*ref_args)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    g = strided(torch.randn_like(out))
    for a, b in zip(torch.autograd.grad(out, args, g), torch.autograd.grad(expected, ref_args, g.double())):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


def test_attention_of_exactly_zero_and_one_picks_the_input_and_the_content():
    x, c, _ = blends((2, 3, 7, 9))
    a = torch.randint(0, 2, (2, 1, 7, 9), device=DEVICE).float().requires_grad_()
    out = BlendFunction.apply(x, c, a)
    one = (a == 1).expand_as(x)
    assert torch.equal(out[one], c[one]) and torch.equal(out[~one], x[~one])
    g = torch.randn_like(out)
    dx, dc, da = torch.autograd.grad(out, (x, c, a), g)
    assert torch.equal(dc[one], g[one]) and torch.equal(dc[~one], torch.zeros_like(dc[~one]))
    assert torch.equal(dx[~one], g[~one]) and torch.equal(dx[one], torch.zeros_like(dx[one]))
    torch.testing.assert_close(da, (g * (c - x)).sum(1, keepdim=True), rtol=1e-5, atol=1e-5)  # d/da of a·c + (1−a)·x


def test_one_mask_is_the_input_itself():
    """n = 1: the softmax of a single logit is 1, so Eq. (2) is x, with no gradient for the logit."""
    x, c, logits = blends((2, 3, 7, 9), n=1)
    out = BlendSoftmaxFunction.apply(x, c, logits)
    assert torch.equal(out, x)
    g = torch.randn_like(out)
    dx, dc, dl = torch.autograd.grad(out, (x, c, logits), g)
    assert torch.equal(dx, g) and dc.numel() == 0 and torch.equal(dl, torch.zeros_like(dl))


CASES = ["fp16 x", "fp16 attention", "channels-last x", "channels-last content", "all channels-last"]


def case_inputs(case, n):
    args = [t.detach() for t in blends((2, 3, 7, 9), n)]
    i = {"x": 0, "attention": 2, "content": 1}
    if case.startswith("fp16"):
        args[i[case.split()[1]]] = args[i[case.split()[1]]].half()
    else:
        which = range(3) if case.startswith("all") else [i[case.split()[1]]]
        args = [t.contiguous(memory_format=torch.channels_last) if j in which and t.dim() == 4 else t
                for j, t in enumerate(args)]
    return args


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("n", [None, 3])
def test_the_kernels_return_the_references_dtype_and_layout(case, n):
    fn, ref = FUNCTIONS[n]
    args = case_inputs(case, n)
    out, expected = fn(*args), ref(*args)
    assert layouts_agree(out, expected), (out.dtype, out.stride(), expected.dtype, expected.stride())
    torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-3)
