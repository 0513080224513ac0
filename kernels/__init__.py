"""Fused ops for the GPU hot path, one op per file (docs/kernels.md says what each fuses and what it saves).

Each op file holds a readable PyTorch reference (the CPU path and the spec the kernels are tested against), the
Triton kernels, an autograd.Function joining them, and one public function that picks the implementation.
`backend(x)` is that choice, shared by every op:

- ATTNGAN_KERNELS=torch   always the PyTorch reference;
- ATTNGAN_KERNELS=triton  always the Triton kernels (on CPU tensors only under TRITON_INTERPRET=1, as the tests do);
- unset or "auto"         Triton for CUDA tensors when triton imports, the reference elsewhere.
"""
import functools
import importlib.util
import os
import warnings

import torch

CHOICES = ("auto", "torch", "triton")


@functools.cache
def _triton_works():
    """Whether triton imports. Installed but broken (a wheel for another CUDA or Python), it warns once, and the
    references serve: the op files caught the same error when they imported it."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton.language  # noqa: F401
    except Exception as e:
        warnings.warn(f"triton is installed but does not import ({type(e).__name__}: {e}); the fused ops run their "
                      f"PyTorch references instead (reinstall triton to use the kernels)", stacklevel=3)
        return False
    return True


def backend(x):
    choice = os.environ.get("ATTNGAN_KERNELS", "auto")
    if choice not in CHOICES:
        raise ValueError(f"ATTNGAN_KERNELS={choice!r}: use one of {', '.join(CHOICES)}")
    has_triton = _triton_works()
    if choice == "auto":
        return "triton" if x.is_cuda and has_triton else "torch"
    if choice == "triton" and not has_triton:
        raise RuntimeError("ATTNGAN_KERNELS=triton, but triton does not import (pip install triton, on Linux)")
    return choice


def like_reference(out, reference, *inputs):
    """The kernels write their output densely in NCHW order. The reference's elementwise result takes its layout
    from its inputs' (channels-last in, channels-last out; mixed layouts by TensorIterator's rules), so where an
    input is laid out otherwise the reference is run on the meta device, which computes shapes and strides
    without data, and `out` is copied to that layout. Contiguous inputs, the usual case, cost nothing."""
    if all(t.is_contiguous() for t in inputs):
        return out
    meta = reference(*(torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta") for t in inputs))
    if meta.stride() == out.stride():
        return out
    return torch.empty_strided(out.shape, meta.stride(), dtype=out.dtype, device=out.device).copy_(out)


def result_type(*tensors):
    """The dtype PyTorch's arithmetic gives these tensors, which the kernels' outputs take too."""
    return functools.reduce(torch.promote_types, (t.dtype for t in tensors))
