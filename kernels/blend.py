"""Attention-blend composition: the output image as an attention-weighted mix of generated content and the input.

    blend(x, c, a)             = a · c + (1 − a) · x                   UAIT Eq. (1), AttentionGAN scheme I Eq. (1)
                                 x, c: N×C×H×W; a: N×1×H×W in [0, 1], shared by the channels
    blend_softmax(x, c, l)     = Σ_{i<n} p_i · c_i + p_n · x,  p = softmax over the n attention logits l
                                 AttentionGAN scheme II Eq. (2): c: N×(n−1)×C×H×W content images,
                                 l: N×n×H×W, the last channel the background mask applied to the input

The `*_reference` functions are the readable math and the CPU path. The Triton kernels read every input once and
write the output once: a program owns a block of pixels of one image and all its channels, so the reductions over
channels (for the attention's gradient) and over the n masks need no atomics. Channels are taken a block at a time
(CONFIG, per kernel), so a wide input does not spill registers; beyond one block the softmax re-reads the logits
for each step. The softmax is fused in the
"online" way (running maximum and sum, rescaling the accumulator), so neither p nor the products are stored; the
backward recomputes p from the logits and the saved per-pixel log-sum-exp:
    dc_i = g · p_i,    dx = g · p_n,    dl_i = p_i · Σ_channels g · (v_i − out)    (v_i = c_i, v_n = x).
"""
import torch
from torch.autograd.function import once_differentiable

from kernels import backend, like_reference, result_type

try:
    import triton
    import triton.language as tl
except Exception:  # no Triton wheel (macOS, Windows), or a broken install (backend() warns): references only
    triton = None


def blend_reference(x, content, attention):
    return attention * content + (1 - attention) * x


def blend_softmax_reference(x, content, logits):
    p = torch.softmax(logits, dim=1).unsqueeze(2)               # N×n×1×H×W
    return (p[:, :-1] * content).sum(1) + p[:, -1] * x


if triton is not None:
    @triton.jit
    def _tile(HW, BLOCK: tl.constexpr):
        """This program's image n and block of pixels. The grid is 1-D, images × blocks: CUDA caps a grid's second
        axis at 65535 (4096² pixels in blocks of 256)."""
        blocks = tl.cdiv(HW, BLOCK)
        pid = tl.program_id(0).to(tl.int64)
        pix = (pid % blocks) * BLOCK + tl.arange(0, BLOCK)
        return pid // blocks, pix, pix < HW

    @triton.jit
    def _channels(c0, C, HW, pix, in_pix, BLOCK_C: tl.constexpr):
        """Channels c0 ... c0 + BLOCK_C − 1 of the block: masks, and offsets within an image."""
        ch = c0 + tl.arange(0, BLOCK_C)
        return (ch[:, None] < C) & in_pix[None, :], ch[:, None] * HW + pix[None, :]

    @triton.jit
    def _blend_fwd(X, Cn, A, OUT, C, HW, BLOCK_C: tl.constexpr, BLOCK: tl.constexpr):
        n, pix, in_pix = _tile(HW, BLOCK)
        a = tl.load(A + n * HW + pix, mask=in_pix, other=0.0).to(tl.float32)[None, :]
        for c0 in range(0, C, BLOCK_C):
            inside, img = _channels(c0, C, HW, pix, in_pix, BLOCK_C)
            offs = n * C * HW + img
            x = tl.load(X + offs, mask=inside, other=0.0).to(tl.float32)
            c = tl.load(Cn + offs, mask=inside, other=0.0).to(tl.float32)
            # As Eq. (1) reads, not x + a(c − x): a = 1 gives c exactly and a = 0 gives x exactly
            tl.store(OUT + offs, (a * c + (1 - a) * x).to(OUT.dtype.element_ty), mask=inside)

    @triton.jit
    def _blend_bwd(X, Cn, A, G, DX, DC, DA, C, HW, NEED_DX: tl.constexpr, NEED_DC: tl.constexpr,
                   NEED_DA: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK: tl.constexpr):
        """The gradients autograd asks for (NEED_*): without da, x and c are not read."""
        n, pix, in_pix = _tile(HW, BLOCK)
        a = tl.load(A + n * HW + pix, mask=in_pix, other=0.0).to(tl.float32)[None, :]
        da = tl.zeros([BLOCK], dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            inside, img = _channels(c0, C, HW, pix, in_pix, BLOCK_C)
            offs = n * C * HW + img
            g = tl.load(G + offs, mask=inside, other=0.0).to(tl.float32)
            if NEED_DX:
                tl.store(DX + offs, (g * (1 - a)).to(DX.dtype.element_ty), mask=inside)
            if NEED_DC:
                tl.store(DC + offs, (g * a).to(DC.dtype.element_ty), mask=inside)
            if NEED_DA:
                x = tl.load(X + offs, mask=inside, other=0.0).to(tl.float32)
                c = tl.load(Cn + offs, mask=inside, other=0.0).to(tl.float32)
                da += tl.sum(tl.where(inside, g * (c - x), 0.0), axis=0)
        if NEED_DA:
            tl.store(DA + n * HW + pix, da.to(DA.dtype.element_ty), mask=in_pix)

    @triton.jit
    def _softmax_fwd(X, Cn, L, OUT, LSE, C, HW, NM, BLOCK_C: tl.constexpr, BLOCK: tl.constexpr):
        """NM masks: NM − 1 content images, then the input. Online softmax over the masks, for each block of
        channels (one block for RGB)."""
        n, pix, in_pix = _tile(HW, BLOCK)
        for c0 in range(0, C, BLOCK_C):
            inside, img = _channels(c0, C, HW, pix, in_pix, BLOCK_C)
            m = tl.full([BLOCK], float("-inf"), tl.float32)
            s = tl.zeros([BLOCK], dtype=tl.float32)
            acc = tl.zeros([BLOCK_C, BLOCK], dtype=tl.float32)
            for i in range(NM):
                logit = tl.load(L + (n * NM + i) * HW + pix, mask=in_pix, other=0.0).to(tl.float32)
                if i < NM - 1:
                    v = tl.load(Cn + (n * (NM - 1) + i) * C * HW + img, mask=inside, other=0.0).to(tl.float32)
                else:
                    v = tl.load(X + n * C * HW + img, mask=inside, other=0.0).to(tl.float32)
                m_new = tl.maximum(m, logit)
                rescale = tl.exp(m - m_new)
                e = tl.exp(logit - m_new)
                s = s * rescale + e
                acc = acc * rescale[None, :] + e[None, :] * v
                m = m_new
            tl.store(OUT + n * C * HW + img, (acc / s[None, :]).to(OUT.dtype.element_ty), mask=inside)
            tl.store(LSE + n * HW + pix, m + tl.log(s), mask=in_pix)  # the same at every step

    @triton.jit
    def _softmax_bwd(X, Cn, L, OUT, LSE, G, DX, DC, DL, C, HW, NM, NEED_DX: tl.constexpr, NEED_DC: tl.constexpr,
                     NEED_DL: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK: tl.constexpr):
        """The gradients autograd asks for (NEED_*). dl's sum over channels goes block by block into DL itself:
        this program alone owns those pixels. A block's reload of DL may come from other threads than the previous
        block's store (the compiler picks both layouts), so a barrier, which makes the block's global writes
        visible to all its threads, separates the channel blocks."""
        n, pix, in_pix = _tile(HW, BLOCK)
        lse = tl.load(LSE + n * HW + pix, mask=in_pix, other=0.0)
        for c0 in range(0, C, BLOCK_C):
            if NEED_DL:
                tl.debug_barrier()
            inside, img = _channels(c0, C, HW, pix, in_pix, BLOCK_C)
            g = tl.load(G + n * C * HW + img, mask=inside, other=0.0).to(tl.float32)
            if NEED_DL:
                out = tl.load(OUT + n * C * HW + img, mask=inside, other=0.0).to(tl.float32)
            for i in range(NM):
                p = tl.exp(tl.load(L + (n * NM + i) * HW + pix, mask=in_pix, other=0.0).to(tl.float32) - lse)
                if i < NM - 1:
                    v = tl.load(Cn + (n * (NM - 1) + i) * C * HW + img, mask=inside & NEED_DL,
                                other=0.0).to(tl.float32)
                    if NEED_DC:
                        tl.store(DC + (n * (NM - 1) + i) * C * HW + img, (g * p[None, :]).to(DC.dtype.element_ty),
                                 mask=inside)
                else:
                    v = tl.load(X + n * C * HW + img, mask=inside & NEED_DL, other=0.0).to(tl.float32)
                    if NEED_DX:
                        tl.store(DX + n * C * HW + img, (g * p[None, :]).to(DX.dtype.element_ty), mask=inside)
                if NEED_DL:
                    dl = p * tl.sum(tl.where(inside, g * (v - out), 0.0), axis=0)
                    dl_at = DL + (n * NM + i) * HW + pix
                    dl += tl.load(dl_at, mask=in_pix & (c0 > 0), other=0.0).to(tl.float32)
                    tl.store(dl_at, dl.to(DL.dtype.element_ty), mask=in_pix)

BLOCK = 256
# Per kernel: the most channels per step of a program's loop, and its warps. Chosen from the registers per thread
# the compiled kernels take (benchmarks/kernels_compile.py; sm_80, sm_90, sm_100; fp32, bf16, fp16): the widest
# channel block that keeps a kernel near 64 registers (at most 72 for every type and target) with no spill, where
# 32 of an SM's 64 warp slots can be filled. Wider blocks take more (_softmax_bwd at 16 channels: 240 registers with 4 warps, 128-164 with 8;
# _blend_fwd at 16 and 8 warps: 48-57, but ptxas spills 4 bytes of the bf16 kernel on sm_90), and the kernels read
# nothing more for narrower ones but the softmax's logits, read again per block.
CONFIG = {"_blend_fwd": (8, 8), "_blend_bwd": (8, 8), "_softmax_fwd": (8, 8), "_softmax_bwd": (4, 8)}


def _grid(x, kernel):
    """The launch grid, C, H×W, and the kernel's channel block and warps."""
    N, C, H, W = x.shape
    block_c, warps = CONFIG[kernel]
    return (N * triton.cdiv(H * W, BLOCK),), C, H * W, dict(BLOCK_C=min(triton.next_power_of_2(C), block_c),
                                                             BLOCK=BLOCK, num_warps=warps)


def _needed(ctx):
    """Which of the three inputs' gradients autograd asks for (the input image's, often, or UAIT's frozen attention
    in stage 2, not): the kernels skip the others' stores and what only they read."""
    return tuple(bool(n) for n in ctx.needs_input_grad[:3])


def _grads(ctx, *inputs):
    """Uninitialised gradients of the inputs, None where autograd asks for none."""
    return [torch.empty_like(t) if need else None for t, need in zip(inputs, _needed(ctx))]


def _or_any(*grads, like):
    """The kernels' gradient pointers: a gradient not asked for is never written, any tensor serves."""
    return [like if g is None else g for g in grads]


class BlendFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, content, attention):
        given = x, content, attention
        x, content, attention = x.contiguous(), content.contiguous(), attention.contiguous()
        out = torch.empty_like(x, dtype=result_type(*given))  # the reference's type: fp16 x, fp32 a give fp32
        grid, C, HW, meta = _grid(x, "_blend_fwd")
        _blend_fwd[grid](x, content, attention, out, C, HW, **meta)
        ctx.save_for_backward(x, content, attention)
        return like_reference(out, blend_reference, *given)

    @staticmethod
    @once_differentiable  # the kernels' backward is not itself differentiable: a double backward raises
    def backward(ctx, g):
        x, content, attention = ctx.saved_tensors
        dx, dc, da = _grads(ctx, x, content, attention)
        grid, C, HW, meta = _grid(x, "_blend_bwd")
        _blend_bwd[grid](x, content, attention, g.contiguous(), *_or_any(dx, dc, da, like=x), C, HW,
                         *_needed(ctx), **meta)
        return dx, dc, da


class BlendSoftmaxFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, content, logits):
        given = x, content, logits
        x, content, logits = x.contiguous(), content.contiguous(), logits.contiguous()
        out = torch.empty_like(x, dtype=result_type(*given))
        lse = torch.empty(x.shape[0], *x.shape[2:], device=x.device, dtype=torch.float32)
        grid, C, HW, meta = _grid(x, "_softmax_fwd")
        _softmax_fwd[grid](x, content, logits, out, lse, C, HW, logits.shape[1], **meta)
        ctx.save_for_backward(x, content, logits, out, lse)
        return like_reference(out, blend_softmax_reference, *given)

    @staticmethod
    @once_differentiable  # the kernels' backward is not itself differentiable: a double backward raises
    def backward(ctx, g):
        x, content, logits, out, lse = ctx.saved_tensors
        dx, dc, dl = _grads(ctx, x, content, logits)
        grid, C, HW, meta = _grid(x, "_softmax_bwd")
        _softmax_bwd[grid](x, content, logits, out, lse, g.contiguous(), *_or_any(dx, dc, dl, like=x), C, HW,
                           logits.shape[1], *_needed(ctx), **meta)
        return dx, dc, dl


def _indexable(x, content, masks):
    """Whether the kernels can index these shapes: x N×C×H×W; blend's content x's shape and attention N×1×H×W;
    blend_softmax's content N×(n−1)×C×H×W and logits N×n×H×W. Other shapes go to the reference, which broadcasts
    them as PyTorch does (or says why it cannot), so both paths accept the same inputs."""
    if x.dim() != 4:
        return False
    N, _, H, W = x.shape
    if content.dim() == 4:
        return content.shape == x.shape and masks.shape == (N, 1, H, W)
    n = content.shape[1] + 1
    return content.shape[0] == N and content.shape[2:] == x.shape[1:] and masks.shape == (N, n, H, W)


def blend(x, content, attention):
    """a · c + (1 − a) · x. x, content: N×C×H×W; attention: N×1×H×W (other shapes broadcast, on the reference)."""
    if backend(x) == "triton" and content.dim() == 4 and _indexable(x, content, attention):
        return BlendFunction.apply(x, content, attention)
    return blend_reference(x, content, attention)


def blend_softmax(x, content, logits):
    """Σ_{i<n} softmax(l)_i · c_i + softmax(l)_n · x. x: N×C×H×W; content: N×(n−1)×C×H×W; logits: N×n×H×W
    (other shapes broadcast, on the reference)."""
    if backend(x) == "triton" and content.dim() == 5 and _indexable(x, content, logits):
        return BlendSoftmaxFunction.apply(x, content, logits)
    return blend_softmax_reference(x, content, logits)
