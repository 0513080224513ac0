"""The kernels' backward passes compute only the gradients autograd asks for (ctx.needs_input_grad): the input
image's, often, and UAIT's frozen attention in stage 2 are not asked for. The backward returns None for them, and
the gradients it does return still match the reference."""
import pytest
import torch

from kernels.adalin import AdaLINFunction, adalin_reference
from kernels.blend import BlendFunction, BlendSoftmaxFunction, blend_reference, blend_softmax_reference
from kernels.boxmask import BoxCropFunction, box_crop_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _randn(*shape):
    return torch.randn(*shape, device=DEVICE)


# op -> (its autograd.Function, its inputs, its reference, the inputs left without grad in turn)
CASES = {
    "blend": (BlendFunction, lambda: [_randn(2, 5, 9, 7), _randn(2, 5, 9, 7), torch.rand(2, 1, 9, 7, device=DEVICE)],
              blend_reference, [(0,), (1,), (2,), (0, 2)]),
    "blend_softmax": (BlendSoftmaxFunction, lambda: [_randn(2, 5, 9, 7), _randn(2, 3, 5, 9, 7), _randn(2, 4, 9, 7)],
                      blend_softmax_reference, [(0,), (1,), (2,), (0, 1)]),
    "box_crop": (BoxCropFunction, lambda: [_randn(2, 5, 9, 7), torch.rand(2, 2, 2, device=DEVICE) - 0.5,
                                           torch.rand(2, 2, 2, device=DEVICE) * 0.3 + 0.2, 20.0],
                 box_crop_reference, [(0,), (1, 2)]),
    "adalin": (AdaLINFunction, lambda: [_randn(2, 5, 9, 7), torch.rand(1, 5, 1, 1, device=DEVICE), _randn(2, 5),
                                        _randn(2, 5), 1e-5, True],
               lambda *a: adalin_reference(*a[:4], eps=a[4], unbiased=a[5]), [(0,)]),
}


@pytest.mark.parametrize("case, frozen", [(case, frozen) for case, c in CASES.items() for frozen in c[3]])
def test_only_the_gradients_asked_for(monkeypatch, case, frozen):
    function, make, reference, _ = CASES[case]
    args = make()
    tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    for i in tensors:
        args[i].requires_grad_(i not in frozen)
    returned = []
    backward = function.backward
    monkeypatch.setattr(function, "backward", staticmethod(lambda ctx, *g: returned.append(backward(ctx, *g))
                                                           or returned[-1]))
    y = function.apply(*args)
    dy = torch.randn_like(y)
    asked = [i for i in tensors if i not in frozen]
    ours = torch.autograd.grad(y, [args[i] for i in asked], dy)
    theirs = torch.autograd.grad(reference(*args), [args[i] for i in asked], dy)
    assert all(returned[0][i] is None for i in frozen), [type(g) for g in returned[0]]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
