"""GuideGAN: Attention based spatial guidance for image-to-image translation. Anonymous, ICLR 2020 submission
(OpenReview). No code was released.

The idea. A discriminator sees where a fake goes wrong; GuideGAN makes it say so. Its discriminator returns, with
its verdict, an attention map: where it looked. The generator then reads that map beside its input, x ⊕ M_x, so it
knows where the discriminator will look next time. Eq. (1) iterates y'^(k+1) = G(x ⊕ T(D(y'^(k)))), starting from
the all-ones map of an image seen for the first time. The map comes either post hoc, from the activations of the
discriminator's 4th conv layer (Eq. 2), or from a trainable residual-attention branch inside the discriminator
(Eq. 3, after Wang et al.'s RAN), and enters the generator either as a per-pixel weight, (M + 1)·x (Eq. 4), or as an
alpha channel (Eq. 5). The framework wraps pix2pix (supervised, paired data) and CycleGAN (unsupervised).

Map of the paper to this file:
    Eq. (1)  y1 = G(x ⊕ T(D(y0))), y0 = G(x ⊕ T(1))               GuideGAN.eq1, used by train_step and translate
    Eq. (2)  post hoc attention: minmax(mean_c |a_4,c|)           PosthocD
    Eq. (3)  E = (M + 1)·T, RAM discriminator (Fig. 6, App. A)    RAMD
    Eq. (4)  residual concatenation x' = (M + 1)·x, on [0, 1]     Transfer, --concat residual
    Eq. (5)  RGBA concatenation x' = {x_r, x_g, x_b, g(M; φ)}      Transfer, --concat rgba
    Eq. (7)-(8) LSGAN, L1 to the ground truth (supervised)       GuideGAN.train_step, --l1_weight
    Eq. (9)  10·L_GAN + 10·L_L1 (Appendix A)                      --adv_weight, --l1_weight
    Eq. (10)-(11) cycle consistency, L_GAN(G_X, D_Y) + L_GAN(G_Y, D_X) + λ L_cyc (its "G_X" is D_X)   train_step
    App. A   UNet-128 and a 5-layer PatchGAN (supervised); ResNet 6/9 blocks and PatchGAN (unsupervised)
A is X, B is Y; G_X: A -> B is judged by D_Y, G_Y: B -> A by D_X. On the embedded `shapes_paired` data A is the
photo and B its label map, so A2B is Table 1-2's photo -> label and B2A label -> photo.

Our choices where the paper is silent or loose (measured: docs/guidegan.md#decisions):
- --mode supervised trains two pix2pix translators in one run, G_X with D_Y and G_Y with D_X, sharing no loss. Their
  discriminators are conditional, D_Y([x, y]), as pix2pix's, which Table 2 compares with (Eq. 6-7 write D(y)).
- The U-Net has pix2pix's layout (4×4 stride-2 convs, C64-C128-C256-C512-C512-C512-C512, skips, dropout 0.5 in the
  512-channel layers above the innermost) with instance norm, pix2pix's batch norm at batch 1, kept at test time.
  Seven down-samplings at 128 px; at other sizes as many as the size allows (6 at 64 px).
- RAMD's sizes (the paper gives layer counts): extractor = PatchGAN's first layer, trunk its next three; the mask
  branch: two 4×4 stride-2 convs, two 3×3 convs, bilinear up-sampling onto the trunk's grid, sigmoid.
- Eq. (1) runs within each step, k = 0 and 1, as translate runs it on a test image: each image keeping its last map
  would read maps an epoch old, and a test image has none. G's losses are the mean over y0 and y1; D trains on y1;
  M is detached (D's map guides G, G's loss does not shape it).
- Eq. (4) on the [0, 1] pixel scale its reason assumes, halved so the all-ones map gives the image: (M + 1)·x01 / 2.
- RAM's map is min-maxed per image as post hoc's (Eq. 2's g), so that both maps span [0, 1].
- g(M; φ) of Eq. (5) is 2M − 1 plus a per-pixel MLP 1 -> 16 -> 1 whose last layer starts at zero; T is shared by
  both directions (§3.1) and trained with the generators. The cycle's way back starts from the all-ones map.
- The adversarial weight 10 scales G's LSGAN term; D's objective is LSGAN halved (pix2pix, CycleGAN).
- --attention none is the baseline with GuideGAN's weights 10 and 10; pix2pix and CycleGAN as their papers weigh
  them are --adv_weight 1 with --l1_weight 100 and 10 respectively (ABLATIONS), LSGAN throughout.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.amp import Precision
from common.blocks import ImagePool, PatchGAN, init_normal, lsgan, lsgan_d, resnet_decoder, resnet_encoder
from common.train import UsageError, add_bool, add_default, main

# --- Defaults: the paper's hyperparameters (flag -> (value, source)) ------------------------------------------
DEFAULTS = {
    "epochs": (150, "Appendix A: apple2orange and Cityscapes, 100 constant + 50 decaying"),
    "decay_epoch": (100, "Appendix A (horse2zebra and day2night: from epoch 50 of 150)"),
    "iteration": (None, "--epochs × the larger training set / --batch_size"),
    "batch_size": (1, "Appendix A"),
    "print_freq": (1000, "our choice"),
    "save_freq": (10_000, "our choice"),
    "decay_flag": (True, "Appendix A: linear to 0"),
    "lr": (2e-4, "Appendix A"),
    "weight_decay": (0.0, "not used"),
    "img_size": (128, "Appendix A: 128 px for the Cityscapes tasks"),
    "ngf": (64, "pix2pix and CycleGAN"),
    "ndf": (64, "pix2pix and CycleGAN"),
    "n_res": (None, "Appendix A: 6 residual blocks below 256 px, 9 at 256"),
    "adv_weight": (10.0, "Appendix A"),
    "l1_weight": (10.0, "Appendix A: λ of Eq. 9 (L1) and of Eq. 11 (cycle)"),
    "pool_size": (50, "CycleGAN's image pool, unsupervised mode"),
}
# `python guidegan.py` with no --dataset: the embedded shapes_paired (photo <-> label) at a size a 2-core CPU
# trains in minutes (benchmarks/train_step.py guidegan --img_size 64 --ngf 16 --ndf 16).
# Unsupervised, 3 residual blocks: a run of either mode takes under 10 minutes on one core.
CPU_PRESET = dict(dataset="shapes_paired", img_size=64, ngf=16, ndf=16, n_res=3, iteration=2000, print_freq=500,
                     save_freq=500)
# Tables 2 (supervised) and 1 (unsupervised) for benchmarks/ablation.py: row -> the flags that make it, each
# table's full model first; attention × concatenation, then two rows without attention: GuideGAN's losses (what
# the map is measured against) and pix2pix / CycleGAN with their own papers' weights (pix2pix: λ_adv 1, λ_L1 100;
# CycleGAN: λ_adv 1, λ_cyc 10).
ABLATIONS = {
    "Table 2 (supervised)": {
        "post hoc, residual": [],
        "post hoc, RGBA": ["--concat", "rgba"],
        "RAM, residual": ["--attention", "ram"],
        "RAM, RGBA": ["--attention", "ram", "--concat", "rgba"],
        "none, GuideGAN's losses": ["--attention", "none"],
        "pix2pix": ["--attention", "none", "--adv_weight", "1", "--l1_weight", "100"],
    },
    "Table 1 (unsupervised)": {
        "unsupervised post hoc, residual": ["--mode", "unsupervised"],
        "unsupervised post hoc, RGBA": ["--mode", "unsupervised", "--concat", "rgba"],
        "unsupervised RAM, residual": ["--mode", "unsupervised", "--attention", "ram"],
        "unsupervised RAM, RGBA": ["--mode", "unsupervised", "--attention", "ram", "--concat", "rgba"],
        "unsupervised none, GuideGAN's losses": ["--mode", "unsupervised", "--attention", "none"],
        "CycleGAN": ["--mode", "unsupervised", "--attention", "none", "--adv_weight", "1", "--l1_weight", "10"],
    },
}


# --- Networks -------------------------------------------------------------------------------------------------

class UNetLevel(nn.Module):
    """One level of pix2pix's U-Net: down (4×4 stride-2 conv), the levels below, up (4×4 stride-2 transposed conv),
    and the skip connection that concatenates this level's input with its output."""

    def __init__(self, in_ch, out_ch, inner, below=None, outermost=False, dropout=False):
        super().__init__()
        down = [nn.Conv2d(in_ch, inner, 4, 2, 1)]
        if not outermost:
            down = [nn.LeakyReLU(0.2, True)] + down + ([nn.InstanceNorm2d(inner)] if below is not None else [])
        up_in = inner if below is None else 2 * inner  # below the innermost level there is no skip to widen it
        up = [nn.ReLU(True), nn.ConvTranspose2d(up_in, out_ch, 4, 2, 1)]
        up += [nn.Tanh()] if outermost else [nn.InstanceNorm2d(out_ch)] + ([nn.Dropout(0.5)] if dropout else [])
        self.model = nn.Sequential(*down, *([below] if below is not None else []), *up)
        self.outermost = outermost

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


def n_down(img_size):
    """UNet-128's 7 down-samplings, or as many as halve img_size exactly (6 at 64 px)."""
    n = 0
    while n < 7 and img_size % 2 ** (n + 1) == 0:
        n += 1
    return n


def unet(in_ch, ngf, n, dropout):
    """pix2pix's U-Net with n levels: widths ngf·(1, 2, 4, 8, 8, ...), dropout in the 8·ngf levels between the
    fourth and the innermost (two of them in UNet-128)."""
    widths = [ngf * min(2 ** i, 8) for i in range(n)]
    level = None
    for i in reversed(range(n)):
        level = UNetLevel(in_ch if i == 0 else widths[i - 1], 3 if i == 0 else widths[i - 1], widths[i], level,
                          outermost=i == 0, dropout=dropout and 4 <= i < n - 1)
    return level


def resnet_generator(in_ch, ngf, n_res):
    """CycleGAN's ResNet generator (Appendix A), reading in_ch channels: x, or x with its alpha channel."""
    return nn.Sequential(*resnet_encoder(in_ch, ngf, n_res), *resnet_decoder(ngf, 3), nn.Tanh())


def resize(a, x):
    return F.interpolate(a, size=x.shape[-2:], mode="bilinear", align_corners=False)


def minmax(m):
    """g(·) of Eq. (2): each image's map stretched onto [0, 1]."""
    low, high = m.amin((2, 3), keepdim=True), m.amax((2, 3), keepdim=True)
    return (m - low) / (high - low).clamp_min(1e-12)


class PosthocD(PatchGAN):
    """The 5-conv PatchGAN (Appendix A) with post hoc attention, Eq. (2): M = minmax(mean_c |a_4,c|), a_4 the 4th
    conv layer's activations (after its norm and LeakyReLU), resized to the input. forward -> (logits, M)."""

    def forward(self, x):
        a = self.model[:-1](x)  # everything up to the last conv: a_4
        M = minmax(a.abs().mean(1, keepdim=True))
        return self.model[-1](a), resize(M, x[:, :1]).detach()


class RAMD(nn.Module):
    """The residual-attention discriminator (Appendix A, Fig. 6): a feature extractor, a trunk T, a mask branch M,
    E = (M + 1)·T (Eq. 3) and a classifier. forward -> (logits, the channel mean of M, min-maxed as Eq. 2's map,
    resized to the input)."""

    def __init__(self, in_ch, ndf):
        super().__init__()

        def layer(c_in, c_out, kernel, stride, pad):
            return [nn.Conv2d(c_in, c_out, kernel, stride, pad), nn.InstanceNorm2d(c_out), nn.LeakyReLU(0.2, True)]
        self.features = nn.Sequential(nn.Conv2d(in_ch, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True))
        self.trunk = nn.Sequential(*layer(ndf, 2 * ndf, 4, 2, 1), *layer(2 * ndf, 4 * ndf, 4, 2, 1),
                                   *layer(4 * ndf, 8 * ndf, 4, 1, 1))
        self.mask = nn.Sequential(*layer(ndf, 2 * ndf, 4, 2, 1), *layer(2 * ndf, 4 * ndf, 4, 2, 1),
                                  *layer(4 * ndf, 8 * ndf, 3, 1, 1), nn.Conv2d(8 * ndf, 8 * ndf, 3, 1, 1))
        self.classifier = nn.Conv2d(8 * ndf, 1, 4, 1, 1)

    def forward(self, x):
        f = self.features(x)
        T = self.trunk(f)
        M = torch.sigmoid(resize(self.mask(f), T))  # the up-sampling layer onto T's grid, then the sigmoid
        E = (M + 1) * T  # Eq. (3)
        # The mean of 8·ndf sigmoids spans a few hundredths of [0, 1] (0.03 at initialisation): G would read it as
        # a near-constant gain, which its normalisations remove. On post hoc's scale it says where D looks.
        return self.classifier(E), resize(minmax(M.mean(1, keepdim=True)), x[:, :1]).detach()


class PlainD(PatchGAN):
    """--attention none: pix2pix's / CycleGAN's PatchGAN, no map."""

    def forward(self, x):
        return super().forward(x), None


class Transfer(nn.Module):
    """The attention transfer T (§3.3), shared by both generators: (x, M) -> x', M in [0, 1] per pixel."""

    def __init__(self, concat):
        super().__init__()
        self.concat = concat
        if concat == "rgba":
            # g(M; φ) = a·M + b + h(M): the alpha channel starts as 2M − 1 (attended pixels opaque, 1; the rest
            # transparent, −1, on the images' scale), and the per-pixel MLP h, whose last layer starts at zero,
            # learns what bend it needs.
            self.affine = nn.Conv2d(1, 1, 1)
            self.h = nn.Sequential(nn.Conv2d(1, 16, 1), nn.ReLU(True), nn.Conv2d(16, 1, 1))
            with torch.no_grad():
                self.affine.weight.fill_(2.0)
                self.affine.bias.fill_(-1.0)
                self.h[-1].weight.zero_()
                self.h[-1].bias.zero_()

    def forward(self, x, M):
        if self.concat == "residual":
            # Eq. (4) on the [0, 1] pixel scale the paper argues on ("dot production ... will degrade the pixel
            # value"), halved: x'01 = (M + 1)·x01 / 2, so the all-ones map gives x itself and an unattended pixel
            # keeps half its value. On [-1, 1], (M + 1)·x would scale contrast by sign and carry nothing at grey.
            return (M + 1) * (x + 1) / 2 - 1
        return torch.cat([x, self.affine(M) + self.h(M)], 1)  # Eq. (5): x_r, x_g, x_b and the alpha g(M; φ)


# --- Losses and the training step -------------------------------------------------------------------------------

DISCRIMINATORS = {"posthoc": PosthocD, "ram": RAMD, "none": PlainD}


class GuideGAN:
    def __init__(self, args, device):
        if args.attention == "none" and args.concat != "residual":
            raise UsageError(f"--concat {args.concat}: --attention none gives no map to concatenate; leave --concat "
                             "out or choose --attention posthoc or ram")
        self.supervised = self.paired = args.mode == "supervised"
        self.attention = args.attention
        # Both maps are min-maxed per image (Eq. 2's g; RAMD says why for RAM's): no scale of their own
        # (common.metrics).
        self.attention_scale = "unbounded"
        in_ch = 4 if args.attention != "none" and args.concat == "rgba" else 3
        if self.supervised:
            make_G = lambda: unet(in_ch, args.ngf, n_down(args.img_size), args.dropout)  # noqa: E731
        else:
            n_res = args.n_res or (9 if args.img_size >= 256 else 6)
            make_G = lambda: resnet_generator(in_ch, args.ngf, n_res)  # noqa: E731
        d_in = 6 if self.supervised else 3  # pix2pix's D judges [x, y]
        D = DISCRIMINATORS[args.attention]
        self.G_X, self.G_Y = make_G().to(device), make_G().to(device)
        self.D_Y, self.D_X = D(d_in, args.ndf).to(device), D(d_in, args.ndf).to(device)
        self.nets = dict(G_X=self.G_X, G_Y=self.G_Y, D_Y=self.D_Y, D_X=self.D_X)
        for net in self.nets.values():
            init_normal(net)  # N(0, 0.02), as pix2pix and CycleGAN
        self.T = Transfer(args.concat).to(device)  # after init_normal: g(M; φ) has its own start (Transfer)
        if args.attention != "none" and args.concat == "rgba":
            self.nets["T"] = self.T
        adam = dict(lr=args.lr, betas=(0.5, 0.999), weight_decay=args.weight_decay,
                    fused=device.type in ("cpu", "cuda"))
        self.optimizers = {
            "G": torch.optim.Adam([p for k in ("G_X", "G_Y", "T") if k in self.nets
                                   for p in self.nets[k].parameters()], **adam),
            "D": torch.optim.Adam([*self.D_Y.parameters(), *self.D_X.parameters()], **adam)}
        self.amp = Precision(args.amp, device, self.optimizers)  # --amp (common.amp)
        self.pools = {} if self.supervised else dict(fake_A=ImagePool(args.pool_size),
                                                     fake_B=ImagePool(args.pool_size))
        self.adv_weight, self.l1_weight = args.adv_weight, args.l1_weight

    def guided(self, G, x, M):
        """G(x ⊕ T(M)): the generator's input of Eq. (1)."""
        return G(self.T(x, M))

    def unguided(self, G, x):
        """G from the all-ones map, k = 0 of Eq. (1); G(x) without attention."""
        return G(x) if self.attention == "none" else self.guided(G, x, torch.ones_like(x[:, :1]))

    def judge(self, D, x, y):
        """D's (logits, attention) for y, translated from x: conditional in the supervised mode."""
        return D(torch.cat([x, y], 1)) if self.supervised else D(y)

    def eq1(self, G, D, x):
        """Eq. (1) for k = 0, 1: y0 = G(x ⊕ T(1)) from the all-ones map an image starts with (§3.1), M = D's map
        of y0, y1 = G(x ⊕ T(M)). Returns (y0, D's logits for y0, M, y1). train_step and translate both run it,
        so the map G reads in training is the one it reads at test time: D's view of G's own first attempt."""
        y0 = self.unguided(G, x)
        logits0, M = self.judge(D, x, y0)
        return y0, logits0, M, self.guided(G, x, M)

    def translations(self, G, D, x):
        """The iterates G is trained on, each with D's logits: y0 and y1 of Eq. (1); G(x) without attention."""
        if self.attention == "none":
            y = self.unguided(G, x)
            return [(y, self.judge(D, x, y)[0])]
        y0, logits0, _, y1 = self.eq1(G, D, x)
        return [(y0, logits0), (y1, self.judge(D, x, y1)[0])]

    def train_step(self, x, y):
        """One iteration for both directions: G_X, G_Y (and g's φ) take a step on Eq. (9) or (11), averaged over
        the iterates of Eq. (1), then D_Y and D_X on the translations y1 (the output translate gives)."""
        self.D_X.requires_grad_(False)
        self.D_Y.requires_grad_(False)
        to_B = self.translations(self.G_X, self.D_Y, x)  # x -> y', judged by D_Y
        to_A = self.translations(self.G_Y, self.D_X, y)
        mean = lambda terms: sum(terms) / len(terms)  # noqa: E731
        losses = {"G_adv": mean([lsgan(logits, 1) for _, logits in to_B])
                  + mean([lsgan(logits, 1) for _, logits in to_A])}  # Eq. (7), G's side
        if self.supervised:  # Eq. (8)
            losses["G_l1"] = mean([F.l1_loss(f, y) for f, _ in to_B]) + mean([F.l1_loss(f, x) for f, _ in to_A])
        else:  # Eq. (10): the way back starts, as every image does, from the all-ones map
            losses["G_l1"] = (mean([F.l1_loss(self.unguided(self.G_Y, f), x) for f, _ in to_B])
                              + mean([F.l1_loss(self.unguided(self.G_X, f), y) for f, _ in to_A]))
        losses["G"] = self.adv_weight * losses["G_adv"] + self.l1_weight * losses["G_l1"]  # Eq. (9), (11)
        self.amp.update("G", losses["G"])
        self.D_X.requires_grad_(True)
        self.D_Y.requires_grad_(True)

        fake_y, fake_x = to_B[-1][0], to_A[-1][0]
        losses["D"] = self.d_loss(self.D_Y, x, y, fake_y, "fake_B") + self.d_loss(self.D_X, y, x, fake_x, "fake_A")
        self.amp.update("D", losses["D"])
        return {k: v.detach() for k, v in losses.items()}

    def d_loss(self, D, x, real, fake, pool):
        """D's side of Eq. (7), halved: real [x, y] against [x, G(x')] (supervised), or real y against a fake from
        the pool (unsupervised)."""
        if self.supervised:
            return lsgan_d(lambda xy: D(xy)[0], torch.cat([x, real], 1), torch.cat([x, fake.detach()], 1))
        return lsgan_d(lambda z: D(z)[0], real, self.pools[pool].query(fake))

    # --- Inference --------------------------------------------------------------------------------------------
    def translate(self, x, direction="A2B"):
        """Eq. (1) as in training: (y1, M); (G(x), None) without attention."""
        G, D = (self.G_X, self.D_Y) if direction == "A2B" else (self.G_Y, self.D_X)
        if self.attention == "none":
            return self.unguided(G, x), None
        _, _, M, y1 = self.eq1(G, D, x)
        return y1, M


def add_arguments(parser):
    def arg(flag, type, help):
        add_default(parser, DEFAULTS, flag, type, help)
    parser.add_argument("--mode", choices=("supervised", "unsupervised"), default="supervised",
                        help="supervised: pix2pix on paired data, Eq. 9 (Table 2); unsupervised: CycleGAN, Eq. 11 "
                             "(Table 1) (default supervised)")
    parser.add_argument("--attention", choices=("posthoc", "ram", "none"), default="posthoc",
                        help="the discriminator's attention: post hoc, Eq. 2; RAM, Eq. 3; none: plain pix2pix / "
                             "CycleGAN (default posthoc: §4.1's best)")
    parser.add_argument("--concat", choices=("residual", "rgba"), default="residual",
                        help="how the map joins the input: (M + 1)·x, Eq. 4; or an alpha channel, Eq. 5 "
                             "(default residual: §4.1's best)")
    arg("--ngf", int, "generator base channels")
    arg("--ndf", int, "discriminator base channels")
    parser.add_argument("--n_res", type=int, default=None, help="residual blocks of the unsupervised generators "
                        "(default: 6 below 256 px, 9 at 256 and above: Appendix A)")
    arg("--adv_weight", float, "weight of G's adversarial loss")
    arg("--l1_weight", float, "weight of the L1 loss (supervised) or the cycle loss (unsupervised)")
    arg("--pool_size", int, "fakes each discriminator's history holds (unsupervised)")
    add_bool(parser, "--dropout", True, "dropout 0.5 in the U-Net's inner levels, as pix2pix")


def make_model(args, device):
    return GuideGAN(args, device)


if __name__ == "__main__":
    main("guidegan", __doc__.split("\n\n")[0], DEFAULTS, CPU_PRESET, add_arguments, make_model)
