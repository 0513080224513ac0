"""U-GAT-IT: Unsupervised Generative Attentional Networks with Adaptive Layer-Instance Normalization for
Image-to-Image Translation. Junho Kim, Minjae Kim, Hyeonwoo Kang, Kwanghee Lee. ICLR 2020, arXiv:1907.10830.

The idea. Two CycleGAN-style generators and discriminators, each with an attention module taken from CAM: an
auxiliary classifier η (global average and max pooling, then one weight per feature map) learns which feature maps
tell the domains apart, and its weights re-weight the feature maps, a(x) = w * E(x), before decoding (generator) or
classifying (discriminator). The decoder normalises with AdaLIN, a learned per-channel mix ρ of instance and layer
normalisation whose affine γ, β come from the attention features, so the model itself chooses how much shape (LN)
and how much texture (IN) to change. Two discriminators per domain see local (70 px) and global (286 px) patches.

Map of the paper to this file:
    §2.1.1 CAM of the generator, η_s, a_s(x) = w_s * E_s(x)   CAM, Generator.forward
    Eq. (1)  AdaLIN, LIN, ρ ← clip[0,1](ρ − τΔρ)              AdaLIN, LIN (kernels/adalin.py), clip_rho
    §2.1.2 discriminator with its own CAM, η_Dt, C_Dt           Discriminator
    Eq. (2)  L_lsgan (LSGAN, real → 1, fake → 0)                UGATIT.train_step
    Eq. (3)  L_cycle, Eq. (4) L_identity                        UGATIT.train_step
    Eq. (5)  L_cam of the generator (BCE on η_s)                UGATIT.train_step
    Eq. (6)  L_cam of the discriminator (LSGAN on η_Dt)          UGATIT.train_step
    Eq. (7)  λ1 = 1, λ2 = 10, λ3 = 10, λ4 = 1000                DEFAULTS (--adv/cycle/identity/cam_weight)
    Tables 4-6 architectures; Table 1 ablations                Generator, Discriminator; --norm, --gen_cam, --dis_cam
    §B.2 Adam(1e-4, 0.5, 0.999), weight decay 1e-4, N(0, 0.02) init, decay over the second half of 1M iterations

Where the paper and the authors' PyTorch code (UGATIT-pytorch, b8c4251) differ, the comments say which we follow.
Their checkpoints load with --weights (see AUTHORS_KEYS).
"""
import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.amp import Precision
from common.blocks import InstanceNorm2d, ResnetBlock, SNConv2d, SNLinear, conv, init_normal, lsgan
from common.train import UsageError, add_bool, add_default, load_checkpoint, load_nets, main, our_nets
from kernels.adalin import adalin

# --- Defaults: the paper's hyperparameters (flag -> (value, source)) ------------------------------------------
DEFAULTS = {
    "iteration": (1_000_000, "§B.2: lr 1e-4 until 500k, then linear decay up to 1M"),
    "batch_size": (1, "§B.2"),
    "print_freq": (1000, "authors' code"),
    "save_freq": (100_000, "authors' code"),
    "decay_flag": (True, "§B.2"),
    "lr": (1e-4, "§B.2"),
    "weight_decay": (1e-4, "§B.2"),
    "img_size": (256, "§B.2: resize 286, random crop 256"),
    "adv_weight": (1.0, "λ1, Eq. 7"),
    "cycle_weight": (10.0, "λ2, Eq. 7"),
    "identity_weight": (10.0, "λ3, Eq. 7"),
    "cam_weight": (1000.0, "λ4, Eq. 7"),
    "ch": (64, "Table 4"),
    "n_res": (4, "Table 4"),
    "n_dis": (6, "Table 6: 6 conv layers in the global discriminator, 4 in the local (authors' TF code's n_dis)"),
}
# `python ugatit.py` with no --dataset: the embedded shapes at a size a 2-core CPU trains in minutes.
CPU_PRESET = dict(img_size=64, ch=16, light=True, n_dis=5, iteration=2000, print_freq=200, save_freq=500)
# Table 1's rows for benchmarks/ablation.py: row -> the flags that make it, the full model first. "w/o CAM" is the
# no-attention row.
ABLATIONS = {"Table 1": {
    "U-GAT-IT": [],
    "w/ IN": ["--norm", "in"],
    "w/ LN": ["--norm", "ln"],
    "w/ AdaIN": ["--norm", "adain"],
    "w/ GN": ["--norm", "gn"],
    "w/o CAM": ["--gen_cam", "False", "--dis_cam", "False"],
    "w/o G_CAM": ["--gen_cam", "False"],
    "w/o D_CAM": ["--dis_cam", "False"],
}}


# --- Networks -------------------------------------------------------------------------------------------------

class AdaLIN(nn.Module):
    """Eq. (1) with γ, β from the MLP. ρ starts at 1 in the residual blocks of the decoder (§2.1.1; the authors'
    PyTorch code starts it at 0.9, their TF code at 1.0 — we follow the paper)."""

    def __init__(self, C):
        super().__init__()
        self.rho = nn.Parameter(torch.ones(1, C, 1, 1))

    def forward(self, x, gamma, beta):
        return adalin(x, self.rho, gamma, beta)


class LIN(nn.Module):
    """Eq. (1) with γ, β learned per channel; ρ starts at 0 in the up-sampling blocks (§2.1.1)."""

    def __init__(self, C):
        super().__init__()
        self.rho = nn.Parameter(torch.zeros(1, C, 1, 1))
        self.gamma = nn.Parameter(torch.ones(1, C, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, C, 1, 1))

    def forward(self, x):
        return adalin(x, self.rho, self.gamma, self.beta)


class PlainNorm(nn.Module):
    """Table 1's other decoders: IN, LN or GN in place of AdaLIN/LIN; AdaIN = IN with the MLP's γ, β."""

    def __init__(self, kind, C, affine):
        super().__init__()
        groups = {"in": C, "adain": C, "ln": 1, "gn": math.gcd(32, C)}[kind]  # GN: 32 groups (Wu & He)
        self.norm = nn.GroupNorm(groups, C, affine=affine)  # GroupNorm(C, C) is IN; GroupNorm(1, C) is LN
        self.adaptive = kind == "adain"

    def forward(self, x, gamma=None, beta=None):
        x = self.norm(x)
        return x * gamma[:, :, None, None] + beta[:, :, None, None] if self.adaptive else x


class ResnetAdaLINBlock(nn.Module):
    """Decoder bottleneck (Table 4, AdaResBlock): x + [conv3, AdaLIN, ReLU, conv3, AdaLIN](x), one γ, β for all."""

    def __init__(self, C, norm):
        super().__init__()
        make = (lambda: AdaLIN(C)) if norm == "adalin" else (lambda: PlainNorm(norm, C, affine=False))
        self.pad1, self.conv1, self.norm1 = nn.ReflectionPad2d(1), nn.Conv2d(C, C, 3, bias=False), make()
        self.pad2, self.conv2, self.norm2 = nn.ReflectionPad2d(1), nn.Conv2d(C, C, 3, bias=False), make()

    def forward(self, x, gamma, beta):
        h = F.relu(self.norm1(self.conv1(self.pad1(x)), gamma, beta))
        return x + self.norm2(self.conv2(self.pad2(h)), gamma, beta)


class CAM(nn.Module):
    """The attention module (§2.1.1, §2.1.2). η(x) = σ(Σ_k w^k · pool(E^k(x))) for global average and global max
    pooling, two logits; a(x) = w * E(x) for both weight vectors, concatenated, then a 1×1 conv back to C maps.
    The heatmap is the channel sum of a(x). In the discriminator the two classifiers carry spectral norm and the
    re-weighting uses the same normalised w the logits use (the paper's w_Dt; the authors' code multiplies by the
    un-normalised weight instead)."""

    def __init__(self, C, activation, sn=False):
        super().__init__()
        linear = SNLinear if sn else nn.Linear
        self.gap_fc, self.gmp_fc = linear(C, 1, bias=False), linear(C, 1, bias=False)
        self.conv1x1 = nn.Conv2d(2 * C, C, 1)
        self.activation = activation

    def forward(self, e):
        w_gap, w_gmp = (fc.normalized_weight() if isinstance(fc, SNLinear) else fc.weight
                        for fc in (self.gap_fc, self.gmp_fc))
        cam_logit = torch.cat([e.mean((2, 3)) @ w_gap.t(), e.amax((2, 3)) @ w_gmp.t()], 1)
        a = self.activation(self.conv1x1(torch.cat([e * w_gap[:, :, None, None], e * w_gmp[:, :, None, None]], 1)))
        return a, cam_logit, a.sum(1, keepdim=True)


def attend(cam, e):
    """(a(x), η logits, heatmap); without a CAM (Table 1's ablations) the features pass on unchanged."""
    return cam(e) if cam is not None else (e, None, None)


class Generator(nn.Module):
    """Table 4. G_{s→t}: encoder E_s (IN), CAM η_s, MLP for γ, β, decoder G_t (AdaLIN residual blocks, LIN
    up-sampling). `light` feeds the MLP the globally pooled a(x) instead of all of it (authors' light mode; the
    full MLP's first layer has (S/4)²·4ch inputs, 268M weights at 256 px)."""

    def __init__(self, ch=64, n_res=4, img_size=256, light=False, norm="adalin", gen_cam=True):
        super().__init__()
        C = 4 * ch
        self.light = light
        self.encoder = nn.Sequential(
            *conv(3, ch, 7, bias=False), InstanceNorm2d(ch), nn.ReLU(True),
            *conv(ch, 2 * ch, 3, 2, bias=False), InstanceNorm2d(2 * ch), nn.ReLU(True),
            *conv(2 * ch, C, 3, 2, bias=False), InstanceNorm2d(C), nn.ReLU(True),
            *[ResnetBlock(C, bias=False) for _ in range(n_res)])
        self.cam = CAM(C, nn.ReLU(True)) if gen_cam else None
        if norm in ("adalin", "adain"):
            mlp_in = C if light else (img_size // 4) ** 2 * C
            # Table 4 lists three MLP-(N256), ReLU layers; the third is the γ and β heads, linear as in the authors'
            # code (a ReLU there would keep β ≥ 0 and γ ≥ 0).
            self.mlp = nn.Sequential(nn.Linear(mlp_in, C, bias=False), nn.ReLU(True),
                                     nn.Linear(C, C, bias=False), nn.ReLU(True))
            self.gamma, self.beta = nn.Linear(C, C, bias=False), nn.Linear(C, C, bias=False)
        else:
            self.mlp = None
        # Up-sampling blocks have no γ, β from the MLP: LIN's learned ones, or IN/LN/GN with a learned affine (AdaIN's
        # row uses IN there).
        up_kind = "in" if norm == "adain" else norm
        up_norm = LIN if norm == "adalin" else (lambda c: PlainNorm(up_kind, c, affine=True))
        self.bottleneck = nn.ModuleList(ResnetAdaLINBlock(C, norm) for _ in range(n_res))
        self.upsampling = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), *conv(C, C // 2, 3, bias=False), up_norm(C // 2),
            nn.ReLU(True),
            nn.Upsample(scale_factor=2, mode="nearest"), *conv(C // 2, C // 4, 3, bias=False), up_norm(C // 4),
            nn.ReLU(True),
            *conv(C // 4, 3, 7, bias=False), nn.Tanh())
        init_normal(self)

    def forward(self, x):
        a, cam_logit, heatmap = attend(self.cam, self.encoder(x))
        gamma = beta = None
        if self.mlp is not None:
            h = self.mlp(a.mean((2, 3)) if self.light else a.flatten(1))
            gamma, beta = self.gamma(h), self.beta(h)
        for block in self.bottleneck:
            a = block(a, gamma, beta)
        return self.upsampling(a), cam_logit, heatmap


class Discriminator(nn.Module):
    """Tables 5 and 6: encoder E_Dt (4×4 convs with spectral norm, LeakyReLU 0.2), CAM η_Dt, classifier C_Dt.
    n_convs = 6 gives the global discriminator (286 px receptive field at 256 px), 4 the local one (70 px).
    Below 96 px the released code crashes (the global map shrinks to nothing); here the encoder stops halving
    once the map is 3×3, so every --img_size from 32 up works and 96 px and up is unchanged."""

    def __init__(self, n_convs, img_size=256, ch=64, dis_cam=True):
        super().__init__()
        n_down = min(n_convs - 1, int(math.log2(img_size / 3)))
        layers, c = [*conv(3, ch, 4, 2, layer=SNConv2d), nn.LeakyReLU(0.2, True)], ch
        for _ in range(n_down - 1):
            layers += [*conv(c, 2 * c, 4, 2, layer=SNConv2d), nn.LeakyReLU(0.2, True)]
            c *= 2
        layers += [*conv(c, 2 * c, 4, 1, layer=SNConv2d), nn.LeakyReLU(0.2, True)]
        self.encoder = nn.Sequential(*layers)
        self.cam = CAM(2 * c, nn.LeakyReLU(0.2, True), sn=True) if dis_cam else None
        self.classifier = nn.Sequential(*conv(2 * c, 1, 4, 1, bias=False, layer=SNConv2d))
        init_normal(self)

    def forward(self, x):
        a, cam_logit, heatmap = attend(self.cam, self.encoder(x))
        return self.classifier(a), cam_logit, heatmap


def clip_rho(net):
    """Eq. (1), third line: ρ ← clip_[0,1](ρ − τΔρ), i.e. clamp after every optimizer step."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (AdaLIN, LIN)):
                m.rho.clamp_(0, 1)


# --- Losses and the training step -------------------------------------------------------------------------------

class UGATIT:
    attention_scale = "unbounded"  # the CAM heatmap, a sum of ReLU features (common.metrics)

    def __init__(self, args, device):
        g = dict(ch=args.ch, n_res=args.n_res, img_size=args.img_size, light=args.light, norm=args.norm,
                 gen_cam=args.gen_cam)
        d = dict(img_size=args.img_size, ch=args.ch, dis_cam=args.dis_cam)
        self.genA2B, self.genB2A = Generator(**g).to(device), Generator(**g).to(device)
        self.disGA, self.disGB = (Discriminator(args.n_dis, **d).to(device) for _ in "AB")      # global
        self.disLA, self.disLB = (Discriminator(args.n_dis - 2, **d).to(device) for _ in "AB")  # local
        self.nets = dict(genA2B=self.genA2B, genB2A=self.genB2A, disGA=self.disGA, disGB=self.disGB,
                         disLA=self.disLA, disLB=self.disLB)
        if args.weights:
            self.load_weights(args.weights)
        # §B.2: Adam β = (0.5, 0.999), weight decay 1e-4 (as L2 in the gradient, as the authors' torch.optim.Adam).
        adam = dict(lr=args.lr, betas=(0.5, 0.999), weight_decay=args.weight_decay,
                    fused=device.type in ("cpu", "cuda"))  # one kernel for all parameters where torch has it
        self.optimizers = {name: torch.optim.Adam(net.parameters(), **adam) for name, net in self.nets.items()
                           if name.startswith("dis")}
        self.optimizers["G"] = torch.optim.Adam([*self.genA2B.parameters(), *self.genB2A.parameters()], **adam)
        self.amp = Precision(args.amp, device, self.optimizers)  # --amp (common.amp)
        self.w = dict(adv=args.adv_weight, cycle=args.cycle_weight, identity=args.identity_weight,
                      cam=args.cam_weight)

    def load_weights(self, path):
        """Start from a checkpoint: one of ours, or the authors' (keys renamed by AUTHORS_KEYS)."""
        state = load_checkpoint(path)
        nets = our_nets(state)
        if nets is None and isinstance(state, dict) and state and all(isinstance(v, dict) for v in state.values()):
            nets = {k: from_authors(v) for k, v in state.items()}
        if nets is None:
            raise UsageError(f"--weights {path}: neither one of our checkpoints nor the authors' *_params_*.pt (a "
                             f"dict of the six networks' state dicts)")
        load_nets(self.nets, nets, path)

    def d_loss(self, D, real, fake):
        """For one discriminator: Eq. (2) on its patch logits and Eq. (6) on its CAM logits, both LSGAN with
        real → 1, fake → 0 (the paper prints Eq. 2 and 6 with the targets swapped, real → 0, fake → 1; the
        authors' code uses real → 1). Real and fake go through D as one batch, at the cost of one pass: D has no
        batch statistics, so the logits are those of two passes, except that spectral norm takes one power-iteration
        step per forward, one per D update here and two in the authors' code (D(real), then D(fake)). How much σ's
        estimate differs is measured with benchmarks/probes/sn_passes.py (docs/ugatit.md, "Investigations")."""
        logit, cam, _ = D(torch.cat([real, fake]))
        n = len(real)
        loss = lsgan(logit[:n], 1) + lsgan(logit[n:], 0)
        if cam is not None:
            loss = loss + lsgan(cam[:n], 1) + lsgan(cam[n:], 0)
        return loss

    def g_adv(self, D, fake):
        """The generator's side of Eq. (2) and Eq. (6): make D call the fake real."""
        logit, cam, _ = D(fake)
        return lsgan(logit, 1) + (lsgan(cam, 1) if cam is not None else 0)

    def cam_loss(self, logit, target):
        """Eq. (5), one term: binary cross-entropy on η_s's two logits; 0 without G's CAM (Table 1)."""
        if logit is None:
            return torch.zeros(())
        return F.binary_cross_entropy_with_logits(logit, torch.full_like(logit, float(target)))

    def train_step(self, real_A, real_B):
        """One iteration: the discriminators' update, then the generators'. The paper writes one direction, s → t,
        "and vice versa"; the loops run both: (x_s, x_t, G_s→t, G_t→s, D_t's global and local discriminators)."""
        w = self.w
        directions = [(real_A, real_B, self.genA2B, self.genB2A, ("disGB", "disLB")),
                      (real_B, real_A, self.genB2A, self.genA2B, ("disGA", "disLA"))]
        losses = dict.fromkeys(("D", "G_adv", "G_cycle", "G_identity", "G_cam"), 0.0)

        # Discriminators maximise Eq. (7), on fakes made without a graph: the released code back-propagates this
        # loss through both generators as well, for nothing. Each discriminator's loss reaches only its own
        # weights, so each takes its own Adam step, and one discriminator's gradients are alive at a time.
        for x_s, x_t, G_st, _, D_t in directions:
            with torch.no_grad():
                x_st = G_st(x_s)[0]
            for name in D_t:
                loss = w["adv"] * self.d_loss(self.nets[name], x_t, x_st)
                self.amp.update(name, loss)
                losses["D"] += loss.detach()

        # Generators minimise Eq. (7), in one backward pass per group of terms: the gradients add up to those of
        # the whole sum, and each group's generator graphs are freed before the next is built (peak memory: two
        # generator graphs, a translation and its cycle, not all six). D's weights need no gradient here.
        for D in (self.disGA, self.disGB, self.disLA, self.disLB):
            D.requires_grad_(False)
        for _, x_t, G_st, _, _ in directions:
            x_tt, cam_tt, _ = G_st(x_t)
            identity = F.l1_loss(x_tt, x_t)                                    # Eq. (4)
            cam = self.cam_loss(cam_tt, 0)                                     # Eq. (5): η_s(x_t) → 0
            self.amp.backward("G", w["identity"] * identity + w["cam"] * cam)
            losses["G_identity"] += identity.detach()
            losses["G_cam"] += cam.detach()
        for x_s, x_t, G_st, G_ts, D_t in directions:
            x_st, cam_st, _ = G_st(x_s)
            cycle = F.l1_loss(G_ts(x_st)[0], x_s)                               # Eq. (3)
            adv = sum(self.g_adv(self.nets[name], x_st) for name in D_t)      # Eq. (2) and (6)
            cam = self.cam_loss(cam_st, 1)                                     # Eq. (5): η_s(x_s) → 1
            # Eq. (7). λ1 weighs both adversarial terms (Eq. 2 and 6) and λ4 only Eq. (5), as in the authors' code;
            # reading the paper's L_cam as both would scale D's CAM terms by 1000.
            self.amp.backward("G", w["adv"] * adv + w["cycle"] * cycle + w["cam"] * cam)
            losses["G_adv"] += adv.detach()
            losses["G_cycle"] += cycle.detach()
            losses["G_cam"] += cam.detach()
        for D in (self.disGA, self.disGB, self.disLA, self.disLB):
            D.requires_grad_(True)
        self.amp.step("G")
        clip_rho(self.genA2B)
        clip_rho(self.genB2A)

        losses["G"] = (w["adv"] * losses["G_adv"] + w["cycle"] * losses["G_cycle"]
                       + w["identity"] * losses["G_identity"] + w["cam"] * losses["G_cam"])
        if self.genA2B.cam is None:
            del losses["G_cam"]
        return losses

    # --- Inference --------------------------------------------------------------------------------------------
    def translate(self, x, direction="A2B"):
        """The translated image and the generator's CAM heatmap (None without G's CAM)."""
        image, _, heatmap = (self.genA2B if direction == "A2B" else self.genB2A)(x)
        return image, heatmap


def add_arguments(parser):
    def arg(flag, type, help):
        add_default(parser, DEFAULTS, flag, type, help)
    add_bool(parser, "--light", False, "light model: the γ/β MLP sees the pooled attention features (authors' code)")
    arg("--adv_weight", float, "λ1, adversarial terms")
    arg("--cycle_weight", float, "λ2, cycle loss")
    arg("--identity_weight", float, "λ3, identity loss")
    arg("--cam_weight", float, "λ4, generator CAM loss")
    arg("--ch", int, "base channels (encoder 1×, 2×, 4×)")
    arg("--n_res", int, "residual blocks in the encoder and in the decoder")
    arg("--n_dis", int, "conv layers of the global discriminator (the local one has 2 fewer)")
    parser.add_argument("--norm", choices=("adalin", "in", "ln", "adain", "gn"), default="adalin",
                        help="decoder normalisation, Table 1 rows (default adalin: the paper's model)")
    add_bool(parser, "--gen_cam", True, "the generator's CAM (False: Table 1, w/o G_CAM)")
    add_bool(parser, "--dis_cam", True, "the discriminators' CAM (False: Table 1, w/o D_CAM)")
    parser.add_argument("--weights", default=None, help="start from these weights: one of our checkpoints or the "
                        "authors' UGATIT-pytorch *_params_*.pt (keys renamed, see AUTHORS_KEYS)")


def make_model(args, device):
    if args.n_dis < 3:
        raise UsageError(f"--n_dis {args.n_dis}: use 3 or more (the local discriminator has n_dis − 2 convs)")
    return UGATIT(args, device)


# --- The authors' checkpoints -----------------------------------------------------------------------------------
# UGATIT-pytorch saves {genA2B, genB2A, disGA, disGB, disLA, disLB}. Their key -> ours: every rule that matches
# is applied in turn, a prefix and then maybe a suffix. Spectral norm: their torch.nn.utils.spectral_norm stores
# weight_orig, weight_u, weight_v; ours stores weight, weight_u, weight_v, with the same meaning.
AUTHORS_KEYS = [
    (r"^DownBlock\.", "encoder."), (r"^FC\.", "mlp."), (r"^UpBlock1_(\d+)\.", "bottleneck.{}."),
    (r"^UpBlock2\.", "upsampling."), (r"^(gap_fc|gmp_fc|conv1x1)\.", "cam.{}."),
    (r"^model\.", "encoder."), (r"^conv\.", "classifier.1."),
    (r"\.weight_orig$", ".weight"),
]


def from_authors(state_dict):
    """Rename one of their state dicts to our keys (several rules may apply: a prefix, then a suffix)."""
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in AUTHORS_KEYS:
            m = re.search(pattern, key)
            if m:
                groups = [str(int(g) - 1) if g.isdigit() else g for g in m.groups()]  # UpBlock1_1 -> bottleneck.0
                key = key[:m.start()] + replacement.format(*groups) + key[m.end():]
        out[key] = value
    return out


if __name__ == "__main__":
    main("ugatit", __doc__.split("\n\n")[0], DEFAULTS, CPU_PRESET, add_arguments, make_model)
