"""Unsupervised Attention-guided Image-to-Image Translation. Youssef A. Mejjati, Christian Richardt, James Tompkin,
Darren Cosker, Kwang In Kim. NeurIPS 2018, arXiv:1806.02311.

The idea. CycleGAN's generator F_ST repaints the whole image, background included. Here an attention network A_S
looks at the same input s and outputs a map s_a in [0, 1]; the translation keeps F_ST(s) where the map is high and
the input where it is low, s' = s_a·F_ST(s) + (1 − s_a)·s. No mask is ever given: the only way to fool D_T is to
attend to what makes a horse a horse, so A_S learns where the object is from the adversarial loss alone. The same
holds from T to S with F_TS and A_T, and the way back of the cycle uses the other direction's attention, A_T(s').
Training has two stages (Algorithm 1): for the first 30 of 100 epochs everything trains and the discriminators see
whole images; then the attention networks are frozen and the discriminators see only the attended pixels (the map
thresholded at τ, without instance norm), so they judge the object, not the meadow it stands in.

Map of the paper to this file:
    Eq. (1)  s' = s_a·F_ST(s) + (1 − s_a)·s                     map_to (kernels/blend.py: blend)
    §3.1     s'' from s' with F_TS and A_T(s')                  UAIT.back
    Eq. (2)  L_adv, as LSGAN (Appendix A); D's side halved      UAIT.train_step, UAIT.d_loss
    Eq. (3)  L_cyc = ‖s − s''‖₁                                 UAIT.train_step
    Eq. (4)  L_adv^s + L_adv^t + λ_cyc (L_cyc^s + L_cyc^t)      UAIT.train_step, --cycle_weight (λ_cyc 10)
    Eq. (5)  min over F and A, max over D                       UAIT.train_step: F and A first, then D
    Eq. (6)  t_new, s'_new: the pixels whose attention > τ      d_input, --tau (τ 0.1), --masked_fake
    Eq. (7)  L_adv on t_new and s'_new                          UAIT.train_step, in stage 2
    Algorithm 1, §3.2: stage 2 from epoch 30 of 100             UAIT.set_stage, --switch_epoch
    Appendix A: F, A, D                                         generator, AttentionNet, common.blocks.PatchGAN
    Table 2 ablations                                           --cycle, --cycle_att, --A_S, --A_T, --masked_D,
                                                                --freeze_A

Domains: A is S (source), B is T (target). --A_S False --A_T False --masked_D False is CycleGAN (an all-ones map,
§3.1, and whole-image discriminators with instance norm throughout): the baseline without attention. Where the
paper and the authors' TensorFlow code differ, the comments say which we follow.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.amp import Precision
from common.blocks import (ImagePool, PatchGAN, ResnetBlock, conv, init_normal, lsgan, lsgan_d, resnet_decoder,
                           resnet_encoder)
from common.train import UsageError, add_bool, add_default, main
from kernels.blend import blend

# --- Defaults: the paper's hyperparameters (flag -> (value, source)) ------------------------------------------
DEFAULTS = {
    "epochs": (100, "§4 / authors' code: 100 epochs for horse2zebra, apple2orange, lion2tiger"),
    "iteration": (None, "--epochs × the larger training set / --batch_size"),
    "batch_size": (1, "authors' code"),
    "print_freq": (1000, "our choice"),
    "save_freq": (10_000, "our choice"),
    "decay_flag": (True, "authors' code: constant for the first half, then linear to 0"),
    "lr": (1e-4, "authors' code for horse2zebra/apple2orange/lion2tiger; the paper gives no value"),
    "weight_decay": (0.0, "not used"),
    "img_size": (256, "§4: 256 px"),
    "cycle_weight": (10.0, "λ_cyc, Eq. 4"),
    "ch": (32, "Appendix: generator c7s1-32"),
    "n_res": (9, "Appendix: 9 residual blocks"),
    "ndf": (64, "Appendix: discriminator c4s2-64"),
    "switch_epoch": (30, "§3.2, Algorithm 1"),
    "tau": (0.1, "τ, Eq. 6"),
    "pool_size": (50, "CycleGAN's image pool; authors' code pools (fake, mask) pairs"),
    "masked_fake": ("composite", "authors' code: stage 2's D_T sees s' where A_S(s) > τ (§3.2's text); Eq. 6 prints "
                                 "F_ST(s)"),
}
# `python uait.py` with no --dataset: the embedded shapes at a size a 2-core CPU trains in minutes. The switch comes
# at 60% of them, not the paper's 30%: the maps are still soft at 30% and would freeze where they are
# (docs/uait.md, "The switch and the threshold").
CPU_PRESET = dict(img_size=64, ch=16, n_res=3, iteration=2000, print_freq=200, save_freq=500, switch_epoch=60)
# Table 2's rows for benchmarks/ablation.py: row -> the flags that make it, the full model first; "CycleGAN" is the
# no-attention row (all-ones maps, whole-image discriminators: §3.1).
ABLATIONS = {"Table 2": {
    "Ours": [],
    "Ours-cycle": ["--cycle", "False"],
    "Ours-cycleAtt": ["--cycle_att", "False"],
    "Ours-A_S": ["--A_S", "False"],
    "Ours-A_T": ["--A_T", "False"],
    "Ours-D": ["--masked_D", "False"],
    "Ours-D-A": ["--masked_D", "False", "--freeze_A", "False"],
    "CycleGAN": ["--A_S", "False", "--A_T", "False", "--masked_D", "False"],
}}


# --- Networks -------------------------------------------------------------------------------------------------

def generator(ch, n_res):
    """F_ST, F_TS, CycleGAN's generator; Appendix A with ch = 32, n_res = 9: c7s1-32-R, c3s2-64-R, c3s2-128-R,
    9 × r128, tc64s2, tc32s2, c7s1-3-T. The appendix writes the last layer as c3s1-3; the released code (and
    CycleGAN) use 7×7, as here. The residual blocks are CycleGAN's (reflection padding, no ReLU after the sum);
    the released TF code zero-pads the generator's and applies a ReLU after the sum."""
    return nn.Sequential(*resnet_encoder(3, ch, n_res), *resnet_decoder(ch, 3, 7), nn.Tanh())


class AttentionNet(nn.Sequential):
    """A_S, A_T; Appendix A with ch = 32: c7s2-32-R, c3s2-64-R, r64, up2, c3s1-64-R, up2, c3s1-32-R, c7s1-1-S,
    instance norm after every layer but the last, nearest-neighbour up2. Output N×1×H×W in [0, 1].
    The appendix strides the first conv by 1, but then two up2 after one stride-2 conv would return 2H×2W: the
    released code strides it by 2, as here. Their code runs the last three convs as 1×1 (an argument slip): we use
    the appendix's 3×3, 3×3, 7×7."""

    def __init__(self, ch):
        def layer(c_in, c_out, kernel, stride=1):
            return [*conv(c_in, c_out, kernel, stride), nn.InstanceNorm2d(c_out), nn.ReLU(True)]
        super().__init__(*layer(3, ch, 7, 2), *layer(ch, 2 * ch, 3, 2), ResnetBlock(2 * ch),
                         nn.Upsample(scale_factor=2, mode="nearest"), *layer(2 * ch, 2 * ch, 3),
                         nn.Upsample(scale_factor=2, mode="nearest"), *layer(2 * ch, ch, 3),
                         *conv(ch, 1, 7), nn.Sigmoid())


def attend(A, x):
    """A(x), or all ones where Table 2 removes the network (Ours−A_S, Ours−A_T): with an all-ones map Eq. (1) is
    CycleGAN's F(x) (§3.1)."""
    return A(x) if A is not None else x.new_ones(len(x), 1, *x.shape[2:])


def map_to(F_xy, A_x, x):
    """Eq. (1): x' = x_a·F(x) + (1 − x_a)·x with x_a = A(x). Returns x', x_a and F(x), the generator's own
    output."""
    x_a, content = attend(A_x, x), F_xy(x)
    return blend(x, content, x_a), x_a, content


def d_input(image, mask, masked, tau):
    """What a discriminator sees of an image and its attention map. Stage 1: the whole image (§3.2). Stage 2,
    Eq. (6): only the pixels whose attention exceeds τ, a hard mask, so that D never learns that fractional grey is
    real. (The authors' code keeps attention ≥ τ; the two differ only where a map equals τ exactly.)"""
    return torch.where(mask > tau, image, 0.0) if masked else image


# --- Losses and the training step -------------------------------------------------------------------------------

class UAIT:
    attention_scale = "probability"  # A_S, A_T end in a sigmoid (common.metrics)

    def __init__(self, args, device):
        # Instance norms without a learned scale and offset (common.blocks, as CycleGAN's PyTorch code; the authors'
        # TF code learns them).
        self.F_ST, self.F_TS = generator(args.ch, args.n_res).to(device), generator(args.ch, args.n_res).to(device)
        # The attention nets share --ch with the generators: both start at 32 channels in Appendix A.
        self.A_S = AttentionNet(args.ch).to(device) if args.A_S else None
        self.A_T = AttentionNet(args.ch).to(device) if args.A_T else None
        # Appendix A: CycleGAN's PatchGAN, c4s2-64-LR, c4s2-128-LR, c4s2-256-LR, c4s1-512-LR, c4s1-1 (at --ndf 64),
        # with instance norm "everywhere apart from the last layer", the first included (as the authors' code;
        # CycleGAN's own leaves the first layer unnormalised).
        self.D_S, self.D_T = (PatchGAN(3, args.ndf, norm_first=True).to(device) for _ in "ST")
        nets = dict(F_ST=self.F_ST, F_TS=self.F_TS, A_S=self.A_S, A_T=self.A_T, D_S=self.D_S, D_T=self.D_T)
        self.nets = {name: net for name, net in nets.items() if net is not None}
        for net in self.nets.values():
            init_normal(net)  # N(0, 0.02), as CycleGAN
        adam = dict(lr=args.lr, betas=(0.5, 0.999), weight_decay=args.weight_decay,
                    fused=device.type in ("cpu", "cuda"))  # one kernel for all parameters where torch has it
        self.optimizers = {
            "G": torch.optim.Adam([p for k, net in self.nets.items() if k[0] in "FA" for p in net.parameters()],
                                  **adam),
            "D": torch.optim.Adam([*self.D_S.parameters(), *self.D_T.parameters()], **adam)}
        self.amp = Precision(args.amp, device, self.optimizers)  # --amp (common.amp)
        # One history per discriminator, of (fake, attention map) pairs stacked as 4 channels, as the authors pool
        # (fake, mask): the map masks the fake when it is drawn again in stage 2.
        self.pools = {"S": ImagePool(args.pool_size), "T": ImagePool(args.pool_size)}
        self.switch = args.switch_epoch / args.epochs  # Algorithm 1's epoch 30 as a fraction of the run
        self.tau, self.cycle_weight = args.tau, args.cycle_weight
        self.cycle, self.cycle_att = args.cycle, args.cycle_att
        # Eq. (6) masks D_T's real t with A_T(t) and its fake with A_S(s) (D_S likewise): without one of the two
        # networks (Ours−A_S, Ours−A_T) a masked D would see a black background on one side only and tell real
        # from fake by that alone, so both discriminators keep whole images, as in Ours−D.
        self.masked_D = args.masked_D and args.A_S and args.A_T
        self.freeze_A, self.masked_fake = args.freeze_A, args.masked_fake
        self.progress = 0.0

    def set_stage(self):
        """Algorithm 1: stage 2 from epoch `switch_epoch` on. From then A_S and A_T stop training (their gradients
        stay None, so Adam skips them) and D sees Eq. (6)'s masked images without instance norm (Appendix A: the
        zeros of the background must not shift its statistics). Set at every step from the progress alone, so that
        a resumed run is in the right stage. Returns whether D sees masked images."""
        stage2 = self.progress >= self.switch
        for A in (self.A_S, self.A_T):
            if A is not None:
                A.requires_grad_(not (stage2 and self.freeze_A))
        masked = stage2 and self.masked_D
        self.D_S.normalize = self.D_T.normalize = not masked
        return masked

    def back(self, x_prime, x_a, F_yx, A_y):
        """§3.1: x'' from x' as Eq. (1) does, with the inverse mapping and the other direction's attention A_y(x').
        Ours−cycleAtt (Table 2) reuses x_a = A_x(x) instead."""
        a = attend(A_y, x_prime) if self.cycle_att else x_a
        return blend(x_prime, F_yx(x_prime), a)

    def d_loss(self, D, pool, real, real_a, fake, fake_a, masked):
        """D's side of Eq. (2), or of Eq. (7) in stage 2: LSGAN, real → 1, fake → 0, halved (CycleGAN, and the
        authors' code), on a fake drawn from the history."""
        pair = pool.query(torch.cat([fake, fake_a], 1))
        return lsgan_d(D, d_input(real, real_a, masked, self.tau),
                       d_input(pair[:, :3], pair[:, 3:], masked, self.tau))

    def train_step(self, s, t):
        """One iteration of Algorithm 1, both directions: F_ST, F_TS, A_S, A_T take one step on Eq. (4), then D_S
        and D_T one step on fakes made before it (CycleGAN's order)."""
        masked = self.set_stage()
        s_prime, s_a, F_s = map_to(self.F_ST, self.A_S, s)  # Eq. (1)
        t_prime, t_a, F_t = map_to(self.F_TS, self.A_T, t)
        # Eq. (6) as printed masks the generator's own output F_ST(s); §3.2 calls s'_new "a masked version of the
        # translated source sample s'", and the authors' code masks s' (the default): then D_T judges, inside the
        # mask, the very image the test phase writes.
        fake_T, fake_S = (F_s, F_t) if masked and self.masked_fake == "F" else (s_prime, t_prime)

        # F and A minimise Eq. (4); LSGAN in place of Eq. (2)'s log terms (Appendix A). In stage 2 the adversarial
        # terms are Eq. (7)'s, whose hard mask is a constant: their gradient reaches F only. D takes no gradient here.
        self.D_S.requires_grad_(False)
        self.D_T.requires_grad_(False)
        adv = (lsgan(self.D_T(d_input(fake_T, s_a, masked, self.tau)), 1)
               + lsgan(self.D_S(d_input(fake_S, t_a, masked, self.tau)), 1))
        losses = {"G_adv": adv}
        if self.cycle:  # Eq. (3); without it, Table 2's Ours−cycle
            losses["G_cycle"] = (F.l1_loss(self.back(s_prime, s_a, self.F_TS, self.A_T), s)
                                 + F.l1_loss(self.back(t_prime, t_a, self.F_ST, self.A_S), t))
        losses["G"] = adv + self.cycle_weight * losses["G_cycle"] if self.cycle else adv
        self.amp.update("G", losses["G"])
        self.D_S.requires_grad_(True)
        self.D_T.requires_grad_(True)

        # D_T judges t (t_new in stage 2, masked by A_T(t)) against F_ST's fakes, D_S likewise: Eq. (5)'s max.
        losses["D"] = (self.d_loss(self.D_T, self.pools["T"], t, t_a, fake_T, s_a, masked)
                       + self.d_loss(self.D_S, self.pools["S"], s, s_a, fake_S, t_a, masked))
        self.amp.update("D", losses["D"])
        return {k: v.detach() for k, v in losses.items()}

    # --- Inference --------------------------------------------------------------------------------------------
    def networks(self, direction):
        return (self.F_ST, self.A_S) if direction == "A2B" else (self.F_TS, self.A_T)

    def translate(self, x, direction="A2B"):
        """x' of Eq. (1) with the soft map, as in training (the authors' code thresholds only D's input), and the
        map; None where Table 2's ablation removes the attention network."""
        F_xy, A_x = self.networks(direction)
        x_prime, x_a, _ = map_to(F_xy, A_x, x)
        return x_prime, x_a if A_x is not None else None

    def visuals(self, x, direction="A2B"):
        """x | attention map (white = 1) | F(x), the generator's own output | x'."""
        F_xy, A_x = self.networks(direction)
        x_prime, x_a, content = map_to(F_xy, A_x, x)
        return [x, 2 * x_a - 1, content, x_prime]


def add_arguments(parser):
    def arg(flag, type, help, **kw):
        add_default(parser, DEFAULTS, flag, type, help, **kw)
    arg("--cycle_weight", float, "λ_cyc, cycle loss")
    arg("--ch", int, "base channels of the generators (ch, 2ch, 4ch) and of the attention networks (ch, 2ch)")
    arg("--n_res", int, "residual blocks in each generator")
    arg("--ndf", int, "discriminator base channels")
    arg("--switch_epoch", int, "epoch from which the attention networks are frozen and D sees masked images "
                               "(as a fraction of --epochs, so it scales with --iteration)")
    arg("--tau", float, "attention threshold for the discriminators' inputs in stage 2")
    arg("--pool_size", int, "(fake, attention map) pairs each discriminator's history holds")
    arg("--masked_fake", str, "what stage 2's discriminators see of a fake where its source's attention > τ: "
                              "the composite s' of Eq. 1, or F(s)", choices=["composite", "F"])
    add_bool(parser, "--cycle", True, "the cycle loss (False: Table 2, Ours−cycle)")
    add_bool(parser, "--cycle_att", True, "the way back computes A_T(s') (False: Table 2, Ours−cycleAtt: it reuses "
                                          "A_S(s))")
    add_bool(parser, "--A_S", True, "the attention network A_S (False: Table 2, Ours−A_S: its map is all ones, A_T "
                                    "still acts on t and, on the way back, on s', and both discriminators see whole "
                                    "images)")
    add_bool(parser, "--A_T", True, "the attention network A_T (False: Table 2, Ours−A_T, likewise)")
    add_bool(parser, "--masked_D", True, "stage 2's discriminators on Eq. 6's masked images, without instance norm "
                                         "(False: Table 2, Ours−D: whole images; attention still frozen)")
    add_bool(parser, "--freeze_A", True, "stage 2 freezes A_S and A_T (False, with --masked_D False: Table 2, "
                                         "Ours−D−A, Chen et al.'s variant)")


def make_model(args, device):
    if not 0 < args.tau < 1:
        raise UsageError(f"--tau {args.tau}: use a threshold between 0 and 1 (the paper's is 0.1)")
    if not 0 <= args.switch_epoch <= args.epochs:
        raise UsageError(f"--switch_epoch {args.switch_epoch}: use 0 to --epochs ({args.epochs}); --epochs sets "
                         f"the scale even when --iteration is given")
    return UAIT(args, device)


if __name__ == "__main__":
    main("uait", __doc__.split("\n\n")[0], DEFAULTS, CPU_PRESET, add_arguments, make_model)
