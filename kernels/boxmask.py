"""Soft box masks and the attended regions of DA-GAN (Ma et al., CVPR 2018, Eq. 2-4).

For box i with centre (x_i, y_i) and half-size (w_i, h_i) (Eq. 2: left = x_i − w_i, right = x_i + w_i, top and
bottom likewise), the mask is the product of an x-profile and a y-profile (Eq. 4, read as in RA-CNN):
    M_i(x, y) = [σ(x − left) − σ(x − right)] · [σ(y − top) − σ(y − bottom)],   σ(z) = 1 / (1 + exp(−k z)),
and the attended region is R_i = X ∘ M_i (Eq. 3's input to the encoder).

Units: coordinates are normalised as in `F.grid_sample(align_corners=False)`: x and y run over [−1, 1] across the
image, pixel j's centre is at (2j + 1) / W − 1. Centres and half-sizes are in those units and k is per unit, so
one k means the same soft edge at every resolution: the edge rises from 12% to 88% over 4/k units, i.e. over
2W/k pixels (k = 50 at 256 px: about 10 pixels, each of which passes gradient to the box).

`box_masks` and `box_crop_reference` are the readable math and the CPU path. The Triton kernels compute M in
registers from the four numbers of a box, so neither the masks nor their derivatives are stored: the forward
reads X once per box and writes R; the backward reads X and dR once, writes dX = Σ_i dR_i ∘ M_i, and leaves per
(image, box, pixel block, block of channels) partial sums of the box gradients, which the host adds up (no
atomics). Channels are taken a block at a time (CONFIG), so a wide input does not spill registers.
"""
import torch
from torch.autograd.function import once_differentiable

from kernels import backend, like_reference, result_type

try:
    import triton
    import triton.language as tl
except Exception:  # no Triton wheel (macOS, Windows), or a broken install (backend() warns): references only
    triton = None


def pixel_centres(n, device, dtype=torch.float32):
    return (2 * torch.arange(n, device=device, dtype=dtype) + 1) / n - 1


def _profile(u, centre, half, k):
    """σ(u − (centre − half)) − σ(u − (centre + half)) for every box: N×B×len(u)."""
    u, centre, half = u[None, None, :], centre[..., None], half[..., None]
    return torch.sigmoid(k * (u - centre + half)) - torch.sigmoid(k * (u - centre - half))


def box_masks(centres, halves, height, width, k):
    """Eq. (4). centres, halves: N×B×2 as (x, y) and (w, h) in normalised units -> N×B×H×W masks."""
    m_x = _profile(pixel_centres(width, centres.device, centres.dtype), centres[..., 0], halves[..., 0], k)
    m_y = _profile(pixel_centres(height, centres.device, centres.dtype), centres[..., 1], halves[..., 1], k)
    return m_y[..., :, None] * m_x[..., None, :]


def box_crop_reference(X, centres, halves, k):
    """R_i = X ∘ M_i: N×C×H×W and N×B×2 boxes -> N×B×C×H×W."""
    return X[:, None] * box_masks(centres, halves, X.shape[2], X.shape[3], k)[:, :, None]


if triton is not None:
    @triton.jit
    def _edge(u, lo, hi, k):
        """The profile σ(u − lo) − σ(u − hi) and its derivatives by lo and by hi. Arguments are clamped to ±30,
        where σ is 0 or 1 in fp32 already, so that exp never overflows."""
        s_lo = tl.sigmoid(tl.minimum(tl.maximum(k * (u - lo), -30.0), 30.0))
        s_hi = tl.sigmoid(tl.minimum(tl.maximum(k * (u - hi), -30.0), 30.0))
        return s_lo - s_hi, -k * s_lo * (1 - s_lo), k * s_hi * (1 - s_hi)

    @triton.jit
    def _box(BOX, nb, H, W, pix, k):
        """Mask values (and profile derivatives) of box nb at the pixels `pix` of an H×W image."""
        cx = tl.load(BOX + nb * 4 + 0)
        cy = tl.load(BOX + nb * 4 + 1)
        w = tl.load(BOX + nb * 4 + 2)
        h = tl.load(BOX + nb * 4 + 3)
        ux = (2 * (pix % W) + 1).to(tl.float32) / W - 1
        uy = (2 * (pix // W) + 1).to(tl.float32) / H - 1
        m_x, dx_lo, dx_hi = _edge(ux, cx - w, cx + w, k)
        m_y, dy_lo, dy_hi = _edge(uy, cy - h, cy + h, k)
        return m_x, m_y, dx_lo, dx_hi, dy_lo, dy_hi

    @triton.jit
    def _crop_fwd(X, BOX, R, B, C, H, W, k, BLOCK_C: tl.constexpr, BLOCK: tl.constexpr):
        HW = H * W
        blocks = tl.cdiv(HW, BLOCK)  # a 1-D grid, (image, box) pairs × blocks: CUDA caps the second axis at 65535
        pid = tl.program_id(0).to(tl.int64)
        nb = pid // blocks                           # image n = nb // B, box nb % B
        pix = (pid % blocks) * BLOCK + tl.arange(0, BLOCK)
        m_x, m_y, _, _, _, _ = _box(BOX, nb, H, W, pix, k)
        for c0 in range(0, C, BLOCK_C):
            ch = c0 + tl.arange(0, BLOCK_C)
            inside = (ch[:, None] < C) & (pix[None, :] < HW)
            img = ch[:, None] * HW + pix[None, :]
            x = tl.load(X + (nb // B) * C * HW + img, mask=inside, other=0.0).to(tl.float32)
            tl.store(R + nb * C * HW + img, (x * (m_x * m_y)[None, :]).to(R.dtype.element_ty), mask=inside)

    @triton.jit
    def _crop_bwd(X, BOX, DR, DX, PART, B, C, H, W, k, NEED_DX: tl.constexpr, NEED_BOX: tl.constexpr,
                  BLOCK_C: tl.constexpr, BLOCK: tl.constexpr):
        """One program per (image, pixel block), channels BLOCK_C at a time: dX of those channels summed over the
        boxes, and each box's gradient sums over those pixels and channels, stored per channel block (the box
        gradients are linear in Σ_channels dR · X), for the host to add up. Only what autograd asks for (NEED_*):
        without the boxes' gradients X is not read."""
        HW = H * W
        blocks = tl.cdiv(HW, BLOCK)  # 1-D grid, images × blocks, as in _crop_fwd
        pid = tl.program_id(0).to(tl.int64)
        n, blk = pid // blocks, pid % blocks
        pix = blk * BLOCK + tl.arange(0, BLOCK)
        in_pix = pix < HW
        steps = tl.cdiv(C, BLOCK_C)
        for c0 in range(0, C, BLOCK_C):
            ch = c0 + tl.arange(0, BLOCK_C)
            inside = (ch[:, None] < C) & in_pix[None, :]
            img = ch[:, None] * HW + pix[None, :]
            if NEED_BOX:
                x = tl.load(X + n * C * HW + img, mask=inside, other=0.0).to(tl.float32)
            dx = tl.zeros([BLOCK_C, BLOCK], dtype=tl.float32)
            for b in range(B):
                nb = n * B + b
                m_x, m_y, dx_lo, dx_hi, dy_lo, dy_hi = _box(BOX, nb, H, W, pix, k)
                dr = tl.load(DR + nb * C * HW + img, mask=inside, other=0.0).to(tl.float32)
                dx += dr * (m_x * m_y)[None, :]
                if NEED_BOX:
                    g = tl.where(in_pix, tl.sum(dr * x, axis=0), 0.0)       # dL/dM_b at each pixel, these channels
                    gx, gy = g * m_y, g * m_x                                 # dL/dm_x, dL/dm_y
                    part = PART + ((nb * blocks + blk) * steps + c0 // BLOCK_C) * 4
                    tl.store(part + 0, tl.sum(gx * (dx_lo + dx_hi), axis=0))   # by x_i: both edges move
                    tl.store(part + 1, tl.sum(gy * (dy_lo + dy_hi), axis=0))   # by y_i
                    tl.store(part + 2, tl.sum(gx * (dx_hi - dx_lo), axis=0))   # by w_i: left = x_i − w_i, right = x_i + w_i
                    tl.store(part + 3, tl.sum(gy * (dy_hi - dy_lo), axis=0))   # by h_i
            if NEED_DX:
                tl.store(DX + n * C * HW + img, dx.to(DX.dtype.element_ty), mask=inside)


BLOCK = 256
# Channels per step of a program's loop and warps, per kernel, chosen from the compiled registers as in
# kernels/blend.py: 8 warps halve the values each thread holds; _crop_bwd's registers (122-128 at 8 warps, 228-230
# at 4) do not depend on the channel block, which is therefore the widest.
CONFIG = {"_crop_fwd": (16, 8), "_crop_bwd": (16, 8)}


def _meta(C, kernel):
    block_c, warps = CONFIG[kernel]
    return dict(BLOCK_C=min(triton.next_power_of_2(C), block_c), BLOCK=BLOCK, num_warps=warps)


class BoxCropFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, X, centres, halves, k):
        given = X, centres, halves
        X = X.contiguous()
        N, C, H, W = X.shape
        B = centres.shape[1]
        boxes = torch.cat([centres, halves], -1).float().contiguous()    # N×B×4: x, y, w, h
        R = torch.empty(N, B, C, H, W, device=X.device, dtype=result_type(*given))  # the reference's type
        grid = (N * B * triton.cdiv(H * W, BLOCK),)
        _crop_fwd[grid](X, boxes, R, B, C, H, W, float(k), **_meta(C, "_crop_fwd"))
        ctx.save_for_backward(X, boxes)
        ctx.k, ctx.dtypes = k, (centres.dtype, halves.dtype)
        return like_reference(R, lambda *t: box_crop_reference(*t, k), *given)

    @staticmethod
    @once_differentiable  # the kernels' backward is not itself differentiable: a double backward raises
    def backward(ctx, dR):
        X, boxes = ctx.saved_tensors
        N, C, H, W = X.shape
        B = boxes.shape[1]
        blocks, meta = triton.cdiv(H * W, BLOCK), _meta(C, "_crop_bwd")
        need_dx, need_box = ctx.needs_input_grad[0], any(ctx.needs_input_grad[1:3])  # what autograd asks for
        dX = torch.empty_like(X) if need_dx else None
        partial = torch.empty(N, B, blocks, triton.cdiv(C, meta["BLOCK_C"]) if need_box else 0, 4, device=X.device,
                              dtype=torch.float32)
        _crop_bwd[(N * blocks,)](X, boxes, dR.contiguous(), X if dX is None else dX, partial, B, C, H, W,
                                 float(ctx.k), need_dx, need_box, **meta)
        if not need_box:
            return dX, None, None, None
        g = partial.sum((2, 3))                                          # N×B×4
        return dX, g[..., :2].to(ctx.dtypes[0]), g[..., 2:].to(ctx.dtypes[1]), None


def box_crop(X, centres, halves, k):
    """R_i = X ∘ M_i (Eq. 3-4). X: N×C×H×W; centres, halves: N×B×2 ((x, y), (w, h), normalised) -> N×B×C×H×W.
    A tensor k goes to the reference: it keeps k's gradient, where the kernels take k as a number (and reading a
    CUDA tensor's value would wait for the GPU)."""
    if backend(X) == "triton" and not isinstance(k, torch.Tensor):
        return BoxCropFunction.apply(X, centres, halves, k)
    return box_crop_reference(X, centres, halves, k)
