"""AttentionGAN: Unpaired Image-to-Image Translation using Attention-Guided Generative Adversarial Networks.
Hao Tang, Hong Liu, Dan Xu, Philip H. S. Torr, Nicu Sebe. arXiv:1911.11897 (IEEE TNNLS 2021).

The idea. CycleGAN's generators draw the whole output image, background included. Here each generator also draws
attention masks that say, per pixel, how much of the output comes from new content and how much from the input,
so the background can be copied instead of redrawn. Scheme I: one network outputs a content image C and a mask A,
G(x) = C·A + x·(1 − A). Scheme II: a shared encoder and two decoders, n − 1 content images and n masks from one
channel softmax; the last mask is the background's and is applied to the input. Attention-guided discriminators
judge (attention, image) pairs, a total-variation loss keeps the masks from saturating, and (scheme I) a pixel loss
keeps the output near the input.

Map of the paper to this file:
    Eq. (1)  scheme I, G_y = C_y·A_y + x·(1 − A_y)               SchemeI (kernels/blend.py: blend)
    Eq. (2)  scheme II, G_y = Σ_{i<n} C_y^i·A_y^i + x·A_y^b      SchemeII (kernels/blend.py: blend_softmax)
    Eq. (3)-(4)  R_x through the other generator, L_cycle      AttentionGAN.train_step
    Eq. (5)  L_GAN (LSGAN, §3.4), D's objective halved         AttentionGAN.train_step, common.blocks.lsgan_d
    Eq. (6)  L_AGAN, D_YA and D_XA on [A_y, image] pairs         AttentionGAN.train_step (--attention_d)
    Eq. (7)  L_tv on the attention masks                        tv
    Eq. (8)  L_pixel (scheme I)                                 AttentionGAN.train_step
    Eq. (9)  the full objective with the curriculum r           AttentionGAN.train_step, curriculum_r
    §3.4     CycleGAN's ResNet generator and PatchGAN, image pool of 50 (§4.1), Adam β (0.5, 0.999) (§4.1)
    Table 1  Full, −AD, −AG, −PL, −AL                           --attention_d, --attention_g, --pixel_weight 0,
                                                                --tv_weight 0

Loss weights (§4.1) depend on the experiment: on faces (where the paper uses scheme I) λ_cycle 10, λ_gan 0.5,
λ_pixel 1, λ_tv 1e-6 and the curriculum r; on natural images (scheme II) CycleGAN's λ_cycle 10, λ_id 0.5. Each
scheme's defaults are that setting (SCHEME_DEFAULTS), and where §4.1 is silent the authors' code's: for scheme II
no TV loss and no attention-guided discriminators (their released scheme II code trains as CycleGAN does), and each
scheme's lr from their code, which the paper does not give. Every other term is a flag (Table 1's rows use them).
Their scheme II generators load with --weights (see AUTHORS_KEYS).
"""
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.amp import Precision, float32
from common.blocks import ImagePool, PatchGAN, init_normal, lsgan, lsgan_d, resnet_decoder, resnet_encoder
from common.train import UsageError, add_bool, add_default, load_checkpoint, load_nets, main, our_nets
from kernels.blend import blend, blend_softmax

# --- Defaults: the paper's hyperparameters (flag -> (value, source)) ------------------------------------------
DEFAULTS = {
    "epochs": (200, "the paper gives none; the authors' code: 200 decaying from 100 (scheme I, and scheme II on "
                    "selfie2anime)"),
    "iteration": (None, "--epochs × the larger training set / --batch_size"),
    "batch_size": (1, "CycleGAN"),
    "print_freq": (1000, "sample grids"),
    "save_freq": (10_000, "checkpoints"),
    "decay_flag": (True, "CycleGAN: lr constant for the first half, then linear to 0"),
    "lr": (None, "the paper gives none; the authors' code: 1e-4 for scheme I (AttentionGAN-v1/train.py), CycleGAN's "
                 "2e-4 for scheme II"),
    "weight_decay": (0.0, "none in the paper"),
    "img_size": (256, "§4.1: images rescaled to 256×256"),
    "ch": (64, "CycleGAN's generator, ngf 64"),
    "n_res": (9, "CycleGAN's generator at 256 px: 9 residual blocks"),
    "ndf": (64, "CycleGAN's discriminator, ndf 64"),
    "n_masks": (10, "n of Eq. 2, §3.4"),
    "cycle_weight": (10.0, "λ_cycle, §4.1"),
    "pool_size": (50, "§4.1: image buffer of 50"),
    "curriculum_epochs": (None, "§4.1: r = 0.01 for the first 10 epochs (scheme I); 0 (scheme II): r = 0.5 always"),
    "adv_weight": (None, "λ_gan, §4.1: 0.5 (scheme I, faces), CycleGAN's 1 (scheme II)"),
    "pixel_weight": (None, "λ_pixel, §4.1: 1 (scheme I); 0 (scheme II: Eq. 8 is for scheme I)"),
    "tv_weight": (None, "λ_tv, §4.1: 1e-6 for faces (scheme I); none given for natural images (scheme II), whose "
                        "authors' code has no TV loss: 0"),
    "identity_weight": (None, "λ_id, §4.1: 0.5 for natural images (scheme II), as a fraction of λ_cycle (CycleGAN)"),
    "real_pair_mask": ("x", "§3.2: the real pair [A_y, y] takes A_y, the attention G_{X→Y} gave x"),
}
SCHEME_DEFAULTS = {  # the flags whose default is None, per scheme: §4.1's setting, else the authors' code's
    "I": dict(curriculum_epochs=10, adv_weight=0.5, pixel_weight=1.0, identity_weight=0.0, tv_weight=1e-6, lr=1e-4,
              attention_d=True),  # Table 1's Full model has D_YA, D_XA (their v1 code has neither)
    "II": dict(curriculum_epochs=0, adv_weight=1.0, pixel_weight=0.0, identity_weight=0.5, tv_weight=0.0, lr=2e-4,
               attention_d=False),  # §4.1 is silent; the authors' scheme II code has no attention-guided D
}
R_CURRICULUM, R_AFTER = 0.01, 0.5  # r of Eq. 9, §4.1
# `python attentiongan.py` with no --dataset: the embedded shapes at a size a 2-core CPU trains in minutes.
CPU_PRESET = dict(img_size=64, ch=16, ndf=16, n_res=3, iteration=2000, print_freq=200, save_freq=500)
# Table 1's rows for benchmarks/ablation.py: row -> the flags that make it, the full model first. The paper's
# ablation is on AR Face, so every row takes scheme I with the face setting (the pixel loss exists only there);
# "Full - AD - AG" is the no-attention row (CycleGAN's generator).
ABLATIONS = {"Table 1": {
    "Full": ["--scheme", "I"],
    "Full - AD": ["--scheme", "I", "--attention_d", "False"],
    "Full - AD - AG": ["--scheme", "I", "--attention_g", "False"],
    "Full - AD - PL": ["--scheme", "I", "--attention_d", "False", "--pixel_weight", "0"],
    "Full - AD - AL": ["--scheme", "I", "--attention_d", "False", "--tv_weight", "0"],
    "Full - AD - PL - AL": ["--scheme", "I", "--attention_d", "False", "--pixel_weight", "0", "--tv_weight", "0"],
}, "D_YA's real pair (scheme II)": {  # what the attention-guided discriminators add on natural-image settings
    "scheme II": [],
    "+ AD": ["--attention_d", "True"],
    "+ AD, y's mask": ["--attention_d", "True", "--real_pair_mask", "y"],
    "CycleGAN": ["--attention_g", "False"],
}}


# --- Networks -------------------------------------------------------------------------------------------------

class SchemeI(nn.Module):
    """Scheme I (§3.1, Fig. 2): CycleGAN's generator with 4 output channels, one attention mask (sigmoid) and one
    content image (tanh, the images' range, as scheme II's content; the authors' v1 generator leaves it unbounded)."""

    def __init__(self, ch, n_res):
        super().__init__()
        self.net = nn.Sequential(*resnet_encoder(3, ch, n_res), *resnet_decoder(ch, 4))

    def forward(self, x):
        """(G_y, masks, content): G_y of Eq. (1), the mask A_y (N×1×H×W), the content C_y (N×1×3×H×W)."""
        out = self.net(x)
        A, C = torch.sigmoid(out[:, :1]), torch.tanh(out[:, 1:])
        return blend(x, C, A), A, C[:, None]


class SchemeII(nn.Module):
    """Scheme II (§3.1, Fig. 3): a parameter-sharing encoder E, a content decoder G^C (n − 1 RGB images, tanh) and
    an attention decoder G^A (n masks, a 1×1 conv then one channel softmax), as the authors' released network."""

    def __init__(self, ch, n_res, n_masks):
        super().__init__()
        self.encoder = nn.Sequential(*resnet_encoder(3, ch, n_res))
        self.content = nn.Sequential(*resnet_decoder(ch, 3 * (n_masks - 1)), nn.Tanh())
        self.attention = nn.Sequential(*resnet_decoder(ch, n_masks, kernel=1))

    def forward(self, x):
        """(G_y, masks, content): G_y of Eq. (2), the n masks (N×n×H×W; the last, A^b, is the background's),
        the n − 1 content images (N×(n−1)×3×H×W)."""
        e = self.encoder(x)
        logits = self.attention(e)
        C = self.content(e).unflatten(1, (-1, 3))
        return blend_softmax(x, C, logits), torch.softmax(logits, 1), C


class Plain(nn.Module):
    """Table 1's "−AG": CycleGAN's generator, no attention."""

    def __init__(self, ch, n_res):
        super().__init__()
        self.net = nn.Sequential(*resnet_encoder(3, ch, n_res), *resnet_decoder(ch, 3), nn.Tanh())

    def forward(self, x):
        return self.net(x), None, None


def foreground(masks):
    """The one-channel attention the discriminators and the figures use: A_y for scheme I, and for scheme II the
    sum of the n − 1 foreground masks, 1 − A^b (our reading: §3.2 pairs an image with "the attention mask")."""
    return masks if masks.shape[1] == 1 else 1 - masks[:, -1:]


def tv(masks):
    """Eq. (7): Σ_{w,h,c} |A(w+1, h, c) − A(w, h, c)| + |A(w, h+1, c) − A(w, h, c)|, over every mask, averaged
    over the batch, in float32 under --amp (common.amp)."""
    masks = float32(masks)
    dw = (masks[..., :, 1:] - masks[..., :, :-1]).abs().sum((1, 2, 3))
    dh = (masks[..., 1:, :] - masks[..., :-1, :]).abs().sum((1, 2, 3))
    return (dw + dh).mean()


def curriculum_r(progress, curriculum_epochs, epochs):
    """r of Eq. (9): 0.01 for the first `curriculum_epochs` of `epochs` (the GAN terms lead), then 0.5."""
    return R_CURRICULUM if progress < curriculum_epochs / epochs else R_AFTER


# --- Losses and the training step -------------------------------------------------------------------------------

class AttentionGAN:
    attention_scale = "probability"  # a sigmoid mask (scheme I), a sum of softmax masks (II) (common.metrics)

    def __init__(self, args, device):
        self.args = args
        make_G = {"I": lambda: SchemeI(args.ch, args.n_res),
                  "II": lambda: SchemeII(args.ch, args.n_res, args.n_masks)}[args.scheme]
        if not args.attention_g:
            make_G = lambda: Plain(args.ch, args.n_res)  # noqa: E731
        self.G_XY, self.G_YX = make_G().to(device), make_G().to(device)
        D = lambda in_ch: PatchGAN(in_ch, args.ndf).to(device)  # noqa: E731
        self.nets = dict(G_XY=self.G_XY, G_YX=self.G_YX, D_Y=D(3), D_X=D(3))
        if self.attention_d:
            self.nets.update(D_YA=D(4), D_XA=D(4))  # §3.2: the vanilla architecture, one more input channel
        self.discriminators = [net for name, net in self.nets.items() if name.startswith("D")]
        for net in self.nets.values():
            init_normal(net)
        if args.weights:
            self.load_weights(args.weights)
        adam = dict(lr=args.lr, betas=(0.5, 0.999), weight_decay=args.weight_decay,
                    fused=device.type in ("cpu", "cuda"))
        self.optimizers = {
            "G": torch.optim.Adam([*self.G_XY.parameters(), *self.G_YX.parameters()], **adam),
            "D": torch.optim.Adam([p for D in self.discriminators for p in D.parameters()], **adam)}
        self.amp = Precision(args.amp, device, self.optimizers)  # --amp (common.amp)
        # One pool per target domain, of [attention, image] pairs: D_Y sees the image, D_YA the pair.
        self.pools = {"Y": ImagePool(args.pool_size), "X": ImagePool(args.pool_size)}
        self.w = dict(cycle=args.cycle_weight, pixel=args.pixel_weight, identity=args.identity_weight,
                      adv=args.adv_weight, tv=args.tv_weight)
        self.progress = 0.0

    @property
    def attention_d(self):
        return self.args.attention_d and self.args.attention_g

    def load_weights(self, path):
        """One of our checkpoints, or a folder of the authors' scheme II generators (latest_net_G_A.pth and
        latest_net_G_B.pth, or give the file of one epoch's G_A: its G_B is found beside it)."""
        path = Path(path)
        if not path.exists():
            raise UsageError(f"--weights {path}: no such file or folder")
        if path.is_file() and "_net_G_A" not in path.name:
            nets = our_nets(load_checkpoint(path))
            if nets is None:
                raise UsageError(f"--weights {path}: not one of our checkpoints (nor the authors' <epoch>_net_G_A.pth)")
            load_nets(self.nets, nets, path)
            return
        files = {k: (path / f"latest_net_{v}.pth" if path.is_dir() else path.with_name(path.name.replace("G_A", v)))
                 for k, v in AUTHORS_FILES.items()}
        for f in files.values():
            if not f.exists():
                raise UsageError(f"--weights {path}: no {f.name} there (the authors' scheme II generators, "
                                 f"<epoch>_net_G_A.pth and <epoch>_net_G_B.pth, or one of our checkpoints)")
        if self.args.scheme != "II" or not self.args.attention_g:
            raise UsageError(f"--weights {path}: the authors' generators are scheme II: use --scheme II")
        states = {k: load_checkpoint(f) for k, f in files.items()}
        for k, state in states.items():
            if not isinstance(state, dict):
                raise UsageError(f"--weights {files[k]}: not a generator's state dict (it holds a "
                                 f"{type(state).__name__})")
        load_nets({k: self.nets[k] for k in files}, {k: from_authors(v) for k, v in states.items()}, path)

    def train_step(self, real_A, real_B):
        """One iteration: the generators' update, then the discriminators' (CycleGAN's order, §3.4), both
        directions: (x, y, G_{X→Y}, G_{Y→X}, D_Y, D_YA, pool) and vice versa."""
        a, w = self.args, self.w
        directions = [(real_A, real_B, self.G_XY, self.G_YX, "Y"), (real_B, real_A, self.G_YX, self.G_XY, "X")]
        r = curriculum_r(self.progress, a.curriculum_epochs, a.epochs)
        losses = dict.fromkeys(("G_gan", "G_agan", "G_cycle", "G_pixel", "G_tv", "G_identity"), 0.0)
        fakes = {}

        for D in self.discriminators:
            D.requires_grad_(False)
        for x, y, G_xy, G_yx, Y in directions:
            # With the identity loss, x and y go through G_{X→Y} as one batch: instance norm is per image, so this
            # is two forwards' result at the cost of one.
            both = torch.cat([x, y]) if a.identity_weight > 0 else x
            G_y, masks, _ = G_xy(both)
            G_y, identity = G_y[:len(x)], G_y[len(x):]
            A_y = foreground(masks[:len(x)]) if masks is not None else None
            R_x = G_yx(G_y)[0]                                                      # Eq. (3)
            losses["G_cycle"] += F.l1_loss(R_x, x)                                  # Eq. (4)
            losses["G_gan"] += lsgan(self.nets[f"D_{Y}"](G_y), 1)                   # Eq. (5)
            if self.attention_d:
                losses["G_agan"] += lsgan(self.nets[f"D_{Y}A"](torch.cat([A_y, G_y], 1)), 1)  # Eq. (6)
            if a.pixel_weight > 0:
                losses["G_pixel"] += F.l1_loss(G_y, x)                              # Eq. (8)
            if a.tv_weight > 0 and masks is not None:
                losses["G_tv"] += tv(masks[:len(x)])                                # Eq. (7)
            if a.identity_weight > 0:
                losses["G_identity"] += F.l1_loss(identity, y)                      # CycleGAN's L_id
            fakes[Y] = (G_y.detach(), A_y.detach() if A_y is not None else None)
        # Eq. (9); the identity term, a reconstruction like L_cycle, sits in r's bracket, weighted λ_id·λ_cycle as
        # CycleGAN weighs it. With r = 0.5 throughout (scheme II) this is CycleGAN's objective, halved.
        G_loss = (r * (w["cycle"] * losses["G_cycle"] + w["pixel"] * losses["G_pixel"]
                       + w["identity"] * w["cycle"] * losses["G_identity"])
                  + (1 - r) * (w["adv"] * (losses["G_gan"] + losses["G_agan"]) + w["tv"] * losses["G_tv"]))
        self.amp.update("G", G_loss)
        for D in self.discriminators:
            D.requires_grad_(True)

        # Discriminators: Eq. (5) and (6), maximised, halved; fakes from the pool of past (image, attention) pairs.
        # The real pair [A_y, y] uses the attention G_{X→Y} gave the current x (§3.2), which marks x's object, not
        # y's; --real_pair_mask y pairs y with the attention G_{Y→X} (as just updated) gives y itself.
        D_loss = 0.0
        for x, y, _, G_yx, Y in directions:
            image, A = fakes[Y]
            pooled = self.pools[Y].query(torch.cat([A, image], 1) if A is not None else image)
            D_loss = D_loss + lsgan_d(self.nets[f"D_{Y}"], y, pooled[:, -3:])
            if self.attention_d:
                if a.real_pair_mask == "y":
                    with torch.no_grad():
                        A = foreground(G_yx(y)[1])
                D_loss = D_loss + lsgan_d(self.nets[f"D_{Y}A"], torch.cat([A, y], 1), pooled)
        self.amp.update("D", D_loss)

        out = {"G": G_loss.detach(), "D": D_loss.detach(), "r": torch.tensor(r, dtype=torch.float64)}
        out.update({k: v.detach() for k, v in losses.items() if torch.is_tensor(v)})
        return out

    # --- Inference --------------------------------------------------------------------------------------------
    def translate(self, x, direction="A2B"):
        """G_y and its one-channel attention (None for the plain CycleGAN generator)."""
        G_y, masks, _ = (self.G_XY if direction == "A2B" else self.G_YX)(x)
        return G_y, foreground(masks) if masks is not None else None

    def visuals(self, x, direction="A2B"):
        """input | masks (scheme II: A^b first, then A^1..A^{n−1}) | content images | output; masks drawn grey."""
        G_y, masks, C = (self.G_XY if direction == "A2B" else self.G_YX)(x)
        if masks is None:
            return [x, G_y]
        masks = masks if masks.shape[1] == 1 else torch.cat([masks[:, -1:], masks[:, :-1]], 1)
        return [x, *(2 * m[:, None] - 1 for m in masks.unbind(1)), *C.unbind(1), G_y]


def add_arguments(parser):
    def arg(flag, type, help, **kw):
        add_default(parser, DEFAULTS, flag, type, help, **kw)
    parser.add_argument("--scheme", choices=("I", "II"), default="II",
                        help="attention-guided generation scheme I (Eq. 1) or II (Eq. 2) (default II)")
    arg("--n_masks", int, "scheme II: n attention masks, n − 1 content images")
    arg("--ch", int, "generator base channels (ngf)")
    arg("--n_res", int, "residual blocks in the generator")
    arg("--ndf", int, "discriminator base channels")
    arg("--cycle_weight", float, "λ_cycle, Eq. 9")
    arg("--adv_weight", float, "λ_gan, Eq. 9, on L_GAN + L_AGAN")
    arg("--pixel_weight", float, "λ_pixel, Eq. 9 (0: Table 1, −PL)")
    arg("--tv_weight", float, "λ_tv, Eq. 9 (0: Table 1, −AL)")
    arg("--identity_weight", float, "λ_id")
    arg("--curriculum_epochs", int, "epochs with r = 0.01 in Eq. 9, then r = 0.5")
    arg("--pool_size", int, "generated images kept for the discriminators")
    arg("--real_pair_mask", str, "the mask in D_YA's real pair: x's (G_{X→Y}(x)'s attention) or y's own "
                                 "(G_{Y→X}(y)'s)", choices=["x", "y"])
    add_bool(parser, "--attention_d", None, "the attention-guided discriminators D_YA, D_XA (False: Table 1, −AD; "
                                            "default: scheme I True, scheme II False)")
    add_bool(parser, "--attention_g", True, "the attention-guided generators (False: Table 1, −AG: CycleGAN's "
             "generator; no attention, so no −AD and no TV loss either)")
    parser.add_argument("--weights", default=None, help="start from these weights: one of our checkpoints, or the "
                        "authors' scheme II generators (a folder with latest_net_G_A.pth and latest_net_G_B.pth)")


def make_model(args, device):
    for flag, value in SCHEME_DEFAULTS[args.scheme].items():
        if getattr(args, flag) is None:
            setattr(args, flag, value)
    if args.n_masks < 2:
        raise UsageError(f"--n_masks {args.n_masks}: scheme II needs at least 2 (one content mask and the "
                         f"background)")
    if args.curriculum_epochs > args.epochs:
        raise UsageError(f"--curriculum_epochs {args.curriculum_epochs}: at most --epochs ({args.epochs})")
    return AttentionGAN(args, device)


# --- The authors' checkpoints -----------------------------------------------------------------------------------
# Ha0Tang/AttentionGAN saves CycleGAN-style files, <epoch>_net_G_A.pth (G_A: A → B) and _net_G_B.pth, one state
# dict each. Scheme II's keys (the authors' released parameter listing, tests/data/attentiongan-state-dict-G.txt)
# -> ours. Our encoder is [pad, conv7, IN, ReLU, conv3 s2, IN, ReLU, conv3 s2, IN, ReLU, blocks...], a decoder
# [convT, IN, ReLU, convT, IN, ReLU, pad, conv]; their residual block's conv1/conv2 are our conv_block.1/.5 (between
# them: IN, ReLU, pad).
AUTHORS_KEYS = [
    (r"^conv([123])\.", lambda m: f"encoder.{3 * int(m[1]) - 2}."),
    (r"^resnet_blocks\.(\d+)\.conv([12])\.", lambda m: f"encoder.{10 + int(m[1])}.conv_block.{4 * int(m[2]) - 3}."),
    (r"^deconv([123])_(content|attention)\.", lambda m: f"{m[2]}.{(0, 3, 7)[int(m[1]) - 1]}."),
]
AUTHORS_FILES = {"G_XY": "G_A", "G_YX": "G_B"}  # CycleGAN's G_A maps A to B


def from_authors(state_dict):
    """Rename one of their generator state dicts to our keys (each key matches at most one rule)."""
    renamed = {}
    for key, value in state_dict.items():
        for pattern, new in AUTHORS_KEYS:
            key = re.sub(pattern, new, key)
        renamed[key] = value
    return renamed


if __name__ == "__main__":
    main("attentiongan", __doc__.split("\n\n")[0], DEFAULTS, CPU_PRESET, add_arguments, make_model)
