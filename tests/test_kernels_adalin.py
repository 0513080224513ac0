"""kernels/adalin.py: the reference AdaLIN / LIN against Eq. (1) written out, and the dispatch switch."""
import pytest
import torch
import torch.nn.functional as F

from kernels import backend
from kernels.adalin import adalin, adalin_reference


def eq1(a, rho, gamma, beta, eps=1e-5, unbiased=True):
    """U-GAT-IT Eq. (1), term by term."""
    mu_I, var_I = a.mean((2, 3), keepdim=True), a.var((2, 3), keepdim=True, unbiased=unbiased)
    mu_L, var_L = a.mean((1, 2, 3), keepdim=True), a.var((1, 2, 3), keepdim=True, unbiased=unbiased)
    a_I = (a - mu_I) / torch.sqrt(var_I + eps)
    a_L = (a - mu_L) / torch.sqrt(var_L + eps)
    g = gamma.reshape(gamma.shape[0] if gamma.dim() == 2 else 1, -1, 1, 1)
    b = beta.reshape(beta.shape[0] if beta.dim() == 2 else 1, -1, 1, 1)
    return g * (rho * a_I + (1 - rho) * a_L) + b


SHAPES = [(1, 3, 2, 1), (2, 5, 7, 9), (3, 12, 33, 65), (2, 256, 16, 16)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("unbiased", [True, False])
def test_reference_is_eq1(shape, unbiased):
    N, C = shape[:2]
    x = torch.randn(shape, dtype=torch.float64) * 3 + 1000  # a large mean, to catch cancellation
    rho = torch.rand(1, C, 1, 1, dtype=torch.float64)
    for gamma, beta in ((torch.randn(N, C, dtype=torch.float64), torch.randn(N, C, dtype=torch.float64)),   # AdaLIN
                        (torch.randn(1, C, 1, 1, dtype=torch.float64), torch.randn(1, C, 1, 1, dtype=torch.float64))):  # LIN
        torch.testing.assert_close(adalin_reference(x, rho, gamma, beta, unbiased=unbiased),
                                   eq1(x, rho, gamma, beta, unbiased=unbiased), rtol=1e-9, atol=1e-9)


def test_float32_matches_float64():
    x = torch.randn(2, 64, 33, 31) * 3 + 1000
    rho, gamma, beta = torch.rand(1, 64, 1, 1), torch.randn(2, 64), torch.randn(2, 64)
    out = adalin_reference(x, rho, gamma, beta)
    ref = eq1(x.double(), rho.double(), gamma.double(), beta.double())
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


def test_gradients_match_eq1():
    x = torch.randn(2, 7, 9, 11, dtype=torch.float64, requires_grad=True)
    rho = torch.rand(1, 7, 1, 1, dtype=torch.float64, requires_grad=True)
    gamma = torch.randn(2, 7, dtype=torch.float64, requires_grad=True)
    beta = torch.randn(2, 7, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 7, 9, 11, dtype=torch.float64)
    ours = torch.autograd.grad(adalin_reference(x, rho, gamma, beta), (x, rho, gamma, beta), g)
    ref = torch.autograd.grad(eq1(x, rho, gamma, beta), (x, rho, gamma, beta), g)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_backend_switch(monkeypatch):
    x = torch.zeros(1)
    monkeypatch.setenv("ATTNGAN_KERNELS", "auto")
    assert backend(x) == "torch"  # CPU tensor
    monkeypatch.setenv("ATTNGAN_KERNELS", "torch")
    assert backend(x) == "torch"
    monkeypatch.setenv("ATTNGAN_KERNELS", "cuda")
    with pytest.raises(ValueError, match="ATTNGAN_KERNELS"):
        backend(x)
    monkeypatch.setenv("ATTNGAN_KERNELS", "triton")
    with pytest.raises(NotImplementedError, match="no Triton kernel"):
        adalin(torch.randn(1, 2, 3, 3), torch.ones(1, 2, 1, 1), torch.ones(2), torch.zeros(2))
