"""AdaLIN and LIN: U-GAT-IT's Adaptive Layer-Instance Normalization (Kim et al., ICLR 2020, Eq. 1).

    AdaLIN(a, γ, β) = γ · (ρ · â_I + (1 − ρ) · â_L) + β
    â_I = (a − μ_I) / sqrt(σ_I² + ε)     instance statistics: per (n, c), over H×W
    â_L = (a − μ_L) / sqrt(σ_L² + ε)     layer statistics:    per n, over C×H×W

In AdaLIN, γ and β are computed per image by the generator's MLP (shape N×C); LIN is the same map with γ and β
learned per channel (shape C, or 1×C×1×1). ρ (1×C×1×1) is a learned gate kept in [0, 1] by the training step.

Variance: the paper does not say; the authors' PyTorch code uses the UNBIASED estimate (torch.var's default), and
we follow it (`unbiased=True`) so that their checkpoints give the same images. Note that it needs H×W ≥ 2.

Constant maps: where σ² is exactly 0 (all values equal), we take 1/sqrt(σ² + ε) to be 0, so that â is exactly 0
and passes no gradient back; the authors' code gives rounding noise / sqrt(ε) and a gradient 316 times dy there,
which a single-colour image compounds over the generator's stacked norms into inf and NaN (see
common.blocks.InstanceNorm2d, which does the same for plain IN). Maps that vary are normalised as Eq. (1) says.

`adalin_eq1` is Eq. (1) as printed; `adalin_reference` computes the same as one affine map per (n, c), and is what
runs on CPU. The Triton path reads x twice in the forward and
twice (with dy) in the backward:
    forward   1. per (n, c) row: the mean and Σ(x − mean)² in fp32, block by block: each block's own, from its
                 values' deviations from the block's first value and then from the block's mean, merged into the
                 row's (Chan et al.'s pairwise combination). As exact as fp32 allows for data far from 0
                 (x ≈ 1000 ± 0.01) and for an outlier anywhere; layer statistics follow from these N×C numbers (the same combination), so
                 x is not read again for them;
              2. elementwise: y = (x − μ_I) · scale + shift, one (scale, shift) per (n, c).
    backward  1. per row: Σ dy and Σ dy · (x − μ_I);
              2. elementwise: dx = dy · scale + b · (x − μ_I) + a.
The per-(n, c) coefficients (scale, shift, a, b) and the gradients for ρ, γ, β are small N×C tensors computed with
PyTorch (autograd over `_coefficients`), so the kernels stay four short loops and the math stays in one place.
"""
import functools

import torch
from torch.autograd.function import once_differentiable

from kernels import backend

try:
    import triton
    import triton.language as tl
except Exception:  # no Triton wheel (macOS, Windows), or a broken install (backend() warns): reference only
    triton = None


def _affine(p, x):
    """ρ, γ or β as given -> broadcastable to N×C×H×W: N×C (AdaLIN's γ, β from the MLP), or C values in any shape
    (C, 1×C×1×1: ρ, LIN's γ, β), or one value for every channel (a scalar)."""
    return p.reshape(p.shape[0], -1, 1, 1) if p.dim() == 2 else p.reshape(1, -1, 1, 1)


def adalin_eq1(x, rho, gamma, beta, eps=1e-5, unbiased=True):
    """Eq. (1) term by term: the spec that `adalin_reference` and the kernels are tested against."""
    mu_I, var_I = x.mean((2, 3), keepdim=True), x.var((2, 3), keepdim=True, unbiased=unbiased)
    mu_L, var_L = x.mean((1, 2, 3), keepdim=True), x.var((1, 2, 3), keepdim=True, unbiased=unbiased)
    a_I = (x - mu_I) / torch.sqrt(var_I + eps)
    a_L = (x - mu_L) / torch.sqrt(var_L + eps)
    rho = _affine(rho, x)
    return _affine(gamma, x) * (rho * a_I + (1 - rho) * a_L) + _affine(beta, x)


def _divisors(C, HW, unbiased):
    """What the sums of squared deviations are divided by: count − 1 (unbiased) or count, instance then layer."""
    return (HW - 1, C * HW - 1) if unbiased else (HW, C * HW)


def _layer_from_instance(mu_I, m2_I, HW):
    """Per n, from the per-(n, c) means and sums of squared deviations rather than another pass over x: the mean
    of the means, and the deviations within each channel plus those of the channel means (Chan et al.'s pairwise
    combination). Returns μ_L and Σ (x − μ_L)², both keeping dim 1. The means are averaged about the first one, so
    that equal means give μ_L exactly and a constant image a variance of exactly 0."""
    k = mu_I[:, :1]
    mu_L = k + (mu_I - k).mean(1, keepdim=True)
    return mu_L, (m2_I + HW * (mu_I - mu_L) ** 2).sum(1, keepdim=True)


def _inv_std(var, eps):
    """1 / sqrt(σ² + ε), and 0 where σ² is exactly 0: a constant map's â is 0 with no gradient (module docstring).
    Our variances come out exactly 0 for constant rows: torch.var_mean updates Welford's sums, and the Triton path
    merges blocks' deviations from their own values (_row_moments)."""
    return torch.where(var > 0, torch.rsqrt(var + eps), 0)


def adalin_reference(x, rho, gamma, beta, eps=1e-5, unbiased=True):
    """Eq. (1) as the CPU path computes it."""
    N, C, H, W = x.shape
    d_I, d_L = _divisors(C, H * W, unbiased)
    var_I, mu_I = torch.var_mean(x, dim=(2, 3), keepdim=True, unbiased=unbiased)      # per (n, c)
    mu_L, m2_L = _layer_from_instance(mu_I, var_I * d_I, H * W)                       # per n
    var_L = m2_L / d_L
    inv_I, inv_L = _inv_std(var_I, eps), _inv_std(var_L, eps)
    # Eq. (1), γ(ρ â_I + (1 − ρ) â_L) + β, is for each (n, c) an affine map of x: x · scale + shift with
    #     scale = γ (ρ / σ_I + (1 − ρ) / σ_L),   shift = β − γ (ρ μ_I / σ_I + (1 − ρ) μ_L / σ_L),
    # where σ = sqrt(variance + ε). Computed so, autograd keeps x and per-(n, c) numbers instead of â_I, â_L and
    # their mixes (all N×C×H×W): U-GAT-IT's generator keeps 114 MB instead of 184 MB per forward at 128 px, ch 64.
    # The tests hold this to adalin_eq1.
    rho, gamma, beta = _affine(rho, x), _affine(gamma, x), _affine(beta, x)
    scale = gamma * (rho * inv_I + (1 - rho) * inv_L)
    shift = beta - gamma * (rho * mu_I * inv_I + (1 - rho) * mu_L * inv_L)
    return x * scale + shift


def _coefficients(mu_I, var_I, mu_L, var_L, rho, gamma, beta, eps):
    """Eq. (1) as y = (x − μ_I) · scale + shift per (n, c): scale = γ(ρ/σ_I + (1 − ρ)/σ_L) and
    shift = β + γ(1 − ρ)(μ_I − μ_L)/σ_L. Inputs N×C (or broadcastable), fp32."""
    inv_I, inv_L = _inv_std(var_I, eps), _inv_std(var_L, eps)
    scale = gamma * (rho * inv_I + (1 - rho) * inv_L)
    shift = beta + gamma * (1 - rho) * (mu_I - mu_L) * inv_L
    return scale, shift


if triton is not None:
    @triton.jit
    def _row_moments(X, MEAN, M2, HW, BLOCK: tl.constexpr):
        """Per row of H×W values: the mean and Σ(x − mean)², in fp32 (module docstring). Means are kept about the
        row's first value k, so the merges add numbers of the data's spread, not of its offset. A constant row
        gives its value and exactly 0: every deviation and every merge's is 0."""
        row = tl.program_id(0).to(tl.int64)
        base = X + row * HW
        k = tl.load(base).to(tl.float32)
        count, mean, m2 = 0.0, 0.0, 0.0  # of the blocks so far; mean about k
        for start in range(0, HW, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            inside = offs < HW
            first = tl.load(base + start).to(tl.float32)
            d = tl.where(inside, tl.load(base + offs, mask=inside, other=0.0).to(tl.float32) - first, 0.0)
            n_b = tl.minimum(HW - start, BLOCK).to(tl.float32)
            shift = tl.sum(d, axis=0) / n_b
            e = tl.where(inside, d - shift, 0.0)
            delta = (first - k) + shift - mean
            total = count + n_b
            mean += delta * (n_b / total)
            m2 += tl.sum(e * e, axis=0) + delta * delta * (count * n_b / total)
            count = total
        tl.store(MEAN + row, k + mean)
        tl.store(M2 + row, m2)

    @triton.jit
    def _block(HW, BLOCK: tl.constexpr):
        """This program's row and offsets in it. The grid is 1-D, rows × blocks of a row: CUDA caps a grid's second
        and third axes at 65535, which a 2-D (rows, blocks) grid passes at 8192² pixels."""
        blocks = tl.cdiv(HW, BLOCK)
        pid = tl.program_id(0).to(tl.int64)
        return pid // blocks, (pid % blocks) * BLOCK + tl.arange(0, BLOCK)

    @triton.jit
    def _row_affine(X, MU, SCALE, SHIFT, Y, HW, BLOCK: tl.constexpr):
        """y = (x − μ) · scale + shift with one (μ, scale, shift) per row; one program per block of a row."""
        row, offs = _block(HW, BLOCK)
        inside = offs < HW
        x = tl.load(X + row * HW + offs, mask=inside, other=0.0).to(tl.float32)
        y = (x - tl.load(MU + row)) * tl.load(SCALE + row) + tl.load(SHIFT + row)
        tl.store(Y + row * HW + offs, y.to(Y.dtype.element_ty), mask=inside)

    @triton.jit
    def _row_grad_sums(X, DY, MU, S1, SC, HW, BLOCK: tl.constexpr):
        """Per row: Σ dy and Σ dy · (x − μ)."""
        row = tl.program_id(0).to(tl.int64)
        mu = tl.load(MU + row)
        acc1 = tl.zeros([BLOCK], dtype=tl.float32)
        accc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, HW, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            inside = offs < HW
            x = tl.load(X + row * HW + offs, mask=inside, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * HW + offs, mask=inside, other=0.0).to(tl.float32)
            acc1 += dy
            accc += tl.where(inside, dy * (x - mu), 0.0)
        tl.store(S1 + row, tl.sum(acc1, axis=0))
        tl.store(SC + row, tl.sum(accc, axis=0))

    @triton.jit
    def _row_dx(X, DY, MU, SCALE, B, A, DX, HW, BLOCK: tl.constexpr):
        """dx = dy · scale + b · (x − μ) + a with one (μ, scale, b, a) per row."""
        row, offs = _block(HW, BLOCK)
        inside = offs < HW
        x = tl.load(X + row * HW + offs, mask=inside, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * HW + offs, mask=inside, other=0.0).to(tl.float32)
        dx = dy * tl.load(SCALE + row) + tl.load(B + row) * (x - tl.load(MU + row)) + tl.load(A + row)
        tl.store(DX + row * HW + offs, dx.to(DX.dtype.element_ty), mask=inside)


BLOCK = 1024


def _rows(x):
    N, C, H, W = x.shape
    return N * C, H * W


def _statistics(x, unbiased):
    """μ_I, σ²_I (N×C) from one pass; μ_L, σ²_L (N×1) from them. All fp32."""
    N, C = x.shape[:2]
    rows, HW = _rows(x)
    mu_I, m2_I = (torch.empty(rows, device=x.device, dtype=torch.float32) for _ in range(2))
    _row_moments[(rows,)](x, mu_I, m2_I, HW, BLOCK=min(BLOCK, triton.next_power_of_2(HW)))
    mu_I, m2_I = mu_I.view(N, C), m2_I.view(N, C)     # μ_I and Σ (x − μ_I)²
    mu_L, m2_L = _layer_from_instance(mu_I, m2_I, HW)
    d_I, d_L = _divisors(C, HW, unbiased)
    return mu_I, m2_I / d_I, mu_L, m2_L / d_L, d_I, d_L


def _params(rho, gamma, beta):
    """ρ, γ, β as fp32 N×C, 1×C or 1×1 tensors, which broadcast against the N×C statistics as _affine's shapes
    broadcast against x (AdaLIN's γ, β are N×C already)."""
    flat = lambda p: (p if p.dim() == 2 else p.reshape(1, -1)).float()  # noqa: E731
    return flat(rho), flat(gamma), flat(beta)


def _to_shape(grad, p):
    """A parameter's gradient, which autograd summed over what _params broadcast, in the parameter's shape."""
    return grad.reshape(p.shape).to(p.dtype)


class AdaLINFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, rho, gamma, beta, eps, unbiased):
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        dtype = functools.reduce(torch.promote_types, (t.dtype for t in (x, rho, gamma, beta)))
        x = x.contiguous()
        rows, HW = _rows(x)
        mu_I, var_I, mu_L, var_L, d_I, d_L = _statistics(x, unbiased)
        scale, shift = _coefficients(mu_I, var_I, mu_L, var_L, *_params(rho, gamma, beta), eps)
        y = torch.empty_like(x, dtype=dtype)  # the reference's type promotion: fp16 x with fp32 γ gives fp32
        grid = (rows * triton.cdiv(HW, BLOCK),)
        _row_affine[grid](x, mu_I, scale.contiguous(), shift.contiguous(), y, HW, BLOCK=BLOCK)
        ctx.save_for_backward(x, rho, gamma, beta, mu_I, var_I, mu_L, var_L)
        ctx.eps, ctx.d = eps, (d_I, d_L)
        # The kernels index NCHW; a channels-last input gets a channels-last output back, as from the reference.
        return y.contiguous(memory_format=torch.channels_last) if channels_last else y

    @staticmethod
    @once_differentiable  # the kernels' backward is not itself differentiable: a double backward raises
    def backward(ctx, dy):
        x, rho, gamma, beta, mu_I, var_I, mu_L, var_L = ctx.saved_tensors
        dy = dy.contiguous()
        N, C = x.shape[:2]
        rows, HW = _rows(x)
        d_I, d_L = ctx.d
        s1, sc = (torch.empty(rows, device=x.device, dtype=torch.float32) for _ in range(2))
        _row_grad_sums[(rows,)](x, dy, mu_I, s1, sc, HW, BLOCK=min(BLOCK, triton.next_power_of_2(HW)))
        s1, sc = s1.view(N, C), sc.view(N, C)
        # The per-(n, c) part of the graph, differentiated by autograd: upstream Σ dy·(x − μ_I) for scale, Σ dy for
        # shift. μ_L, σ²_L are leaves here: their dependence on x enters through dx's formula below.
        leaves = [t.detach().requires_grad_() for t in (mu_I, var_I, mu_L, var_L, *_params(rho, gamma, beta))]
        with torch.enable_grad():
            scale, shift = _coefficients(*leaves, ctx.eps)
            g_muI, g_varI, g_muL, g_varL, g_rho, g_gamma, g_beta = torch.autograd.grad(
                (scale, shift), leaves, (sc, s1))
        scale = scale.detach()
        g_muI = g_muI - s1 * scale                     # the explicit μ_I of (x − μ_I) in y
        # dμ/dx = 1/count, dσ²/dx = 2(x − μ)/d: dx = dy·scale + b·(x − μ_I) + a
        b = 2 * g_varI / d_I + 2 * g_varL / d_L
        a = 2 * g_varL / d_L * (mu_I - mu_L) + g_muI / HW + g_muL / (C * HW)
        dx = torch.empty_like(x)
        _row_dx[(rows * triton.cdiv(HW, BLOCK),)](x, dy, mu_I, scale.contiguous(), b.contiguous(), a.contiguous(),
                                                dx, HW, BLOCK=BLOCK)
        return dx, _to_shape(g_rho, rho), _to_shape(g_gamma, gamma), _to_shape(g_beta, beta), None, None


def adalin(x, rho, gamma, beta, eps=1e-5, unbiased=True):
    """Eq. (1). x: N×C×H×W; rho: C values (1×C×1×1 or C) or one; gamma, beta: N×C (AdaLIN), or C values or one
    (LIN)."""
    if backend(x) == "triton":
        return AdaLINFunction.apply(x, rho, gamma, beta, eps, unbiased)
    return adalin_reference(x, rho, gamma, beta, eps, unbiased)
