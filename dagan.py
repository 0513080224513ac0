"""DA-GAN: Instance-level Image Translation by Deep Attention Generative Adversarial Networks. Shuang Ma,
Jianlong Fu, Chang Wen Chen, Tao Mei. CVPR 2018, arXiv:1802.06454. No code was released.

The idea. A set-level GAN makes F(s) look like the target set, but nothing ties the parts of s to the parts of F(s).
DA-GAN first encodes an image as a few attended instances: an encoder E reads X, a localisation head f_loc places N
boxes on it, a soft, differentiable box mask cuts each region R_i = X ∘ M_i out, and E encodes each region again;
these instance features, side by side, are the Deep Attention Encoder's code DAE(X), and F = G ∘ DAE. The
constraints act on instances: F(s) must encode like s (consistency), F(t) like t (symmetry), and two discriminators
judge F(s) and F(t) against t. A classifier on DAE(X), trained with the labels, makes the boxes land on what the
label is about (the geometric regulariser) and gives the distance d in which the codes are compared.

Map of the paper to this file:
    Eq. (1)  f_loc(E(X)) = centres (x_i, y_i)                    DAE.f_loc, --f_loc (--box_jitter: ours)
    Eq. (2)  box edges from the centre and half-sizes (w, h)     DAE.boxes, --box_size
    Eq. (3)  Inst_i = E(R_i), concatenated along channels       DAE.attend_at
    Eq. (4)  M_i = soft box, σ with steepness k                 kernels/boxmask.py (box_crop, box_masks), --k
    §3.1     geometric regulariser E[d(Y, DAE(X))]               DAGAN.train_step ("cls"), Classifier
    Eq. (5)  L_cst = d(DAE(s), DAE(F(s))); Eq. (6) L_sym         DAGAN.train_step, --alpha, --beta
    Eq. (7)  L_GAN^s: D1 on t against F(s); Eq. (8) D2 on F(t)   DAGAN.train_step, --D2
    Eq. (9)  the full objective (its L_sys is Eq. 6's L_sym)     DAGAN.train_step
    Eq. (10) F = DAE ∘ G minimises, D1 and D2 maximise           DAGAN.train_step: F first, then D1, D2
    §3.4     G (residual blocks, nearest up-sampling + 3×3 conv, BN, ReLU), D (down-sampling blocks, one FC unit)
    Table 1(a) ablations: --dae, --cst, --sym, --D2.  Table 4: 10 labels, 1 box, d = "ResBlock": --n_boxes 1
A is S (the source: SVHN-like digits in the embedded `digits` data), B is T (MNIST-like); one mapping, A2B only.

Where the paper is silent, our choices (measured: docs/dagan.md#decisions and #investigations):
- Centres in kernels/boxmask.py's normalised coordinates (the image spans [-1, 1]); k = 20 per unit is an edge of a
  tenth of the side, so several pixels pass gradient to the centre (RA-CNN's k = 10 per pixel would pass almost none).
- Fixed half-sizes, --box_size 0.625 of the side (20 px at 32, about a digit's height); f_loc predicts centres only
  (Eq. 1). At 0.75 a centred box holds the digit and f_loc gains nothing by moving it; at 0.5 it settles off it.
- f_loc (--f_loc fc): conv, BN, ReLU, then RA-CNN's two fully connected layers on the flattened map, which keep where
  each feature is; the last starts at zero (every box starts centred); centres tanh(--loc_gain · head), gain 1.
  --f_loc pool averages the features over the image first: its boxes never follow the digit.
- --box_jitter 3 (ours, not in the paper; 0 turns it off): N(0, 3 px) on the centres in training, never in eval. The
  regulariser's classifier then sees crops from around the box, not from one place, so it cannot dig a well that
  holds the box there; without the jitter the fc head's boxes stayed too.
- The crop R_i = X ∘ M_i on [0, 1] pixels: what a box leaves out is black, the MNIST-like background.
- d: Classifier (Table 4's 9 residual blocks) on DAE(X). The regulariser is its cross-entropy; L_cst and L_sym
  compare its pooled features, mean |φ(u) − φ(v)|. It learns only from the labels (else it could make φ constant).
  Its weight in Eq. 9, --cls_weight 10: the one term that pulls the box to the digit, against α = 10 for L_cst.
- --labels S (default): §4.3 adapts a classifier trained on the source domain's labels to a target domain without
  any, as SA, DANN, DTN and UNIT do on SVHN -> MNIST; S's are the only labels that can tell the box which digit of s
  to attend to. T (MNIST-like only) is the runner's second table; both is Table 4's semi-supervised setting.
- Log loss as printed (Eq. 7-8), G non-saturating. α = 10, β = 1 (at α = 1 w/o Sym measured F's collapse, not the
  symmetry term); Adam (0.5, 0.999) at §3.4's 2e-4, no decay.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.amp import Precision, float32
from common.train import UsageError, add_bool, add_default, main
from kernels.boxmask import box_crop, box_masks

# --- Defaults: the paper's hyperparameters (flag -> (value, source)) ------------------------------------------
DEFAULTS = {
    "iteration": (20_000, "our choice: the paper gives no length"),
    "batch_size": (64, "§3.4"),
    "print_freq": (1000, "our choice"),
    "save_freq": (5000, "our choice"),
    "decay_flag": (False, "§3.4 mentions no decay"),
    "lr": (2e-4, "§3.4"),
    "weight_decay": (0.0, "not used"),
    "img_size": (32, "§4.3: SVHN and MNIST digits, 32 px"),
    "ch": (32, "our choice"),
    "n_res": (4, "our choice: §3.4 says 'several'"),
    "n_boxes": (1, "Table 4: one region (the digit) for MNIST & SVHN"),
    "box_size": (0.625, "our choice: fraction of the side the box covers (the docstring says why)"),
    "k": (20.0, "our choice: σ's steepness per normalised unit (the image spans 2 units)"),
    "loc_gain": (1.0, "our choice: f_loc's centres are tanh(loc_gain · linear(·)) (the docstring says why)"),
    "box_jitter": (3.0, "not in the paper: noise on the centres in training, in pixels (the docstring says why)"),
    "alpha": (10.0, "α of Eq. 9; our choice, the paper gives none (the docstring says why)"),
    "beta": (1.0, "β of Eq. 9; our choice, the paper gives none"),
    "cls_weight": (10.0, "weight of the geometric regulariser; our choice (the docstring says why)"),
}
# `python dagan.py` with no --dataset: the embedded digits, SVHN-like -> MNIST-like, at a size a 2-core CPU trains
# in minutes (benchmarks/train_step.py dagan --ch 16 --batch_size 32).
CPU_PRESET = dict(dataset="digits", ch=16, batch_size=32, iteration=1000, print_freq=250, save_freq=500)
# Table 1(a)'s rows for benchmarks/ablation.py: row -> the flags that make it, the full model first; "w/o DAE" is the
# no-attention row.
TABLE_1A = {"DA-GAN": [], "w/o DAE": ["--dae", "False"], "w/o const": ["--cst", "False"],
            "w/o Sym": ["--sym", "False"], "w/o D2": ["--D2", "False"]}
ABLATIONS = {"Table 1(a)": TABLE_1A,  # §4.3: S's labels only
             "Table 1(a), T labels": {f"{row}, T labels": flags + ["--labels", "T"] for row, flags in TABLE_1A.items()}}


# --- Networks -------------------------------------------------------------------------------------------------

def block(c_in, c_out, kernel, stride, norm=True, act=nn.ReLU):
    """Conv, batch norm, activation: §3.4's unit everywhere."""
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2 if stride == 1 else 1)]
    return layers + ([nn.BatchNorm2d(c_out)] if norm else []) + [act()]


class ResBlock(nn.Module):
    """§3.4: x + [3×3 conv, BN, ReLU, 3×3 conv, BN](x)."""

    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(*block(c, c, 3, 1), nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.body(x)


def encoder(ch):
    """E: 3 -> 4ch channels at S/4 (any form will do, §3.1)."""
    return nn.Sequential(*block(3, ch, 3, 1), *block(ch, 2 * ch, 4, 2), *block(2 * ch, 4 * ch, 4, 2))


class DAE(nn.Module):
    """The Deep Attention Encoder, §3.1. forward(X) -> (the N instance features concatenated, N·4ch × S/4 × S/4;
    the box centres, B×N×2). With attend=False (Table 1a, w/o DAE) it is E(X) alone and there are no boxes."""

    def __init__(self, args):
        super().__init__()
        ch, n_boxes = args.ch, args.n_boxes
        self.E = encoder(ch)
        self.attend, self.n_boxes, self.half, self.k = args.dae, n_boxes, args.box_size, args.k
        self.loc_gain, self.jitter = args.loc_gain, args.box_jitter * 2 / args.img_size  # pixels -> [-1, 1] units
        if self.attend:
            # "pool": the feature map averaged over its positions, then a linear layer. "fc": RA-CNN's form, two fully
            # connected layers on the whole flattened map, which keeps where in the image each feature is.
            conv = block(4 * ch, 4 * ch, 3, 1)
            head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * ch, 2 * n_boxes)] if args.f_loc == "pool" \
                else [nn.Flatten(), nn.Linear(4 * ch * (args.img_size // 4) ** 2, 4 * ch), nn.ReLU(),
                      nn.Linear(4 * ch, 2 * n_boxes)]
            self.f_loc = nn.Sequential(*conv, *head)
            nn.init.zeros_(self.f_loc[-1].weight)  # every box starts at the centre
            nn.init.zeros_(self.f_loc[-1].bias)

    def boxes(self, X):
        """Eq. (1): centres (x_i, y_i) in [-1, 1], float32 under --amp (bf16 would move a box in steps of up to 1/128
        of the image); Eq. (2)'s half-sizes (w, h), fixed."""
        centres = torch.tanh(self.loc_gain * float32(self.f_loc(self.E(X)))).view(len(X), self.n_boxes, 2)
        return centres, torch.full_like(centres, self.half)

    def forward(self, X):
        if not self.attend:
            return self.E(X), None
        centres, _ = self.boxes(X)
        if self.training and self.jitter:  # --box_jitter: f_loc descends the losses smoothed over nearby boxes
            centres = (centres + self.jitter * torch.randn_like(centres)).clamp(-1, 1)
        return self.attend_at(X, centres), centres

    def attend_at(self, X, centres):
        """Eq. (3)-(4) with the boxes at `centres` (B×N×2): the N instances E(R_i), concatenated."""
        halves = torch.full_like(centres, self.half)
        # Eq. (4) and R_i = X ∘ M_i on [0, 1] pixels: what the box leaves out is black (−1 here), as the target's
        # background, not the mid-grey 0 that X ∘ M_i gives on [-1, 1]. B×N×3×S×S.
        R = box_crop(X + 1, centres, halves, self.k) - 1
        inst = self.E(R.flatten(0, 1))            # Eq. (3): the same E on every region
        return inst.view(len(X), -1, *inst.shape[2:])


class Generator(nn.Sequential):
    """G, §3.4: the concatenated instances -> residual blocks -> two up-sampling blocks (nearest ×2, 3×3 conv, BN,
    ReLU) -> a 3×3 conv to RGB, the one conv without BN and ReLU (tanh: images are in [-1, 1])."""

    def __init__(self, in_ch, ch, n_res):
        super().__init__(*block(in_ch, 4 * ch, 3, 1), *[ResBlock(4 * ch) for _ in range(n_res)],
                         nn.Upsample(scale_factor=2, mode="nearest"), *block(4 * ch, 2 * ch, 3, 1),
                         nn.Upsample(scale_factor=2, mode="nearest"), *block(2 * ch, ch, 3, 1),
                         nn.Conv2d(ch, 3, 3, 1, 1), nn.Tanh())


class Discriminator(nn.Sequential):
    """D1, D2, §3.4: down-sampling blocks (4×4 stride-2 convs, BN but on the first, LeakyReLU 0.2), then a fully
    connected layer with one node: the decision logit."""

    def __init__(self, ch, img_size):
        lrelu = lambda: nn.LeakyReLU(0.2)  # noqa: E731
        super().__init__(*block(3, ch, 4, 2, norm=False, act=lrelu), *block(ch, 2 * ch, 4, 2, act=lrelu),
                         *block(2 * ch, 4 * ch, 4, 2, act=lrelu), nn.Flatten(),
                         nn.Linear(4 * ch * (img_size // 8) ** 2, 1))


class Classifier(nn.Module):
    """d(·) of Table 4, "ResBlock": 9 residual blocks on DAE(X), pooled to φ, then a linear layer to the labels."""

    def __init__(self, in_ch, ch, n_classes=10):
        super().__init__()
        self.features = nn.Sequential(*block(in_ch, ch, 3, 1), *[ResBlock(ch) for _ in range(9)],
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(ch, n_classes)

    def forward(self, latent):
        return self.fc(self.features(latent))


def bce(logits, real):
    """Eq. (7)-(8)'s log terms: −log D for real = 1, −log(1 − D) for real = 0."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(real)))


# --- Losses and the training step -------------------------------------------------------------------------------

class DAGAN:
    directions = ("A2B",)  # one mapping F: S -> T
    batch_info = True      # the labels Y of the geometric regulariser
    attention_scale = "probability"  # the union of Eq. 4's soft masks, clamped at 1 (common.metrics)

    def __init__(self, args, device):
        self.DAE = DAE(args).to(device)
        latent = 4 * args.ch * (args.n_boxes if args.dae else 1)
        self.G = Generator(latent, args.ch, args.n_res).to(device)
        self.C = Classifier(latent, args.ch).to(device)
        self.D1 = Discriminator(args.ch, args.img_size).to(device)
        self.D2 = Discriminator(args.ch, args.img_size).to(device) if args.D2 else None
        nets = dict(DAE=self.DAE, G=self.G, C=self.C, D1=self.D1, D2=self.D2)
        self.nets = {name: net for name, net in nets.items() if net is not None}
        adam = dict(lr=args.lr, betas=(0.5, 0.999), weight_decay=args.weight_decay,
                    fused=device.type in ("cpu", "cuda"))
        Ds = [self.D1] + ([self.D2] if self.D2 is not None else [])
        self.optimizers = {
            "F": torch.optim.Adam([p for net in (self.DAE, self.G, self.C) for p in net.parameters()], **adam),
            "D": torch.optim.Adam([p for D in Ds for p in D.parameters()], **adam)}
        self.amp = Precision(args.amp, device, self.optimizers)  # --amp (common.amp)
        self.alpha = args.alpha if args.cst else 0.0
        self.beta = args.beta if args.sym else 0.0
        self.cls_weight, self.labels = args.cls_weight, args.labels
        self.k = args.k

    def F(self, x):
        """F = G ∘ DAE (Eq. 10). Returns F(x) and DAE(x)."""
        latent, _ = self.DAE(x)
        return self.G(latent), latent

    def d(self, u, v):
        """Table 4's d: the distance of the classifier's features, with the classifier held fixed."""
        self.C.requires_grad_(False)
        distance = F.l1_loss(self.C.features(u), self.C.features(v))  # mean |φ(u) − φ(v)|, float32 under --amp
        self.C.requires_grad_(True)
        return distance

    def regulariser(self, latents, labels):
        """§3.1's geometric regulariser E[d(Y, DAE(X))]: the classifier's cross-entropy on the labelled images;
        None when no image of the batch has a label."""
        latent, y = torch.cat(latents), torch.cat(labels)
        known = y >= 0
        return F.cross_entropy(self.C(latent[known]), y[known]) if known.any() else None

    def train_step(self, s, t, info):
        """One iteration of Eq. (10): F (DAE, G) and the classifier take a step, then D1 and D2 on the same fakes."""
        fake_s, latent_s = self.F(s)  # s' = F(s)
        fake_t, latent_t = self.F(t)  # t' = F(t)
        Ds = [D for D in (self.D1, self.D2) if D is not None]
        for D in Ds:
            D.requires_grad_(False)
        losses = {"G_adv_s": bce(self.D1(fake_s), 1)}  # Eq. (7), non-saturating
        if self.D2 is not None:
            losses["G_adv_t"] = bce(self.D2(fake_t), 1)  # Eq. (8)
        if self.alpha:
            losses["cst"] = self.d(latent_s, self.DAE(fake_s)[0])  # Eq. (5)
        if self.beta:
            losses["sym"] = self.d(latent_t, self.DAE(fake_t)[0])  # Eq. (6)
        domains = {"S": [(latent_s, info["label_A"])], "T": [(latent_t, info["label_B"])]}
        domains["both"] = domains["S"] + domains["T"]
        cls = self.regulariser(*zip(*domains[self.labels]))
        if cls is not None:
            losses["cls"] = cls
        losses["G"] = (losses["G_adv_s"] + losses.get("G_adv_t", 0) + self.alpha * losses.get("cst", 0)
                       + self.beta * losses.get("sym", 0) + self.cls_weight * losses.get("cls", 0))  # Eq. (9)
        self.amp.update("F", losses["G"])
        for D in Ds:
            D.requires_grad_(True)

        losses["D"] = bce(self.D1(t), 1) + bce(self.D1(fake_s.detach()), 0)  # D1 maximises Eq. (7)
        if self.D2 is not None:
            losses["D"] = losses["D"] + bce(self.D2(t), 1) + bce(self.D2(fake_t.detach()), 0)  # D2, Eq. (8)
        self.amp.update("D", losses["D"])
        return {k: v.detach() for k, v in losses.items()}

    # --- Inference --------------------------------------------------------------------------------------------
    def masks(self, x):
        """The N soft masks of Eq. (4) for each image: B×N×H×W."""
        centres, halves = self.DAE.boxes(x)
        return box_masks(centres, halves, x.shape[2], x.shape[3], self.k)

    def boxes(self, x):
        """The boxes' centres and half-sizes (B×N×2, Eq. 1-2), None without the DAE: what common.datasets.digits scores
        against the labelled digit's true box."""
        return self.DAE.boxes(x) if self.DAE.attend else None

    def translate(self, x, direction="A2B"):
        """F(x), and the attention: the union of the boxes' soft masks (None without the DAE)."""
        attention = self.masks(x).sum(1, keepdim=True).clamp(max=1) if self.DAE.attend else None
        return self.F(x)[0], attention

    def visuals(self, x, direction="A2B"):
        """x with its boxes drawn | each attended region R_i | F(x)."""
        y = self.F(x)[0]
        if not self.DAE.attend:
            return [x, y]
        masks = self.masks(x)
        hard = (masks > 0.5).float()
        eroded = -F.max_pool2d(-hard, 3, 1, 1)
        edge = (hard - eroded).amax(1, keepdim=True)
        yellow = torch.tensor([1.0, 1.0, -1.0], device=x.device).view(1, 3, 1, 1)
        regions = ((x + 1) * masks[:, i:i + 1] - 1 for i in range(masks.shape[1]))  # R_i, as DAE.attend_at
        return [torch.where(edge > 0, yellow, x), *regions, y]


def add_arguments(parser):
    def arg(flag, type, help):
        add_default(parser, DEFAULTS, flag, type, help)
    arg("--ch", int, "base channels of E, G, D and the classifier")
    arg("--n_res", int, "residual blocks in G")
    arg("--n_boxes", int, "attended regions N of Eq. 1")
    arg("--box_size", float, "side of each box as a fraction of the image side (Eq. 2's 2w, 2h)")
    arg("--k", float, "steepness of the soft box edge, Eq. 4")
    arg("--loc_gain", float, "gain of f_loc's output before its tanh: how fast the boxes move (Eq. 1)")
    parser.add_argument("--f_loc", choices=("fc", "pool"), default="fc",
                        help="f_loc's head (Eq. 1): fc (RA-CNN's two fully connected layers on the flattened features; "
                             "default) or pool (average the features over the image, then a linear layer: its boxes "
                             "do not follow the digit)")
    arg("--box_jitter", float, "sd in pixels of the noise added to the box centres in training, not in the paper "
                               "(0: none, the paper's form)")
    arg("--alpha", float, "weight of the consistency loss, Eq. 9")
    arg("--beta", float, "weight of the symmetry loss, Eq. 9")
    arg("--cls_weight", float, "weight of the geometric regulariser (the classifier on DAE(X))")
    add_bool(parser, "--dae", True, "the Deep Attention Encoder (False: Table 1a, w/o DAE: F = G ∘ E, no boxes)")
    add_bool(parser, "--cst", True, "the consistency loss, Eq. 5 (False: Table 1a, w/o const)")
    add_bool(parser, "--sym", True, "the symmetry loss, Eq. 6 (False: Table 1a, w/o Sym)")
    add_bool(parser, "--D2", True, "the second discriminator, Eq. 8 (False: Table 1a, w/o D2)")
    parser.add_argument("--labels", choices=("S", "T", "both"), default="S",
                        help="whose labels train the regulariser: S's (default, §4.3: the source domain's), T's, or "
                             "both (Table 4)")


def make_model(args, device):
    if not 0 < args.box_size <= 1:
        raise UsageError(f"--box_size {args.box_size}: use a fraction of the side in (0, 1]")
    if args.k <= 0:
        raise UsageError(f"--k {args.k}: the edge steepness must be positive")
    if args.loc_gain <= 0:
        raise UsageError(f"--loc_gain {args.loc_gain}: the gain must be positive (at 0 the boxes never move)")
    if args.box_jitter < 0:
        raise UsageError(f"--box_jitter {args.box_jitter}: use a standard deviation in pixels, 0 or more")
    if args.img_size % 8:
        raise UsageError(f"--img_size {args.img_size}: use a multiple of 8 (D halves it three times)")
    return DAGAN(args, device)


if __name__ == "__main__":
    main("dagan", __doc__.split("\n\n")[0], DEFAULTS, CPU_PRESET, add_arguments, make_model)
