"""ugatit.py: output shapes, the equations' properties, one training step, save -> load, single-colour images."""
import copy
import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import ugatit
from common.blocks import InstanceNorm2d
from common.train import build_parser, load_checkpoint, load_nets, save_checkpoint
from conftest import ROOT


def make_args(**kw):
    parser = build_parser("ugatit", "", ugatit.DEFAULTS)
    ugatit.add_arguments(parser)
    args = parser.parse_args([])
    args.__dict__.update(dict(img_size=64, ch=4, n_res=1, light=True, n_dis=5, dataset="shapes"), **kw)
    return args


def model(**kw):
    return ugatit.make_model(make_args(**kw), torch.device("cpu"))


def images(n=1, size=64):
    return torch.rand(n, 3, size, size) * 2 - 1, torch.rand(n, 3, size, size) * 2 - 1


def test_paper_hyperparameters_are_the_defaults():
    args = build_parser("ugatit", "", ugatit.DEFAULTS)
    ugatit.add_arguments(args)
    a = args.parse_args([])
    assert (a.adv_weight, a.cycle_weight, a.identity_weight, a.cam_weight) == (1, 10, 10, 1000)  # Eq. (7)
    assert (a.lr, a.weight_decay, a.batch_size, a.img_size, a.iteration) == (1e-4, 1e-4, 1, 256, 1_000_000)
    assert (a.ch, a.n_res, a.n_dis, a.light, a.decay_flag, a.norm) == (64, 4, 6, False, True, "adalin")
    m = model()
    opt = m.optimizers["G"].param_groups[0]
    assert opt["betas"] == (0.5, 0.999) and opt["weight_decay"] == 1e-4 and opt["lr"] == 1e-4


@pytest.mark.parametrize("light", [True, False])
@pytest.mark.parametrize("size", [64, 96, 80])
def test_output_shapes(light, size):
    m = model(light=light, img_size=size, n_dis=6)
    x = torch.rand(2, 3, size, size) * 2 - 1
    image, cam_logit, heatmap = m.genA2B(x)
    assert image.shape == x.shape and image.abs().max() <= 1
    assert cam_logit.shape == (2, 2) and heatmap.shape == (2, 1, size // 4, size // 4)
    for D in (m.disGA, m.disLA):
        logit, cam, heat = D(x)
        assert logit.dim() == 4 and logit.shape[:2] == (2, 1) and min(logit.shape[2:]) >= 1
        assert cam.shape == (2, 2) and heat.shape[:2] == (2, 1)
    y, att = m.translate(x, "B2A")
    assert y.shape == x.shape and att.shape == (2, 1, size // 4, size // 4)


def test_discriminator_depth_follows_the_paper_at_256():
    count = lambda D: sum(isinstance(m, torch.nn.Conv2d) for m in D.encoder)  # noqa: E731
    with torch.device("meta"):
        assert count(ugatit.Discriminator(6, 256, 64)) == 6 and count(ugatit.Discriminator(4, 256, 64)) == 4
        # Table 6: 256 / 32 = 8 after the five stride-2 convs, 2048 channels after the stride-1 one.
        g = ugatit.Discriminator(6, 256, 64)
        assert g(torch.empty(1, 3, 256, 256))[0].shape == (1, 1, 6, 6)
        assert ugatit.Discriminator(4, 256, 64)(torch.empty(1, 3, 256, 256))[0].shape == (1, 1, 30, 30)


def test_light_and_full_mlp_inputs():
    with torch.device("meta"):
        assert ugatit.Generator(64, 4, 256, light=True).mlp[0].in_features == 256
        assert ugatit.Generator(64, 4, 256, light=False).mlp[0].in_features == 64 * 64 * 256


def test_rho_initialised_per_paper_and_clipped_to_unit_interval():
    m = model()
    rhos = {type(mod).__name__: mod.rho for mod in m.genA2B.modules() if hasattr(mod, "rho")}
    assert torch.all(rhos["AdaLIN"] == 1) and torch.all(rhos["LIN"] == 0)  # §2.1.1
    for net in (m.genA2B, m.genB2A):
        for mod in net.modules():
            if hasattr(mod, "rho"):
                mod.rho.data.uniform_(-0.5, 1.5)
    for g in m.optimizers["G"].param_groups:
        g["lr"] = 0.5
    m.train_step(*images())
    for net in (m.genA2B, m.genB2A):
        for mod in net.modules():
            if hasattr(mod, "rho"):
                assert mod.rho.min() >= 0 and mod.rho.max() <= 1
    assert any((mod.rho == 1).any() or (mod.rho == 0).any() for mod in m.genA2B.modules() if hasattr(mod, "rho"))


def test_train_step_updates_every_network_and_losses_are_finite():
    m = model()
    before = {k: copy.deepcopy(n.state_dict()) for k, n in m.nets.items()}
    losses = m.train_step(*images(2))
    assert set(losses) == {"D", "G", "G_adv", "G_cycle", "G_identity", "G_cam"}
    assert all(torch.isfinite(v) for v in losses.values())
    w = m.w
    total = w["adv"] * losses["G_adv"] + w["cycle"] * losses["G_cycle"] + w["identity"] * losses["G_identity"] \
        + w["cam"] * losses["G_cam"]
    torch.testing.assert_close(losses["G"], total)
    for k, net in m.nets.items():
        changed = [n for n, p in net.state_dict().items() if not torch.equal(p, before[k][n])]
        assert changed, f"{k} did not change"


def naive_generator_loss(m, real_A, real_B):
    """Eq. (7) for the generators as one sum with every pass recomputed, the way the paper writes it."""
    bce = F.binary_cross_entropy_with_logits
    fake_A2B, cam_A2B, _ = m.genA2B(real_A)
    fake_B2A, cam_B2A, _ = m.genB2A(real_B)
    fake_A2B2A, _, _ = m.genB2A(fake_A2B)
    fake_B2A2B, _, _ = m.genA2B(fake_B2A)
    fake_A2A, cam_A2A, _ = m.genB2A(real_A)
    fake_B2B, cam_B2B, _ = m.genA2B(real_B)

    def adv(D, fake):
        logit, cam, _ = D(fake)
        return F.mse_loss(logit, torch.ones_like(logit)) + F.mse_loss(cam, torch.ones_like(cam))
    L_adv = adv(m.disGB, fake_A2B) + adv(m.disLB, fake_A2B) + adv(m.disGA, fake_B2A) + adv(m.disLA, fake_B2A)
    L_cycle = F.l1_loss(fake_A2B2A, real_A) + F.l1_loss(fake_B2A2B, real_B)
    L_identity = F.l1_loss(fake_A2A, real_A) + F.l1_loss(fake_B2B, real_B)
    L_cam = (bce(cam_A2B, torch.ones_like(cam_A2B)) + bce(cam_B2B, torch.zeros_like(cam_B2B))
             + bce(cam_B2A, torch.ones_like(cam_B2A)) + bce(cam_A2A, torch.zeros_like(cam_A2A)))
    return 1 * L_adv + 10 * L_cycle + 10 * L_identity + 1000 * L_cam


def test_generator_gradients_are_those_of_eq7():
    """The step back-propagates Eq. (7) in groups; their sum must be the gradient of the whole objective."""
    m = model()
    real_A, real_B = images(2)
    captured = {}
    step = m.optimizers["G"].step

    def capture(*a, **kw):
        captured["nets"] = {k: copy.deepcopy(n) for k, n in m.nets.items()}
        captured["grads"] = [p.grad.clone() for p in m.optimizers["G"].param_groups[0]["params"]]
        return step(*a, **kw)
    m.optimizers["G"].step = capture
    losses = m.train_step(real_A, real_B)
    ref = SimpleNamespace(**captured["nets"])
    for D in (ref.disGA, ref.disGB, ref.disLA, ref.disLB):
        D.eval()  # the power iteration already ran in the step: use the u, v it used
        D.requires_grad_(False)
    loss = naive_generator_loss(ref, real_A, real_B)
    torch.testing.assert_close(loss, losses["G"], rtol=1e-5, atol=1e-4)
    params = [*ref.genA2B.parameters(), *ref.genB2A.parameters()]
    grads = torch.autograd.grad(loss, params)
    for ours, theirs in zip(captured["grads"], grads):
        assert (ours - theirs).abs().max() <= 1e-4 * theirs.abs().max() + 1e-7


def test_discriminator_gradients_are_those_of_eq2_and_eq6():
    """Each discriminator's update in the step: LSGAN with real -> 1, fake -> 0 on its patch logits (Eq. 2) and its
    CAM logits (Eq. 6), real from its own domain, fake from the generator into that domain, written out here."""
    m = model()
    real_A, real_B = images(2)
    gens = copy.deepcopy(SimpleNamespace(A2B=m.genA2B, B2A=m.genB2A))  # the D phase runs before G's update
    captured = {}
    for name, opt in m.optimizers.items():
        if name.startswith("dis"):
            def capture(*a, name=name, step=opt.step, **kw):
                assert name not in captured, f"{name} stepped twice"
                captured[name] = copy.deepcopy(m.nets[name]), [p.grad.clone() for p in m.nets[name].parameters()]
                return step(*a, **kw)
            opt.step = capture
    m.train_step(real_A, real_B)
    assert sorted(captured) == ["disGA", "disGB", "disLA", "disLB"]
    with torch.no_grad():
        fake = {"A": gens.B2A(real_B)[0], "B": gens.A2B(real_A)[0]}
    real = {"A": real_A, "B": real_B}
    for name, (D, grads) in captured.items():
        D.eval()  # the step's power iteration already ran: use the u, v it used
        domain = name[-1]
        logit_r, cam_r, _ = D(real[domain])
        logit_f, cam_f, _ = D(fake[domain])
        loss = ((logit_r - 1) ** 2).mean() + (logit_f ** 2).mean() + ((cam_r - 1) ** 2).mean() + (cam_f ** 2).mean()
        for ours, theirs in zip(grads, torch.autograd.grad(loss, list(D.parameters()))):
            assert (ours - theirs).abs().max() <= 1e-4 * theirs.abs().max() + 1e-7, name


@pytest.mark.parametrize("kw", [dict(norm="in"), dict(norm="ln"), dict(norm="adain"), dict(norm="gn"),
                                dict(gen_cam=False), dict(dis_cam=False), dict(gen_cam=False, dis_cam=False),
                                dict(light=False)])
def test_table1_ablations_train(kw):
    m = model(**kw)
    losses = m.train_step(*images())
    assert all(torch.isfinite(v) for v in losses.values())
    assert ("G_cam" in losses) == kw.get("gen_cam", True)
    if kw.get("norm") in ("in", "ln", "gn"):
        assert m.genA2B.mlp is None  # no adaptive γ, β without AdaLIN / AdaIN
    if not kw.get("gen_cam", True):
        assert m.translate(images()[0])[1] is None


def test_save_load_gives_identical_outputs(tmp_path):
    args = make_args()
    m = ugatit.make_model(args, torch.device("cpu"))
    m.train_step(*images())
    path = tmp_path / "ckpt" / "latest.pt"
    save_checkpoint(path, m, {}, 1, args)
    assert not list(path.parent.glob("*.tmp"))
    m2 = ugatit.make_model(args, torch.device("cpu"))
    state = load_checkpoint(path)
    load_nets(m2.nets, state["nets"], path)
    x = images(2)[0]
    for direction in ("A2B", "B2A"):
        a, b = m.translate(x, direction), m2.translate(x, direction)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for D in ("disGA", "disLB"):
        m.nets[D].eval(), m2.nets[D].eval()
        assert torch.equal(m.nets[D](x)[0], m2.nets[D](x)[0])


# --- A single-colour image: every map of the generator is constant. An instance norm that back-propagates through a
# constant map multiplies the gradient by 1/sqrt(ε) = 316, and 21 such norms at n_res 4 overflow to inf and NaN;
# common.blocks.InstanceNorm2d gives 0 and no gradient there. ch 8, n_res 4 is the smallest net we saw overflow.

def test_instance_norm_of_a_constant_map_is_zero_without_gradient():
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    x[0, 1] = 1000.0
    x[1, 2] = -3.0
    x.requires_grad_()
    y = InstanceNorm2d(3)(x)
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    varies = torch.ones(2, 3, dtype=torch.bool)
    varies[0, 1] = varies[1, 2] = False
    assert torch.equal(y[~varies], torch.zeros(2, 5, 6, dtype=torch.float64))
    assert torch.equal(dx[~varies], torch.zeros(2, 5, 6, dtype=torch.float64))
    # Maps that vary: nn.InstanceNorm2d's values and gradients, bit for bit.
    x2 = x.detach().requires_grad_()
    y2 = nn.InstanceNorm2d(3)(x2)
    (dx2,) = torch.autograd.grad(y2, x2, dy)
    assert torch.equal(y[varies], y2[varies]) and torch.equal(dx[varies], dx2[varies])


def test_a_single_colour_image_gives_finite_and_exact_gradients():
    """The cycle A -> B -> A of Eq. (3) and the CAM loss of Eq. (5) on a grey image. Every weight of the encoder can
    only move its constant maps by a constant, which the next norm removes: their exact gradient is 0."""
    G_AB, G_BA = (ugatit.Generator(ch=8, n_res=4, img_size=32, light=True) for _ in range(2))
    with torch.no_grad():  # non-zero constant maps into the decoders, as after some training
        G_AB.cam.conv1x1.bias.normal_()
        G_BA.cam.conv1x1.bias.normal_()
    x = torch.full((1, 3, 32, 32), 0.2)
    fake, cam, _ = G_AB(x)
    loss = 10 * F.l1_loss(G_BA(fake)[0], x) + 1000 * F.binary_cross_entropy_with_logits(cam, torch.ones_like(cam))
    loss.backward()
    grads = {f"{i}.{n}": p.grad for i, G in enumerate((G_AB, G_BA)) for n, p in G.named_parameters()}
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert all(torch.equal(g, torch.zeros_like(g)) for n, g in grads.items() if ".encoder." in n)
    # G_BA's decoder learns (its maps are non-zero constants); G_AB gets no gradient: its output is a constant image,
    # and G_BA's first norm removes any constant change to it.
    assert grads["1.upsampling.8.beta"].abs().max() > 0 and grads["1.upsampling.11.weight"].abs().max() > 0


def test_training_on_single_colour_images_keeps_every_loss_finite(tmp_path):
    """A trainA of single-colour images, end to end: a grey 64×64, a 1×1 and a 1×5000 image (each resized to a
    constant crop)."""
    data = tmp_path / "solid"
    for domain in ("trainA", "trainB"):
        (data / domain).mkdir(parents=True)
    for name, size, colour in (("grey", (64, 64), (128, 128, 128)), ("dot", (1, 1), (200, 30, 30)),
                               ("strip", (1, 5000), (20, 40, 220))):
        Image.new("RGB", size, colour).save(data / "trainA" / f"{name}.png")
    for i in range(2):
        noise = torch.randint(0, 256, (40, 40, 3), dtype=torch.uint8).numpy()
        Image.fromarray(noise).save(data / "trainB" / f"{i}.png")
    p = subprocess.run([sys.executable, str(ROOT / "ugatit.py"), "--dataset", str(data), "--result_dir",
                        str(tmp_path / "runs"), "--img_size", "32", "--ch", "8", "--n_res", "4", "--n_dis", "4",
                        "--light", "--log_freq", "1", "--iteration", "6"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})  # on a busy 2-core machine: 4 s, not 96
    assert p.returncode == 0, p.stderr[-3000:]
    log = [json.loads(line) for line in (tmp_path / "runs/ugatit/solid/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
    assert all(math.isfinite(v) for r in log for k, v in r.items() if k not in ("step", "time", "lr"))
