"""dagan.py: the DAE's soft boxes (Eq. 1-4), the losses of Eq. 5-9 and where they vanish, Table 1(a)'s ablations,
the labels of the regulariser, and the script end to end."""
import copy
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

import dagan
from common.train import UsageError, build_parser, parse_args
from conftest import ROOT
from kernels.boxmask import box_crop, box_masks

TINY = ["--ch", "4", "--n_res", "1"]


def make_args(*argv):
    parser = build_parser("dagan", "", dagan.DEFAULTS)
    dagan.add_arguments(parser)
    return parse_args(parser, [*TINY, *argv], {})  # with the harness's checks


def model(*argv):
    return dagan.make_model(make_args(*argv), torch.device("cpu"))


def batch(n=4, labels_B=(1, 2, -1, 3), labels_A=(5, -1, 6, 7)):
    s, t = torch.rand(n, 3, 32, 32) * 2 - 1, torch.rand(n, 3, 32, 32) * 2 - 1
    return s, t, {"label_A": torch.tensor(labels_A[:n]), "label_B": torch.tensor(labels_B[:n])}


def unit(x):
    return (x + 1) / 2  # images in [-1, 1] on [0, 1] pixels


def snapshot(m):
    return {k: copy.deepcopy(net.state_dict()) for k, net in m.nets.items()}


def changed(m, before, name):
    return any(not torch.equal(v, before[name][k]) for k, v in m.nets[name].state_dict().items()
               if v.is_floating_point())


# --- The DAE, Eq. (1)-(4) ---------------------------------------------------------------------------------------

def test_soft_boxes_approach_the_hard_box_as_k_grows():
    centre, half = torch.tensor([[[0.2, -0.1]]]), torch.tensor([[[0.4, 0.3]]])
    u = (2 * torch.arange(32) + 1) / 32 - 1
    hard = (((u[None, :] - 0.2).abs() < 0.4) & ((u[:, None] + 0.1).abs() < 0.3)).float()
    errors = [(box_masks(centre, half, 32, 32, k)[0, 0] - hard).abs().max().item() for k in (5, 20, 100, 1000, 10_000)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-3 and errors[0] > 0.2


def test_boxes_start_centred_and_the_loss_reaches_the_centres():
    m = model()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    centres, halves = m.DAE.boxes(x)
    assert torch.equal(centres, torch.zeros(2, 1, 2)) and torch.equal(halves, torch.full((2, 1, 2), 0.625))  # --box_size
    s, t, info = batch()
    m.train_step(s, t, info)  # f_loc's last layer moves off zero: now gradients reach it through the masks
    latent, centres = m.DAE(x)
    centres.retain_grad()
    m.G(latent).mean().backward()
    assert centres.grad.abs().sum() > 0 and m.DAE.f_loc[-1].weight.grad.abs().sum() > 0


def test_instances_are_E_of_each_region_concatenated():
    m = model("--n_boxes", "3")
    m.DAE.eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    latent, centres = m.DAE(x)
    masks = box_masks(centres, torch.full_like(centres, 0.625), 32, 32, 20.0)  # --box_size, --k
    # Eq. (3) with R_i = X ∘ M_i on [0, 1] pixels: black outside the box
    expected = torch.cat([m.DAE.E(2 * (unit(x) * masks[:, i:i + 1]) - 1) for i in range(3)], 1)
    torch.testing.assert_close(latent, expected, atol=1e-5, rtol=1e-4)
    assert latent.shape == (2, 3 * 16, 8, 8)


def test_translate_and_visuals():
    m = model("--n_boxes", "2")
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    y, attention = m.translate(x)
    assert y.shape == x.shape and y.abs().max() <= 1
    assert attention.shape == (3, 1, 32, 32) and attention.min() >= 0 and attention.max() <= 1
    tiles = m.visuals(x)
    assert len(tiles) == 4 and all(t.shape == x.shape for t in tiles)
    drawn = (tiles[0] != x).any(1)
    assert drawn.any() and not drawn.all()  # an outline, not a fill
    assert m.directions == ("A2B",)
    plain = model("--dae", "False")
    assert plain.translate(x)[1] is None and len(plain.visuals(x)) == 2


# --- The losses, Eq. (5)-(9) ------------------------------------------------------------------------------------

def test_symmetry_and_consistency_vanish_for_an_identity_F():
    m = model("--box_jitter", "0")  # the two encodings of one image see the same box
    m.G = lambda latent: m.identity_input  # F(x) = x whatever DAE(x) is
    s, t, info = batch()
    m.identity_input = t
    _, latent_t = m.F(t)
    assert m.d(latent_t, m.DAE(m.F(t)[0])[0]) == 0  # Eq. (6) with F = identity on T
    m.identity_input = s
    assert m.d(m.F(s)[1], m.DAE(m.F(s)[0])[0]) == 0  # Eq. (5) with F(s) = s
    assert m.d(m.DAE(s)[0], m.DAE(t)[0]) > 0


def test_the_classifier_learns_from_labels_only():
    m = model()
    u, v = torch.randn(2, 16, 8, 8, requires_grad=True), torch.randn(2, 16, 8, 8)
    m.d(u, v).backward()
    assert all(p.grad is None for p in m.C.parameters()) and u.grad.abs().sum() > 0
    assert all(p.requires_grad for p in m.C.parameters())


def test_regulariser_reads_the_labels_of_the_domains_told():
    seen = []
    for labels in ("S", "T", "both"):
        m = model("--labels", labels)
        m.C.register_forward_hook(lambda mod, inputs, out: seen.append(len(out)))
        m.train_step(*batch(labels_A=(5, -1, -1, 7)))
    assert seen == [2, 3, 5]  # S's two labelled images, T's three, or all five
    assert "cls" not in model().train_step(*batch(labels_A=(-1,) * 4))
    assert "cls" not in model("--labels", "both").train_step(*batch(labels_B=(-1,) * 4, labels_A=(-1,) * 4))


def test_one_step_updates_every_network():
    m = model()
    before = snapshot(m)
    losses = m.train_step(*batch())
    assert set(losses) == {"G_adv_s", "G_adv_t", "cst", "sym", "cls", "G", "D"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(changed(m, before, k) for k in ("DAE", "G", "C", "D1", "D2"))


def step_gradients(m, *batch_):
    """Run train_step; return each optimizer's gradients as its step saw them, in parameter order."""
    seen = {}
    for name, opt in m.optimizers.items():
        def step(*args, _opt=opt, _orig=opt.step, _name=name, **kwargs):
            seen[_name] = [torch.zeros_like(p) if p.grad is None else p.grad.clone()
                           for g in _opt.param_groups for p in g["params"]]
            return _orig(*args, **kwargs)
        opt.step = step
    m.train_step(*batch_)
    return seen


def written_out_objectives(m, s, t, info, alpha, beta, cls_weight):
    """Eq. (5)-(9) from the paper on a copy of the networks: F's loss (G non-saturating; d the classifier's pooled
    features with the classifier held fixed, a frozen copy; the regulariser's cross-entropy on S's and T's labels),
    then D1's and D2's (Eq. 7-8: t real, F(s) resp. F(t) fake)."""
    bce = lambda logits, real: torch.nn.functional.binary_cross_entropy_with_logits(  # noqa: E731
        logits, torch.full_like(logits, float(real)))
    fixed = copy.deepcopy(m.C).requires_grad_(False)
    d = lambda u, v: (fixed.features(u) - fixed.features(v)).abs().mean()  # noqa: E731
    latent_s, latent_t = m.DAE(s)[0], m.DAE(t)[0]
    fake_s, fake_t = m.G(latent_s), m.G(latent_t)
    cst = d(latent_s, m.DAE(fake_s)[0])  # Eq. (5): s against F(s)
    sym = d(latent_t, m.DAE(fake_t)[0])  # Eq. (6): t against F(t)
    latents, labels = torch.cat([latent_t, latent_s]), torch.cat([info["label_B"], info["label_A"]])
    cls = torch.nn.functional.cross_entropy(m.C(latents[labels >= 0]), labels[labels >= 0])
    F_loss = bce(m.D1(fake_s), 1) + bce(m.D2(fake_t), 1) + alpha * cst + beta * sym + cls_weight * cls
    D_loss = (bce(m.D1(t), 1) + bce(m.D1(fake_s.detach()), 0)
              + bce(m.D2(t), 1) + bce(m.D2(fake_t.detach()), 0))
    return F_loss, D_loss


def test_step_follows_the_written_out_objectives():
    """Every gradient F's and D's optimizers step on is that of Eq. (9) and Eq. (7)-(8) written out: L_sym paired
    with DAE(s), G's D2 term or D2's fake taken from F(s), or a detached L_cst changes them."""
    torch.manual_seed(0)
    m = model("--alpha", "0.3", "--beta", "2", "--cls_weight", "0.5", "--labels", "both", "--box_jitter", "0")
    for net in m.nets.values():
        net.double()  # float64, so that rounding stays far below any planted bug
    s, t, info = batch()
    s, t = s.double(), t.double()
    reference = copy.deepcopy(m)
    seen = step_gradients(m, s, t, info)
    F_loss, D_loss = written_out_objectives(reference, s, t, info, 0.3, 2, 0.5)
    for name, loss in (("F", F_loss), ("D", D_loss)):
        params = [p for g in reference.optimizers[name].param_groups for p in g["params"]]
        expected = torch.autograd.grad(loss, params, allow_unused=True)
        for got, want in zip(seen[name], expected, strict=True):
            torch.testing.assert_close(got, torch.zeros_like(got) if want is None else want, rtol=1e-7, atol=1e-10)


def test_centres_are_eq1_from_f_loc():
    """--f_loc pool: Eq. (1) written out from f_loc's layers: conv, BN, ReLU, average pool, linear, then tanh of
    --loc_gain times it, with nothing between."""
    m = model("--f_loc", "pool", "--loc_gain", "3")
    torch.nn.init.normal_(m.DAE.f_loc[-1].weight, 0, 0.5)  # off the centre
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    conv, bn, _, _, _, linear = m.DAE.f_loc
    h = torch.relu(bn(conv(m.DAE.E(x)))).mean((2, 3))
    torch.testing.assert_close(m.DAE.boxes(x)[0], torch.tanh(3 * linear(h)).view(4, 1, 2))


def test_centres_are_eq1_from_the_fc_f_loc():
    """--f_loc fc written out: conv, BN, ReLU, then the whole flattened map through linear, ReLU, linear, tanh of
    --loc_gain times it; unlike the pooled head, it can tell a digit on the left from one on the right."""
    m = model("--f_loc", "fc", "--loc_gain", "3")
    conv, bn, _, _, first, _, last = m.DAE.f_loc
    assert first.in_features == 4 * 4 * 8 * 8 and first.out_features == 4 * 4  # ch 4: 4ch × (32 / 4)² -> 4ch
    assert torch.equal(m.DAE.boxes(torch.rand(2, 3, 32, 32))[0], torch.zeros(2, 1, 2))  # boxes start centred
    torch.nn.init.normal_(last.weight, 0, 0.5)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    h = torch.relu(bn(conv(m.DAE.E(x)))).flatten(1)
    torch.testing.assert_close(m.DAE.boxes(x)[0], torch.tanh(3 * last(torch.relu(first(h)))).view(4, 1, 2))


def test_box_jitter_moves_the_crops_in_training_only():
    """--box_jitter 3: in training the crop is taken at f_loc's centres plus Gaussian noise of sd 3 px (3 · 2 / 32 in
    [-1, 1] units); in eval mode at f_loc's centres, every time."""
    m = model("--box_jitter", "3")
    torch.nn.init.normal_(m.DAE.f_loc[-1].weight, 0, 0.05)  # off the centre, far from the clamp at ±1
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    m.DAE.eval()
    centres = m.DAE.boxes(x)[0]
    latent, returned = m.DAE(x)
    assert torch.equal(returned, centres) and returned.abs().min() > 0
    torch.testing.assert_close(latent, m.DAE.attend_at(x, centres))
    m.DAE.train()
    torch.manual_seed(1)
    latent, jittered = m.DAE(x)
    centres = m.DAE.boxes(x)[0]  # train-mode BN: the same batch statistics
    torch.manual_seed(1)
    expected = (centres + 3 * 2 / 32 * torch.randn(4, 1, 2)).clamp(-1, 1)
    torch.testing.assert_close(jittered, expected)
    torch.testing.assert_close(latent, m.DAE.attend_at(x, expected))
    noise = torch.cat([m.DAE(x)[1] - centres for _ in range(200)]) * 32 / 2  # in pixels
    assert noise.std().item() == pytest.approx(3, rel=0.1)


def spots(centres, size=32):
    """White Gaussian spots (sd 1.5 px) on black, one per image at `centres` (B × 2, [-1, 1] units): B × 3 × S × S."""
    u = (2 * torch.arange(size) + 1) / size - 1  # pixel centres, as kernels/boxmask
    dx, dy = u[None, None, :] - centres[:, 0, None, None], u[None, :, None] - centres[:, 1, None, None]
    return (2 * torch.exp(-(dx ** 2 + dy ** 2) / (2 * (3 / size) ** 2)) - 1)[:, None].expand(-1, 3, -1, -1)


def test_the_default_f_loc_learns_to_put_its_box_on_the_ink():
    """The defaults' boxes can follow what they attend to: trained on a loss that pulls each box onto its image's spot
    (the ink R = X ∘ M keeps, negated), through the jittered crops of training and Adam at the paper's rate, f_loc's
    boxes on new spots move with them in eval mode (slope of box on spot, per axis, near 1; the spots' sd is 3.7 px).
    The pooled head (--f_loc pool) fails it: averaged over the image, its features barely tell where the spot is."""
    torch.manual_seed(0)
    m = model()
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        x = spots((torch.rand(32, 2, generator=g) - 0.5) * 0.8)  # anywhere in the middle 0.4 of the side
        _, centres = m.DAE(x)
        kept = box_crop(x + 1, centres, torch.full_like(centres, m.DAE.half), m.DAE.k)
        m.optimizers["F"].zero_grad()
        (-kept.mean()).backward()
        m.optimizers["F"].step()
    m.DAE.eval()
    truth = (torch.rand(200, 2, generator=g) - 0.5) * 0.8
    with torch.no_grad():
        boxes = m.DAE.boxes(spots(truth))[0][:, 0]
    b, d = boxes - boxes.mean(0), truth - truth.mean(0)
    slope = (b * d).sum(0) / (d * d).sum(0)  # least squares, per axis
    assert (slope > 0.7).all() and (boxes.std(0) * 16 > 2).all(), (slope, boxes.std(0) * 16)  # in px


def smooth(net):
    """net with every ReLU replaced by softplus: a loss without kinks, which finite differences can follow."""
    for name, child in net.named_children():
        if isinstance(child, torch.nn.ReLU):
            setattr(net, name, torch.nn.Softplus())
        else:
            smooth(child)
    return net


def test_the_gradient_to_the_centres_is_finite_differences():
    """What moves the boxes: the loss's gradient through Eq. (4)'s soft masks and the crop to f_loc's output
    (Eq. 1), by autograd against central differences of the loss in float64, for boxes off the centre."""
    torch.manual_seed(0)
    m = model("--loc_gain", "10")
    DAE, G = smooth(m.DAE).double().eval(), smooth(m.G).double().eval()
    torch.nn.init.normal_(DAE.f_loc[-1].weight, 0, 0.05)
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64) * 2 - 1
    target = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    bias = DAE.f_loc[-1].bias  # shifts every centre: x through bias[0], y through bias[1]

    def loss():
        return (G(DAE(x)[0]) - target).square().mean()

    assert DAE.boxes(x)[0].abs().min() > 0.05  # the boxes are off the centre
    grad, = torch.autograd.grad(loss(), bias)
    eps, numeric = 1e-6, torch.zeros_like(grad)
    with torch.no_grad():
        for j in range(len(bias)):
            bias[j] += eps
            up = loss()
            bias[j] -= 2 * eps
            numeric[j] = (up - loss()) / (2 * eps)
            bias[j] += eps
    assert numeric.abs().min() > 1e-6  # both coordinates move the loss
    torch.testing.assert_close(grad, numeric, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("flag, gone", [("--cst", {"cst"}), ("--sym", {"sym"}), ("--D2", {"G_adv_t"})])
def test_ablations_remove_exactly_their_term(flag, gone):
    full = set(model().train_step(*batch()))
    m = model(flag, "False")
    assert set(m.train_step(*batch())) == full - gone
    assert ("D2" in m.nets) == (flag != "--D2")


def test_without_dae_there_are_no_boxes():
    m = model("--dae", "False")
    assert not hasattr(m.DAE, "f_loc")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    latent, centres = m.DAE(x)
    assert centres is None and torch.equal(latent, m.DAE.E(x))
    assert set(m.train_step(*batch())) == {"G_adv_s", "G_adv_t", "cst", "sym", "cls", "G", "D"}


def test_paper_defaults_and_bad_flags():
    a = make_args()
    assert (a.lr, a.batch_size, a.n_boxes, a.img_size, a.decay_flag) == (2e-4, 64, 1, 32, False)
    assert (a.alpha, a.beta, a.loc_gain, a.cls_weight) == (10, 1, 1, 10)  # ours: the docstring
    assert (a.f_loc, a.box_size, a.box_jitter) == ("fc", 0.625, 3)  # boxes that follow the digit (docs/dagan.md)
    assert a.dae and a.cst and a.sym and a.D2 and a.labels == "S"  # §4.3: the source domain's labels only
    for opt in model().optimizers.values():
        assert opt.param_groups[0]["betas"] == (0.5, 0.999)
    for argv, message in ((["--box_size", "0"], "--box_size 0"), (["--k", "-1"], "--k -1.0"),
                          (["--loc_gain", "0"], "--loc_gain 0.0"), (["--box_jitter", "-1"], "--box_jitter -1.0"),
                          (["--n_boxes", "0"], "--n_boxes 0"), (["--img_size", "36"], "--img_size 36")):
        with pytest.raises(UsageError, match=message):
            model(*argv)


# --- benchmarks/probes/dagan_boxes.py: where the losses want the box ----------------------------------------------

def boxes_probe():
    sys.path.insert(0, str(ROOT / "benchmarks/probes"))
    import dagan_boxes
    return dagan_boxes


class KeptInk(torch.nn.Module):
    """A stand-in classifier on E(R) = R: class 0's logit is the ink the box keeps (over 100, which keeps the
    cross-entropy well away from 0 in float32), so label 0's cross-entropy falls as the box covers more ink."""

    def forward(self, latent):
        kept = (latent + 1).sum((1, 2, 3)) / 100
        return torch.stack([kept] + [torch.zeros_like(kept)] * 9, 1)


def test_the_box_landscape_is_lowest_with_the_box_on_the_ink():
    """A Gaussian spot of ink 3 px right of the image centre and 5 px above it (x right, y down): the ink a box keeps
    is a symmetric filter of the spot, highest with the box centred on it, so the grid's lowest cross-entropy must
    sit at (+3, −5) px, 0 px from the spot, and the image centre √34 px from it."""
    probe = boxes_probe()
    m = model("--box_size", "0.25")
    m.DAE.E, m.C = torch.nn.Identity(), KeptInk()
    size, spot = 32, torch.tensor([3.0, -5.0]) * 2 / 32
    u = (2 * torch.arange(size) + 1) / size - 1  # pixel centres, as kernels/boxmask
    ink = torch.exp(-((u[None, :] - spot[0]) ** 2 + (u[:, None] - spot[1]) ** 2) / (2 * (3 / size) ** 2))  # sd 1.5 px
    x = (2 * ink - 1).expand(1, 3, size, size)
    points = probe.grid(6, size)
    assert len(points) == 13 * 13
    lowest = points[probe.landscape(m, x, torch.tensor([0]), points).argmin(1)]
    assert torch.allclose(lowest * size / 2, torch.tensor([[3.0, -5.0]]))
    assert probe.distance_px(lowest, spot, size).item() == pytest.approx(0, abs=1e-5)
    assert probe.distance_px(torch.zeros(2), spot, size).item() == pytest.approx(34 ** 0.5)


# --- The script ----------------------------------------------------------------------------------------------

def run(tmp_path, *args):
    p = subprocess.run([sys.executable, str(ROOT / "dagan.py"), "--result_dir", str(tmp_path / "runs"), *TINY,
                        "--batch_size", "4", "--log_freq", "1", *args],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def logged(root):
    lines = (root / "log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(l).items() if k != "time"} for l in lines if "eval" not in l]


def test_cli_digits_train_resume_test(tmp_path):
    straight, parts = tmp_path / "straight", tmp_path / "parts"
    straight.mkdir()
    parts.mkdir()
    p = run(straight, "--iteration", "4", "--print_freq", "4", "--seed", "1")  # not 0: the judge's seed is 0 alone
    assert "--dataset digits" in p.stdout and "A2B/accuracy" in p.stdout
    for key in ("A2B/box_error_px", "A2B/ink_in_box", "centred/A2B/box_error_px", "centred/A2B/ink_in_box"):
        assert key in p.stdout  # where the box sits, beside a box that stays centred
    run(parts, "--iteration", "2", "--seed", "1")
    run(parts, "--iteration", "4", "--print_freq", "4", "--resume", "--seed", "1")
    root = "runs/dagan/digits"
    assert logged(parts / root) == logged(straight / root)
    assert (straight / root / "samples/0000004.png").exists()
    run(straight, "--phase", "test", "--seed", "1")
    assert len(list((straight / root / "test/A2B").iterdir())) > 0 and not (straight / root / "test/B2A").exists()

    # benchmarks/probes/dagan_boxes.py on the same run: with f_loc's boxes and with the box left at the image centre,
    # its distances and F's accuracy are the harness's evaluation (common.datasets.digits.report), computed apart
    evaluation = [json.loads(l)["eval"] for l in (straight / root / "log.jsonl").read_text().splitlines()
                  if "eval" in l][-1]
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/probes/dagan_boxes.py"),
                          str(straight / root / "checkpoints/latest.pt"), "--radius", "1"],
                         capture_output=True, text=True, check=True).stdout
    rows = {line.split("|")[0].strip(): [c.strip() for c in line.split("|")[1:]] for line in out.splitlines()
            if line.count("|") == 3}
    assert rows["f_loc's centre"][0] == f"{evaluation['A2B/box_error_px']:.2f}"
    assert rows["f_loc's centre"][2] == f"{evaluation['A2B/accuracy']:.3f}"
    assert rows["the image centre"][0] == f"{evaluation['centred/A2B/box_error_px']:.2f}"


def test_cli_on_folders_with_class_sub_folders(tmp_path):
    for split in ("trainA", "trainB", "testA", "testB"):
        for label in ("3", "7"):
            folder = tmp_path / "svhn2mnist" / split / label
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8).numpy()).save(folder / f"{i}.png")
    run(tmp_path, "--data", str(tmp_path / "svhn2mnist"), "--iteration", "2", "--print_freq", "2")
    assert "cls" in logged(tmp_path / "runs/dagan/svhn2mnist")[0]  # labels from the class folders
