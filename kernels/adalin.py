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
runs on CPU. The Triton path is three launches each way, with nothing between them but allocations:
    forward   1. per chunk of 2048 values of an (n, c) row: the mean and Σ(x − mean)² in fp32, block by block: each
                 block's own, from its values' deviations from the block's first value and then from the block's
                 mean, merged into the chunk's (Chan et al.'s pairwise combination). Long rows are so split over many
                 programs, and the moments are as exact as fp32 allows for data far from 0 (x ≈ 1000 ± 0.01) and
                 for an outlier anywhere;
              2. one program per image: the chunks merged into each row's μ_I, σ²_I, the rows into the layer's μ_L,
                 σ²_L (the same combination, so x is not read again), and Eq. (1) as one (scale, shift) per row;
              3. elementwise: y = (x − μ_I) · scale + shift.
    backward  1. per chunk of a row: Σ dy and Σ dy · (x − μ_I);
              2. one program: per row, the gradients of scale and shift's inputs (ρ, γ, β, μ_I, σ²_I, and through
                 the layer sums μ_L, σ²_L), written out by hand from the formulas in _coefficients; ρ's gradient (and
                 LIN's γ, β) summed over the images there too;
              3. elementwise: dx = dy · scale + b · (x − μ_I) + a, one (scale, b, a) per row.
The tests hold every output and gradient to the float64 reference, and count the launches.
"""
import torch
from torch.autograd.function import once_differentiable

from kernels import backend, like_reference, result_type

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
    """What the sums of squared deviations are divided by: count − 1 (unbiased) or count, instance then layer. A
    single value (a 1×1 map) is constant: its sum is exactly 0, and a divisor of 1 keeps its variance 0 (the rule
    for constant maps), where count − 1 = 0 gave 0/0 and a NaN gradient."""
    return (max(HW - 1, 1), max(C * HW - 1, 1)) if unbiased else (HW, C * HW)


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
    merges blocks' deviations from their own values (_chunk_moments)."""
    return torch.where(var > 0, torch.rsqrt(var + eps), 0)


def adalin_reference(x, rho, gamma, beta, eps=1e-5, unbiased=True):
    """Eq. (1) as the CPU path computes it."""
    N, C, H, W = x.shape
    d_I, d_L = _divisors(C, H * W, unbiased)
    # per (n, c); one value's variance is 0 whatever the divisor (_divisors), where n − 1 = 0 would give 0/0
    var_I, mu_I = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=int(unbiased and H * W > 1))
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


if triton is not None:
    @triton.jit
    def _chunk_moments(X, MEAN, M2, HW, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
        """Per chunk of a row (CHUNK values, the last one shorter): the mean and Σ(x − mean)², in fp32 (module
        docstring). Means are kept about the chunk's first value k, so the merges add numbers of the data's spread,
        not of its offset. A constant chunk gives its value and exactly 0: every deviation and every merge's is 0."""
        chunks = tl.cdiv(HW, CHUNK)
        pid = tl.program_id(0).to(tl.int64)
        base = X + (pid // chunks) * HW + (pid % chunks) * CHUNK
        size = tl.minimum(HW - (pid % chunks) * CHUNK, CHUNK)
        k = tl.load(base).to(tl.float32)
        count, mean, m2 = 0.0, 0.0, 0.0  # of the blocks so far; mean about k
        for start in range(0, size, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            inside = offs < size
            first = tl.load(base + start).to(tl.float32)
            d = tl.where(inside, tl.load(base + offs, mask=inside, other=0.0).to(tl.float32) - first, 0.0)
            n_b = tl.minimum(size - start, BLOCK).to(tl.float32)
            shift = tl.sum(d, axis=0) / n_b
            e = tl.where(inside, d - shift, 0.0)
            delta = (first - k) + shift - mean
            total = count + n_b
            mean += delta * (n_b / total)
            m2 += tl.sum(e * e, axis=0) + delta * delta * (count * n_b / total)
            count = total
        tl.store(MEAN + pid, k + mean)
        tl.store(M2 + pid, m2)

    @triton.jit
    def _merged(MEAN, M2, rows, inside, HW, CHUNK: tl.constexpr):
        """μ and Σ(x − μ)² of whole rows (a vector of them) from their chunks' (Chan et al.'s merge, about the first
        chunk's mean)."""
        chunks = tl.cdiv(HW, CHUNK)
        k = tl.load(MEAN + rows * chunks, mask=inside, other=0.0)
        count, mean, m2 = 0.0, tl.zeros_like(k), tl.zeros_like(k)
        for j in range(0, chunks):
            n_j = tl.minimum(HW - j * CHUNK, CHUNK).to(tl.float32)
            delta = tl.load(MEAN + rows * chunks + j, mask=inside, other=0.0) - k - mean
            total = count + n_j
            mean += delta * (n_j / total)
            m2 += tl.load(M2 + rows * chunks + j, mask=inside, other=0.0) + delta * delta * (count * n_j / total)
            count = total
        return k + mean, m2

    @triton.jit
    def _summed(S, rows, inside, chunks):
        """A per-chunk sum added up over each row's chunks."""
        acc = tl.zeros(rows.shape, dtype=tl.float32)
        for j in range(0, chunks):
            acc += tl.load(S + rows * chunks + j, mask=inside, other=0.0)
        return acc

    @triton.jit
    def _inv_std_k(var, eps):
        """_inv_std in a kernel: 1 / sqrt(σ² + ε), and 0 where σ² is exactly 0."""
        return tl.where(var > 0, 1.0 / tl.sqrt(var + eps), 0.0)

    @triton.jit
    def _param(P, sn, sc, n, c, inside):
        """ρ, γ or β at image n, channels c: strides sn, sc are 0 along what it is broadcast over (_params)."""
        return tl.load(P + n * sn + c * sc, mask=inside, other=0.0).to(tl.float32)

    @triton.jit
    def _coefficients(MEAN, M2, RHO, rho_sn, rho_sc, GAMMA, gamma_sn, gamma_sc, BETA, beta_sn, beta_sc,
                      MU_I, VAR_I, MU_L, VAR_L, SCALE, SHIFT, C, HW, d_I, d_L, eps,
                      CHUNK: tl.constexpr, BLOCK_C: tl.constexpr):
        """One program per image n. Its rows' moments merged from their chunks; the layer's from those; then Eq. (1)
        as y = (x − μ_I) · scale + shift per channel:
            scale = γ (ρ / σ_I + (1 − ρ) / σ_L),   shift = β + γ (1 − ρ)(μ_I − μ_L) / σ_L."""
        n = tl.program_id(0).to(tl.int64)
        chunks = tl.cdiv(HW, CHUNK)
        # Layer moments from the channels' (Chan's merge again, channel block by block, each channel HW values),
        # about channel 0's first chunk mean k: a constant image gives its value and exactly 0.
        k = tl.load(MEAN + n * C * chunks)
        count, mean, m2 = 0.0, 0.0, 0.0  # channels so far; mean about k
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            inside = c < C
            mu, m2_c = _merged(MEAN, M2, n * C + c, inside, HW, CHUNK)
            n_b = tl.minimum(C - c0, BLOCK_C).to(tl.float32)
            d = tl.where(inside, mu - k, 0.0)
            shift = tl.sum(d, axis=0) / n_b
            e = tl.where(inside, d - shift, 0.0)
            delta = shift - mean
            total = count + n_b
            mean += delta * (n_b / total)
            m2 += tl.sum(m2_c, axis=0) + HW * (tl.sum(e * e, axis=0) + delta * delta * (count * n_b / total))
            count = total
        mu_L, var_L = k + mean, m2 / d_L
        inv_L = _inv_std_k(var_L, eps)
        tl.store(MU_L + n, mu_L)
        tl.store(VAR_L + n, var_L)
        for c0 in range(0, C, BLOCK_C):  # the rows merged again (a few loads each) rather than re-read from MU_I
            c = c0 + tl.arange(0, BLOCK_C)
            inside = c < C
            mu, m2_c = _merged(MEAN, M2, n * C + c, inside, HW, CHUNK)
            var_I = m2_c / d_I
            inv_I = _inv_std_k(var_I, eps)
            rho = _param(RHO, rho_sn, rho_sc, n, c, inside)
            gamma = _param(GAMMA, gamma_sn, gamma_sc, n, c, inside)
            beta = _param(BETA, beta_sn, beta_sc, n, c, inside)
            tl.store(MU_I + n * C + c, mu, mask=inside)
            tl.store(VAR_I + n * C + c, var_I, mask=inside)
            tl.store(SCALE + n * C + c, gamma * (rho * inv_I + (1 - rho) * inv_L), mask=inside)
            tl.store(SHIFT + n * C + c, beta + gamma * (1 - rho) * (mu - mu_L) * inv_L, mask=inside)

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
    def _chunk_grad_sums(X, DY, MU, S1, SC, HW, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
        """Per chunk of a row: Σ dy and Σ dy · (x − μ_I)."""
        chunks = tl.cdiv(HW, CHUNK)
        pid = tl.program_id(0).to(tl.int64)
        row, first = pid // chunks, (pid % chunks) * CHUNK
        size = tl.minimum(HW - first, CHUNK)
        mu = tl.load(MU + row)
        acc1 = tl.zeros([BLOCK], dtype=tl.float32)
        accc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, size, BLOCK):
            offs = row * HW + first + start + tl.arange(0, BLOCK)
            inside = start + tl.arange(0, BLOCK) < size
            x = tl.load(X + offs, mask=inside, other=0.0).to(tl.float32)
            dy = tl.load(DY + offs, mask=inside, other=0.0).to(tl.float32)
            acc1 += dy
            accc += tl.where(inside, dy * (x - mu), 0.0)
        tl.store(S1 + pid, tl.sum(acc1, axis=0))
        tl.store(SC + pid, tl.sum(accc, axis=0))

    @triton.jit
    def _param_grad(G, sn, g, n, c, inside, C):
        """g at image n, channels c, stored where the parameter has one value per image and channel; returned
        masked, for the caller to sum over what the parameter is broadcast over."""
        if sn != 0:
            tl.store(G + n * C + c, g.to(G.dtype.element_ty), mask=inside)
        return tl.where(inside, g, 0.0)

    @triton.jit
    def _param_grad_sums(G, sn, sc, over_n, total, c, inside):
        """The sums over the images of one channel block (stored where the parameter has one value per channel),
        added to the total over the channels (stored by the caller where it has one value)."""
        if (sn == 0) & (sc != 0):
            tl.store(G + c, over_n.to(G.dtype.element_ty), mask=inside)
        return total + tl.sum(over_n, axis=0)

    @triton.jit
    def _grad_coefficients(S1, SC, MU_I, VAR_I, MU_L, VAR_L, RHO, rho_sn, rho_sc, GAMMA, gamma_sn, gamma_sc,
                           G_RHO, G_GAMMA, G_BETA, beta_sn, beta_sc, SCALE, A, B, N, C, HW, d_I, d_L, eps,
                           CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
        """One program for all N×C coefficients (module docstring, backward 2): the layer sums need every channel
        of an image, the gradients of ρ (and LIN's γ, β) every image of a channel."""
        chunks = tl.cdiv(HW, CHUNK)
        images = tl.arange(0, BLOCK_N)
        g_var_L, g_mu_L = tl.zeros([BLOCK_N], dtype=tl.float32), tl.zeros([BLOCK_N], dtype=tl.float32)
        for n in range(0, N):  # ∂/∂σ²_L and ∂/∂μ_L of each image: sums over its channels
            mu_L, inv_L = tl.load(MU_L + n), _inv_std_k(tl.load(VAR_L + n), eps)
            acc_var, acc_mu = tl.zeros([BLOCK_C], dtype=tl.float32), tl.zeros([BLOCK_C], dtype=tl.float32)
            for c0 in range(0, C, BLOCK_C):
                c = c0 + tl.arange(0, BLOCK_C)
                inside = c < C
                s1, sc = _summed(S1, n * C + c, inside, chunks), _summed(SC, n * C + c, inside, chunks)
                w = tl.where(inside, _param(GAMMA, gamma_sn, gamma_sc, n, c, inside) *
                             (1 - _param(RHO, rho_sn, rho_sc, n, c, inside)), 0.0)
                acc_var += w * (sc + s1 * (tl.load(MU_I + n * C + c, mask=inside, other=0.0) - mu_L))
                acc_mu += w * s1
            g_var_L = tl.where(images == n, -0.5 * inv_L * inv_L * inv_L * tl.sum(acc_var, axis=0), g_var_L)
            g_mu_L = tl.where(images == n, -inv_L * tl.sum(acc_mu, axis=0), g_mu_L)
        total_rho, total_gamma, total_beta = 0.0, 0.0, 0.0
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            inside = c < C
            over_rho = tl.zeros([BLOCK_C], dtype=tl.float32)
            over_gamma, over_beta = tl.zeros([BLOCK_C], dtype=tl.float32), tl.zeros([BLOCK_C], dtype=tl.float32)
            for n in range(0, N):
                rows = n * C + c
                s1, sc = _summed(S1, rows, inside, chunks), _summed(SC, rows, inside, chunks)
                dev = tl.load(MU_I + rows, mask=inside, other=0.0) - tl.load(MU_L + n)
                inv_I = _inv_std_k(tl.load(VAR_I + rows, mask=inside, other=0.0), eps)
                inv_L = _inv_std_k(tl.load(VAR_L + n), eps)
                rho = _param(RHO, rho_sn, rho_sc, n, c, inside)
                gamma = _param(GAMMA, gamma_sn, gamma_sc, n, c, inside)
                scale = gamma * (rho * inv_I + (1 - rho) * inv_L)
                # The gradients of the coefficients' inputs: upstream Σ dy·(x − μ_I) for scale, Σ dy for shift.
                over_rho += _param_grad(G_RHO, rho_sn, gamma * (sc * (inv_I - inv_L) - s1 * dev * inv_L),
                                        n, c, inside, C)
                over_gamma += _param_grad(G_GAMMA, gamma_sn,
                                          sc * (rho * inv_I + (1 - rho) * inv_L) + s1 * (1 - rho) * dev * inv_L,
                                          n, c, inside, C)
                over_beta += _param_grad(G_BETA, beta_sn, s1, n, c, inside, C)
                g_var_I = -0.5 * inv_I * inv_I * inv_I * sc * gamma * rho
                g_mu_I = s1 * gamma * (1 - rho) * inv_L - s1 * scale  # via shift, and the explicit μ_I of x − μ_I
                g_var_Ln = tl.sum(tl.where(images == n, g_var_L, 0.0), axis=0)
                g_mu_Ln = tl.sum(tl.where(images == n, g_mu_L, 0.0), axis=0)
                # dμ/dx = 1/count, dσ²/dx = 2(x − μ)/d: dx = dy·scale + b·(x − μ_I) + a
                tl.store(SCALE + rows, scale, mask=inside)
                tl.store(B + rows, 2 * g_var_I / d_I + 2 * g_var_Ln / d_L, mask=inside)
                tl.store(A + rows, 2 * g_var_Ln / d_L * dev + g_mu_I / HW + g_mu_Ln / (C * HW), mask=inside)
            total_rho = _param_grad_sums(G_RHO, rho_sn, rho_sc, over_rho, total_rho, c, inside)
            total_gamma = _param_grad_sums(G_GAMMA, gamma_sn, gamma_sc, over_gamma, total_gamma, c, inside)
            total_beta = _param_grad_sums(G_BETA, beta_sn, beta_sc, over_beta, total_beta, c, inside)
        if rho_sc == 0:
            tl.store(G_RHO, total_rho.to(G_RHO.dtype.element_ty))
        if gamma_sc == 0:
            tl.store(G_GAMMA, total_gamma.to(G_GAMMA.dtype.element_ty))
        if beta_sc == 0:
            tl.store(G_BETA, total_beta.to(G_BETA.dtype.element_ty))

    @triton.jit
    def _row_dx(X, DY, MU, SCALE, B, A, DX, HW, BLOCK: tl.constexpr):
        """dx = dy · scale + b · (x − μ) + a with one (μ, scale, b, a) per row."""
        row, offs = _block(HW, BLOCK)
        inside = offs < HW
        x = tl.load(X + row * HW + offs, mask=inside, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * HW + offs, mask=inside, other=0.0).to(tl.float32)
        dx = dy * tl.load(SCALE + row) + tl.load(B + row) * (x - tl.load(MU + row)) + tl.load(A + row)
        tl.store(DX + row * HW + offs, dx.to(DX.dtype.element_ty), mask=inside)


BLOCK, CHUNK, BLOCK_C = 1024, 2048, 128  # elementwise blocks, values per reduction program, channels per loop


def _per_image(x, p):
    """Whether ρ, γ or β has one value per image and channel (AdaLIN's γ, β from the MLP): the shapes both paths
    take are one value, C values in any shape, or N×C."""
    N, C = x.shape[:2]
    per_image = p.dim() == 2 and p.shape == (N, C) and N > 1
    if p.numel() not in (1, C) and not per_image:
        raise ValueError(f"adalin: a parameter of shape {tuple(p.shape)} for x of shape {tuple(x.shape)}; give it "
                         f"one value, {C} (one per channel) or {N}×{C} (one per image and channel)")
    return per_image


def _params(x, *params):
    """ρ, γ, β as contiguous tensors, each followed by its strides (image, channel) in N×C indexing: 0 along what
    it is broadcast over."""
    return [v for p in params for v in (p.contiguous(), x.shape[1] if _per_image(x, p) else 0, int(p.numel() > 1))]


def _launch_sizes(x):
    """Rows, H×W, chunks per row, and the block of every pass: up to BLOCK, no wider than a row, so that a small
    map (16×16 at the CPU preset) leaves no lanes idle."""
    N, C, H, W = x.shape
    HW = H * W
    return N * C, HW, triton.cdiv(HW, CHUNK), min(BLOCK, triton.next_power_of_2(HW))


class AdaLINFunction(torch.autograd.Function):
    """Three launches each way (module docstring), and nothing else but allocations and views."""

    @staticmethod
    def forward(ctx, x, rho, gamma, beta, eps, unbiased):
        given = x, rho, gamma, beta
        x = x.contiguous()
        N, C = x.shape[:2]
        rows, HW, chunks, block = _launch_sizes(x)
        d_I, d_L = _divisors(C, HW, unbiased)
        f32 = dict(device=x.device, dtype=torch.float32)
        mean, m2 = torch.empty(rows * chunks, **f32), torch.empty(rows * chunks, **f32)
        mu_I, var_I, scale, shift = (torch.empty(rows, **f32) for _ in range(4))
        mu_L, var_L = torch.empty(N, **f32), torch.empty(N, **f32)
        params = _params(x, rho, gamma, beta)
        _chunk_moments[(rows * chunks,)](x, mean, m2, HW, CHUNK=CHUNK, BLOCK=block)
        _coefficients[(N,)](mean, m2, *params, mu_I, var_I, mu_L, var_L, scale, shift, C, HW, d_I, d_L, eps,
                            CHUNK=CHUNK, BLOCK_C=min(BLOCK_C, triton.next_power_of_2(C)))
        y = torch.empty_like(x, dtype=result_type(*given))  # the reference's type promotion: fp16 x with fp32 γ gives fp32
        _row_affine[(rows * triton.cdiv(HW, block),)](x, mu_I, scale, shift, y, HW, BLOCK=block)
        ctx.save_for_backward(x, rho, gamma, beta, mu_I, var_I, mu_L, var_L)
        ctx.eps, ctx.d = eps, (d_I, d_L)
        return like_reference(y, lambda *t: adalin_reference(*t, eps, unbiased), *given)

    @staticmethod
    @once_differentiable  # the kernels' backward is not itself differentiable: a double backward raises
    def backward(ctx, dy):
        x, rho, gamma, beta, mu_I, var_I, mu_L, var_L = ctx.saved_tensors
        dy = dy.contiguous()
        N, C = x.shape[:2]
        rows, HW, chunks, block = _launch_sizes(x)
        f32 = dict(device=x.device, dtype=torch.float32)
        s1, sc = torch.empty(rows * chunks, **f32), torch.empty(rows * chunks, **f32)
        scale, a, b = (torch.empty(rows, **f32) for _ in range(3))
        params = _params(x, rho, gamma, beta)  # ρ, its strides, γ, its strides, β, its strides
        grads = [torch.empty_like(p, memory_format=torch.contiguous_format) for p in (rho, gamma, beta)]
        _chunk_grad_sums[(rows * chunks,)](x, dy, mu_I, s1, sc, HW, CHUNK=CHUNK, BLOCK=block)
        _grad_coefficients[(1,)](s1, sc, mu_I, var_I, mu_L, var_L, *params[:6], *grads, *params[7:], scale, a, b,
                                 N, C, HW, *ctx.d, ctx.eps, CHUNK=CHUNK,
                                 BLOCK_N=triton.next_power_of_2(N), BLOCK_C=min(BLOCK_C, triton.next_power_of_2(C)))
        if not ctx.needs_input_grad[0]:  # x's gradient not asked for: the pass that reads x and dy again is skipped
            return None, *grads, None, None
        dx = torch.empty_like(x)
        _row_dx[(rows * triton.cdiv(HW, block),)](x, dy, mu_I, scale, b, a, dx, HW, BLOCK=block)
        return dx, *grads, None, None


def adalin(x, rho, gamma, beta, eps=1e-5, unbiased=True):
    """Eq. (1). x: N×C×H×W; rho: C values (1×C×1×1 or C) or one; gamma, beta: N×C (AdaLIN), or C values or one
    (LIN)."""
    for p in (rho, gamma, beta):
        _per_image(x, p)
    if backend(x) == "triton":
        return AdaLINFunction.apply(x, rho, gamma, beta, eps, unbiased)
    return adalin_reference(x, rho, gamma, beta, eps, unbiased)
