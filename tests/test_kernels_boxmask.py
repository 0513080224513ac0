"""kernels/boxmask.py: DA-GAN's soft box masks (Eq. 2-4), the Triton crop against the reference, values and the
gradients for the image, the centres and the half-sizes (under TRITON_INTERPRET=1 on CPU, see conftest.py)."""
import pytest
import torch

from conftest import layouts_agree, strided
from kernels.boxmask import BoxCropFunction, box_crop, box_crop_reference, box_masks

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def boxes(N, B, outside=False):
    centres = torch.rand(N, B, 2, device=DEVICE) * 1.6 - 0.8
    if outside:  # partly outside the image
        centres[:, 0] = torch.tensor([0.95, -1.1], device=DEVICE)
    halves = torch.rand(N, B, 2, device=DEVICE) * 0.4 + 0.2
    return centres.requires_grad_(), halves.requires_grad_()


@pytest.mark.parametrize("shape, B, k", [((1, 3, 1, 1), 1, 5.0), ((2, 3, 7, 9), 4, 10.0), ((1, 5, 33, 65), 2, 50.0),
                                         ((2, 3, 20, 20), 3, 20.0)])
@pytest.mark.parametrize("outside", [False, True])
def test_crop_matches_reference(shape, B, k, outside):
    X = torch.randn(shape, device=DEVICE).requires_grad_()
    centres, halves = boxes(shape[0], B, outside)
    R = BoxCropFunction.apply(X, centres, halves, k)
    ref_args = [t.detach().double().requires_grad_() for t in (X, centres, halves)]
    expected = box_crop_reference(*ref_args, k)
    torch.testing.assert_close(R.double(), expected, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(R)
    ours = torch.autograd.grad(R, (X, centres, halves), g)
    theirs = torch.autograd.grad(expected, ref_args, g.double())
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4 * max(1.0, b.abs().max().item()))


def test_mask_is_separable_rectangle_for_large_k():
    centres = torch.tensor([[[0.0, 0.5]]])
    halves = torch.tensor([[[0.5, 0.25]]])
    m = box_masks(centres, halves, 64, 64, k=1e4)[0, 0]
    ys, xs = torch.nonzero(m > 0.5, as_tuple=True)
    # x in [-0.5, 0.5] -> pixel columns 16..47; y in [0.25, 0.75] -> rows 40..55
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (16, 47, 40, 55)
    assert torch.all((m < 1e-3) | (m > 1 - 1e-3))
    soft = box_masks(centres, halves, 64, 64, k=5.0)[0, 0]
    torch.testing.assert_close(soft, soft[:, 32:33] * soft[40:41, :] / soft[40, 32])  # rank one: m_y ⊗ m_x


def test_gradcheck_reference_float64():
    X = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    c = torch.tensor([[[0.1, -0.2], [0.9, 0.3]]], dtype=torch.float64, requires_grad=True)
    h = torch.tensor([[[0.4, 0.3], [0.5, 0.6]]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda X, c, h: box_crop_reference(X, c, h, 4.0), (X, c, h))


def test_runs_are_bitwise_equal_and_dispatch(monkeypatch):
    X = torch.randn(2, 3, 33, 65, device=DEVICE).requires_grad_()
    c, h = boxes(2, 4)
    g = torch.randn(2, 4, 3, 33, 65, device=DEVICE)
    runs = []
    for _ in range(2):
        R = BoxCropFunction.apply(X, c, h, 30.0)
        runs.append([R, *torch.autograd.grad(R, (X, c, h), g)])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    monkeypatch.setenv("ATTNGAN_KERNELS", "triton")
    assert box_crop(X, c, h, 30.0).grad_fn.name().endswith("BoxCropFunctionBackward")
    monkeypatch.setenv("ATTNGAN_KERNELS", "torch")
    assert not box_crop(X, c, h, 30.0).grad_fn.name().endswith("BoxCropFunctionBackward")


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_half_precision(dtype, tol):
    X = torch.randn(2, 3, 33, 65, device=DEVICE)
    c, h = (t.detach().to(dtype) for t in boxes(2, 4))
    R = BoxCropFunction.apply(X.to(dtype), c, h, 30.0)
    assert R.dtype == dtype
    torch.testing.assert_close(R.float(), box_crop_reference(X, c.float(), h.float(), 30.0), rtol=tol, atol=tol)


def test_a_tensor_k_keeps_its_gradient(monkeypatch):
    """d(sum R)/dk against central differences in float64."""
    monkeypatch.setenv("ATTNGAN_KERNELS", "triton")
    X = torch.randn(2, 3, 9, 11, device=DEVICE, dtype=torch.float64)
    c, h = (t.detach().double() for t in boxes(2, 2))
    k = torch.tensor(7.0, device=DEVICE, dtype=torch.float64, requires_grad=True)
    box_crop(X, c, h, k).sum().backward()
    e = 1e-4
    fd = (box_crop_reference(X, c, h, 7.0 + e).sum() - box_crop_reference(X, c, h, 7.0 - e).sum()) / (2 * e)
    assert k.grad is not None
    torch.testing.assert_close(k.grad, fd.detach(), rtol=1e-6, atol=1e-8)


def test_a_second_backward_through_the_kernels_raises():
    X = torch.randn(2, 3, 9, 11, device=DEVICE).requires_grad_()
    c, h = boxes(2, 2)
    dX, = torch.autograd.grad(BoxCropFunction.apply(X, c, h, 20.0).square().sum(), X, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        dX.sum().backward()


def check(X, centres, halves, k, g=None, rtol=1e-5):
    """The kernel's crop and its three gradients against the reference in float64."""
    R = BoxCropFunction.apply(X, centres, halves, k)
    ref_args = [t.detach().double().contiguous().requires_grad_() for t in (X, centres, halves)]
    expected = box_crop_reference(*ref_args, k)
    torch.testing.assert_close(R.double(), expected, rtol=rtol, atol=1e-5)
    g = torch.randn_like(R) if g is None else g(R)
    for a, b in zip(torch.autograd.grad(R, (X, centres, halves), g), torch.autograd.grad(expected, ref_args, g.double())):
        assert a.shape == b.shape
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4 * max(1.0, b.abs().max().item()))


@pytest.mark.parametrize("k", [1e-3, 1.0, 1e3, 1e6])
def test_crop_matches_reference_from_nearly_flat_to_hard_edges(k):
    """k from 1e-3 (masks barely above 0 and flat: σ differences of numbers near 1/2) to 1e6 (edges 1e-4 pixels
    wide: every σ saturated, clamped without overflow)."""
    check(torch.randn(2, 3, 7, 9, device=DEVICE).requires_grad_(), *boxes(2, 3, outside=True), k)


@pytest.mark.parametrize("C", [1, 40])
def test_one_channel_and_more_channels_than_one_step_of_sixteen(C):
    check(torch.randn(2, C, 7, 9, device=DEVICE).requires_grad_(), *boxes(2, 3), 20.0)


def test_non_contiguous_inputs_and_upstream_gradient():
    X = strided(torch.randn(2, 3, 7, 9, device=DEVICE).requires_grad_())
    centres, halves = (strided(t) for t in boxes(2, 3))
    assert not any(t.is_contiguous() for t in (X, centres, halves))
    check(X, centres, halves, 20.0, g=lambda R: strided(torch.randn_like(R)))


@pytest.mark.parametrize("case", ["fp16 X", "fp16 boxes", "channels-last X"])
def test_the_kernel_returns_the_references_dtype_and_layout(case):
    X = torch.randn(2, 3, 7, 9, device=DEVICE)
    c, h = (t.detach() for t in boxes(2, 3))
    if case == "fp16 X":
        X = X.half()
    elif case == "fp16 boxes":
        c, h = c.half(), h.half()
    else:
        X = X.contiguous(memory_format=torch.channels_last)
    R, expected = BoxCropFunction.apply(X, c, h, 20.0), box_crop_reference(X, c, h, 20.0)
    assert layouts_agree(R, expected), (R.dtype, R.stride(), expected.dtype, expected.stride())
    # Values against fp32 math on the same (rounded) inputs: the reference itself works in fp16 for fp16 boxes.
    torch.testing.assert_close(R, box_crop_reference(X.float(), c.float(), h.float(), 20.0), rtol=1e-5, atol=1e-5)
