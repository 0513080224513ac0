"""Building blocks that the papers cite from earlier work rather than define: CycleGAN's residual block
(Zhu et al. 2017, after Johnson et al. 2016), the N(0, 0.02) weight init of DCGAN/pix2pix, and LSGAN's
least-squares objective (Mao et al. 2017); and an instance norm that keeps a single-colour image from turning
the gradients into NaN."""
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.amp import compute_dtype, float32, full_precision


def conv(in_ch, out_ch, kernel, stride=1, bias=True, layer=nn.Conv2d):
    """Reflection padding of (kernel − 1) // 2, then the convolution: two modules, as in the released code, which
    keeps checkpoint keys such as `DownBlock.1.weight` lining up."""
    return [nn.ReflectionPad2d((kernel - 1) // 2), layer(in_ch, out_ch, kernel, stride, bias=bias)]


class InstanceNorm2d(nn.InstanceNorm2d):
    """nn.InstanceNorm2d (used here without affine), except on a map whose values are all equal: that normalises to
    exactly 0 and passes no gradient back. torch gives it rounding noise of the mean divided by sqrt(ε) instead, and
    the gradient P·dy / sqrt(ε) (P removes the mean), 316 times dy at ε = 1e-5. A single-colour image makes every
    map of U-GAT-IT's generator constant (reflection padding and nearest upsampling keep a constant map constant),
    so its 21 norms at n_res 4 multiply the gradient by about 316 each: it overflows float32 and inf · 0 gives NaN.
    The weights before such a norm can only move the map by a constant, which P removes, so their exact gradient
    through it is 0 anyway. Maps that vary are normalised exactly as by nn.InstanceNorm2d."""

    def forward(self, x):
        lo, hi = x.detach().flatten(2).aminmax(dim=2)
        return super().forward(x).masked_fill((lo == hi)[..., None, None], 0)


class ResnetBlock(nn.Module):
    """x + [pad, conv3, IN, ReLU, pad, conv3, IN](x); no ReLU after the sum."""

    def __init__(self, dim, bias=True):
        super().__init__()
        self.conv_block = nn.Sequential(*conv(dim, dim, 3, bias=bias), InstanceNorm2d(dim), nn.ReLU(True),
                                        *conv(dim, dim, 3, bias=bias), InstanceNorm2d(dim))

    def forward(self, x):
        return x + self.conv_block(x)


def init_normal(module, std=0.02):
    """Weights of every conv and linear layer from N(0, std), biases 0. Call it before adding spectral norm."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def lsgan(prediction, target):
    """Least-squares GAN term: mean (prediction − target)², target 1 for 'real', 0 for 'fake'."""
    return F.mse_loss(prediction, torch.full_like(prediction, float(target)))


class SpectralNorm:
    """Spectral normalisation (Miyato et al. 2018): the layer uses W / σ(W), σ the largest singular value of W
    (as a matrix out × in·k·k), estimated by one power-iteration step per training forward; u, v persist as buffers
    `weight_u`, `weight_v`. A mixin for nn.Conv2d and nn.Linear; `weight` is the un-normalised W."""

    def init_sn(self):
        rows = self.weight.shape[0]
        self.register_buffer("weight_u", F.normalize(torch.randn(rows), dim=0))
        self.register_buffer("weight_v", F.normalize(torch.randn(self.weight.numel() // rows), dim=0))

    def power_iteration(self):
        """One step towards W's top singular vectors, at every training forward (none in eval mode). Returns
        copies of u, v for this forward's graph: the next training forward updates the buffers in place, and a
        backward through both forwards needs each one's own u, v (as torch.nn.utils.spectral_norm clones them)."""
        if self.training:
            with torch.no_grad(), full_precision(self.weight):  # bf16 would blur u, v and σ to 3 digits
                W = self.weight.flatten(1)
                self.weight_v.copy_(F.normalize(W.t() @ self.weight_u, dim=0))
                self.weight_u.copy_(F.normalize(W @ self.weight_v, dim=0))
        return self.weight_u.clone(), self.weight_v.clone()

    def sigma(self):
        u, v = self.power_iteration()
        with full_precision(self.weight):
            return u @ (self.weight.flatten(1) @ v)  # σ ≈ uᵀWv; u, v fixed in the gradient


class SNConv2d(SpectralNorm, nn.Conv2d):
    """A conv is linear in its weight, so conv(x, W/σ) = conv(x, W)/σ: dividing the small output instead of the
    weight never materialises W/σ. The backward (SNConvFunction) adds σ's rank-1 gradient in place, so the
    weight's gradient is one tensor, not three (33M weights in U-GAT-IT's global discriminator)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.init_sn()

    def forward(self, x):
        u, v = self.power_iteration()
        return SNConvFunction.apply(x, self.weight, self.bias, u, v, self.stride, self.padding)


@contextmanager
def plain_cpu_conv():
    """On CPU, oneDNN re-lays out a conv's weight at every call; for the discriminators' wide convs with tiny
    outputs that costs more than the conv, and PyTorch's plain im2col + GEMM path is faster: 0.35 s instead of
    0.49 s for both discriminators' forward and backward at 128 px. (No effect on GPU.)"""
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


class SNConvFunction(torch.autograd.Function):
    """y = conv(x, W) / σ + b with σ = uᵀ W v (u, v fixed). With g = dL/dy and y0 = conv(x, W):
        dL/dx = conv_input_grad(W, g / σ)
        dL/dW = conv_weight_grad(x, g / σ) − (Σ g·y0 / σ²) · u vᵀ
        dL/db = Σ g
    Under autocast (common.amp) both convs run in its type, as nn.Conv2d's would; σ, the rank-1 term and the
    weight's gradient stay float32."""

    @staticmethod
    def forward(ctx, x, W, b, u, v, stride, padding):
        with full_precision(x):
            sigma = u @ (W.flatten(1) @ v)
        dtype = compute_dtype(x)
        x, W_low = x.to(dtype), W.to(dtype)
        with plain_cpu_conv():
            y0 = F.conv2d(x, W_low, None, stride, padding)
        ctx.save_for_backward(x, W_low, u, v, y0, sigma)
        ctx.stride, ctx.padding, ctx.W_dtype = stride, padding, W.dtype
        y = y0 / sigma
        return y if b is None else y + b.to(dtype)[:, None, None]

    @staticmethod
    def backward(ctx, g):
        x, W, u, v, y0, sigma = ctx.saved_tensors
        g_s = (g / sigma).to(x.dtype)
        grad_x = grad_W = grad_b = None
        with plain_cpu_conv():
            if ctx.needs_input_grad[0]:
                grad_x = torch.nn.grad.conv2d_input(x.shape, W, g_s, ctx.stride, ctx.padding)
            if ctx.needs_input_grad[1]:
                grad_W = torch.nn.grad.conv2d_weight(x, W.shape, g_s, ctx.stride, ctx.padding).to(ctx.W_dtype)
                grad_W.view(W.shape[0], -1).addr_(u, v, alpha=-(float32(g_s) * y0).sum() / sigma)
        if ctx.needs_input_grad[2]:
            grad_b = float32(g).sum((0, 2, 3))
        return grad_x, grad_W, grad_b, None, None, None, None


class SNLinear(SpectralNorm, nn.Linear):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.init_sn()

    def normalized_weight(self):
        return self.weight / self.sigma()

    def forward(self, x):
        return F.linear(x, self.normalized_weight(), self.bias)


# --- CycleGAN's networks (Zhu et al. 2017, Appendix 7.2), which AttentionGAN and UAIT build on -------------------

def resnet_encoder(in_ch, ngf, n_blocks):
    """c7s1-ngf, d(2·ngf), d(4·ngf), then n_blocks residual blocks at 4·ngf channels, H/4 × W/4. The stride-2 convs
    pad with zeros, the others reflect, as in CycleGAN's released generator."""
    layers = [*conv(in_ch, ngf, 7), InstanceNorm2d(ngf), nn.ReLU(True)]
    for c in (ngf, 2 * ngf):
        layers += [nn.Conv2d(c, 2 * c, 3, 2, 1), InstanceNorm2d(2 * c), nn.ReLU(True)]
    return layers + [ResnetBlock(4 * ngf) for _ in range(n_blocks)]


def resnet_decoder(ngf, out_ch, kernel=7):
    """u(2·ngf), u(ngf) (3×3 transposed convs, stride 2), then a kernel×kernel conv to out_ch with no
    activation: the paper picks it (tanh for an image, sigmoid or softmax for attention)."""
    layers = []
    for c in (4 * ngf, 2 * ngf):
        layers += [nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1), InstanceNorm2d(c // 2),
                   nn.ReLU(True)]
    return layers + conv(ngf, out_ch, kernel)


class PatchGAN(nn.Module):
    """The 70×70 PatchGAN (pix2pix, CycleGAN): C64-C128-C256-C512, 4×4 convs, LeakyReLU 0.2, instance norm on all
    but the first (`norm_first` normalises that too), then a 4×4 conv to one logit per patch. `normalize = False`
    skips the norms at run time (UAIT switches them off in its second stage). Keys match the released `model.N`
    layout when `norm_first` is False."""

    def __init__(self, in_ch=3, ndf=64, n_layers=3, norm_first=False):
        super().__init__()
        layers, c = [nn.Conv2d(in_ch, ndf, 4, 2, 1)], ndf
        layers += [InstanceNorm2d(ndf), nn.LeakyReLU(0.2, True)] if norm_first else [nn.LeakyReLU(0.2, True)]
        for i in range(1, n_layers + 1):
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(c, 2 * c, 4, stride, 1), InstanceNorm2d(2 * c), nn.LeakyReLU(0.2, True)]
            c *= 2
        self.model = nn.Sequential(*layers, nn.Conv2d(c, 1, 4, 1, 1))
        self.normalize = True

    def forward(self, x):
        for layer in self.model:
            if self.normalize or not isinstance(layer, nn.InstanceNorm2d):
                x = layer(x)
        return x


def lsgan_d(D, real, fake):
    """The discriminator's LSGAN objective, halved to slow D down relative to G (CycleGAN §4): ½[(D(real) − 1)² +
    D(fake)²]. Real and fake go through D as one batch: instance norm is per image, so this is two passes' result
    at the cost of one."""
    logits = D(torch.cat([real, fake]))
    return 0.5 * (lsgan(logits[:len(real)], 1) + lsgan(logits[len(real):], 0))


class ImagePool:
    """CycleGAN's history of generated images (after Shrivastava et al. 2017): D is shown, for each new fake, with
    probability ½ a stored older one (which the new one replaces), so it does not forget what G used to make.
    The draws use torch's global RNG, which checkpoints save; the pool itself is saved through `state_dict`.
    Size 0 is no history (as in CycleGAN's code): D sees the new fakes, and no draws are made."""

    def __init__(self, size=50):
        self.size, self.images = size, []

    def query(self, images):
        if self.size == 0:
            return images.detach()
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())  # a copy: a view would keep its whole batch alive
            elif torch.rand(()) < 0.5:
                i = int(torch.randint(len(self.images), ()))
                self.images[i], image = image.clone(), self.images[i].to(image.device)
            out.append(image)
        return torch.stack(out)

    def state_dict(self):
        return {"images": torch.stack(self.images) if self.images else torch.empty(0)}

    def load_state_dict(self, state):
        self.images = list(state["images"])
