"""guidegan.py: the discriminators' attention (Eq. 2-3), the transfer T (Eq. 4-5), Eq. 1 in training and at test
time, the two modes' steps against their objectives written out, and the script end to end."""
import copy
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import guidegan
from common.train import UsageError, build_parser, parse_args
from conftest import ROOT

TINY = ["--img_size", "32", "--ngf", "4", "--ndf", "4", "--n_res", "1"]


def make_args(*argv):
    parser = build_parser("guidegan", "", guidegan.DEFAULTS)
    guidegan.add_arguments(parser)
    return parse_args(parser, [*TINY, *argv], {})  # with the harness's checks


def model(*argv):
    return guidegan.make_model(make_args(*argv), torch.device("cpu"))


def batch(n=2):
    return torch.rand(n, 3, 32, 32) * 2 - 1, torch.rand(n, 3, 32, 32) * 2 - 1


# --- Attention from the discriminator, Eq. (2)-(3) ---------------------------------------------------------------

@pytest.mark.parametrize("size", [32, 40])
def test_posthoc_attention_is_eq2_from_the_4th_conv(size):
    D = guidegan.PosthocD(3, 4)
    x = torch.randn(2, 3, size, size)
    logits, M = D(x)
    assert M.shape == (2, 1, size, size) and M.min() >= 0 and M.max() <= 1
    convs = [i for i, layer in enumerate(D.model) if isinstance(layer, torch.nn.Conv2d)]
    a = D.model[:convs[3] + 3](x)  # the 4th conv, its norm, its LeakyReLU
    m = a.abs().mean(1, keepdim=True)
    m = (m - m.amin((2, 3), keepdim=True)) / (m.amax((2, 3), keepdim=True) - m.amin((2, 3), keepdim=True))
    torch.testing.assert_close(M, F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False))
    torch.testing.assert_close(logits, D.model[-1](a))
    assert len(convs) == 5  # Appendix A: a PatchGAN of 5 conv layers


def test_ram_combines_trunk_and_mask_as_eq3():
    D = guidegan.RAMD(3, 4)
    seen = {}
    D.trunk.register_forward_hook(lambda mod, i, out: seen.update(T=out))
    D.classifier.register_forward_pre_hook(lambda mod, i: seen.update(E=i[0]))
    x = torch.randn(2, 3, 40, 40)
    logits, A = D(x)
    T = seen["T"]
    M = torch.sigmoid(F.interpolate(D.mask(D.features(x)), size=T.shape[-2:], mode="bilinear", align_corners=False))
    torch.testing.assert_close(seen["E"], (M + 1) * T)
    assert A.shape == (2, 1, 40, 40) and A.min() >= 0 and A.max() <= 1
    m = M.mean(1, keepdim=True)
    low, high = m.amin((2, 3), keepdim=True), m.amax((2, 3), keepdim=True)  # on post hoc's scale, Eq. 2's g
    torch.testing.assert_close(A, F.interpolate((m - low) / (high - low), size=(40, 40), mode="bilinear",
                                                align_corners=False))
    assert sum(isinstance(l, torch.nn.Conv2d) for l in D.trunk) == 3 and logits.shape[1] == 1


# --- T and Eq. (1) ---------------------------------------------------------------------------------------------

def unit(x):
    return (x + 1) / 2  # images in [-1, 1] on the [0, 1] pixel scale the paper argues on


def test_residual_transfer_is_eq4_on_the_unit_pixel_scale():
    x, M = torch.rand(2, 3, 8, 8) * 2 - 1, torch.rand(2, 1, 8, 8)
    out = guidegan.Transfer("residual")(x, M)
    torch.testing.assert_close(unit(out), (M + 1) * unit(x) / 2)  # Eq. (4), halved
    torch.testing.assert_close(guidegan.Transfer("residual")(x, torch.ones_like(M)), x)  # all ones: the image
    grey = torch.zeros(1, 3, 8, 8)  # mid-grey: (M + 1)·x on [-1, 1] would carry nothing here
    assert (guidegan.Transfer("residual")(grey, torch.zeros(1, 1, 8, 8)) - grey).abs().min() > 0.2


def test_rgba_alpha_starts_as_the_map_and_learns():
    T = guidegan.Transfer("rgba")
    x, M = torch.randn(2, 3, 8, 8), torch.rand(2, 1, 8, 8, requires_grad=True)
    rgba = T(x, M)
    assert rgba.shape == (2, 4, 8, 8) and torch.equal(rgba[:, :3], x)
    torch.testing.assert_close(rgba[:, 3:], 2 * M - 1)  # an affine image of M on the images' scale
    (rgba[:, 3:] ** 3).sum().backward()
    # g learns from the first step: its affine part and h's last layer (h's first once the last is off zero)
    assert all(p.grad.abs().sum() > 0 for p in [*T.affine.parameters(), *T.h[-1].parameters()])
    m = model("--concat", "rgba")
    torch.testing.assert_close(m.T(x, M)[:, 3:], 2 * M - 1)  # the model's initialisation leaves T's start alone
    for argv, channels in ((["--concat", "residual"], 3), (["--concat", "rgba"], 4), (["--attention", "none"], 3)):
        for mode in ("supervised", "unsupervised"):
            m = model("--mode", mode, *argv)
            first = next(l for l in m.G_X.modules() if isinstance(l, torch.nn.Conv2d))
            assert first.in_channels == channels
    assert "T" in model("--concat", "rgba").nets and "T" not in model().nets
    with pytest.raises(UsageError, match="--concat rgba"):
        model("--attention", "none", "--concat", "rgba")


@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
@pytest.mark.parametrize("concat", ["residual", "rgba"])
def test_an_informative_map_changes_the_output_and_a_constant_one_does_not(mode, concat):
    """The mechanism alive at initialisation: a map marking half the image moves G's output by at least a third of
    what another image does; in the ResNet generator, whose first layer is a conv and instance norm, a constant map
    changes it by rounding only (it holds no information, and no gradient reaches g from it)."""
    torch.manual_seed(0)
    m = model("--mode", mode, "--concat", concat, "--dropout", "False")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    half = torch.zeros(2, 1, 32, 32)
    half[..., :16] = 1
    with torch.no_grad():
        ones = m.guided(m.G_X, x, torch.ones_like(half))
        informative = (m.guided(m.G_X, x, half) - ones).abs().mean()
        other_image = (m.guided(m.G_X, x.flip(0), torch.ones_like(half)) - ones).abs().mean()
        assert informative > other_image / 3
        if mode == "unsupervised":
            for c in (0.0, 0.5):
                assert (m.guided(m.G_X, x, torch.full_like(half, c)) - ones).abs().max() < 1e-3


def test_every_step_runs_eq1_with_ds_map_of_the_first_pass():
    """G's two passes in train_step: x ⊕ T(1), then x ⊕ T(M) with M D's map of the first pass's output, recomputed
    from a copy of the networks as they were; never a constant map, from the first step on."""
    m = model("--dropout", "False")
    x, y = batch()
    for step in range(3):
        before = copy.deepcopy(m)
        seen = []
        hook = m.G_X.register_forward_pre_hook(lambda mod, i: seen.append(i[0]))
        m.train_step(x, y)
        hook.remove()
        y0 = before.G_X(x)  # the all-ones map gives the image itself
        _, M = before.D_Y(torch.cat([x, y0], 1))
        assert M.amax() - M.amin() > 0.9  # min-maxed: an informative map
        torch.testing.assert_close(seen[0], x)
        torch.testing.assert_close(seen[1], 2 * ((M + 1) * unit(x) / 2) - 1)
        assert len(seen) == 2  # supervised: no way back


def test_translate_runs_eq1_as_training_does():
    m = model()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    for net in m.nets.values():
        net.eval()
    y1, M = m.translate(x, "A2B")
    y0 = m.G_X(x)
    _, M0 = m.D_Y(torch.cat([x, y0], 1))
    torch.testing.assert_close(M, M0)
    torch.testing.assert_close(y1, m.G_X(2 * ((M0 + 1) * unit(x) / 2) - 1))
    plain = model("--attention", "none")
    assert plain.translate(x, "B2A")[1] is None


# --- Networks and the training step ----------------------------------------------------------------------------

def test_unet_levels_and_dropout():
    assert [guidegan.n_down(s) for s in (32, 64, 128, 256, 100)] == [5, 6, 7, 7, 2]
    with torch.device("meta"):
        net = guidegan.unet(3, 64, 7, True)
    downs = [l for l in net.modules() if isinstance(l, torch.nn.Conv2d)]
    assert [c.out_channels for c in downs] == [64, 128, 256, 512, 512, 512, 512]  # UNet-128
    assert sum(isinstance(l, torch.nn.Dropout) for l in net.modules()) == 2
    out = guidegan.unet(4, 4, guidegan.n_down(32), True)(torch.randn(1, 4, 32, 32))
    assert out.shape == (1, 3, 32, 32) and out.abs().max() <= 1


def step_gradients(m, x, y):
    """Run train_step; return each optimizer's gradients as its step saw them, in parameter order."""
    seen = {}
    for name, opt in m.optimizers.items():
        def step(*args, _opt=opt, _orig=opt.step, _name=name, **kwargs):
            seen[_name] = [p.grad.clone() for g in _opt.param_groups for p in g["params"]]
            return _orig(*args, **kwargs)
        opt.step = step
    losses = m.train_step(x, y)
    return seen, losses


def written_out_objectives(m, x, y):
    """Eq. (1), (7)-(11) and D's halved LSGAN, written from the paper on a copy of the networks (the transfer
    from T, tested above): G's loss, then D's, with the fakes D sees (y1, or G(x) without attention)."""
    mse = lambda a, t: ((a - t) ** 2).mean()  # noqa: E731
    l1 = lambda a, b: (a - b).abs().mean()  # noqa: E731
    D_in = (lambda s, t: torch.cat([s, t], 1)) if m.supervised else (lambda s, t: t)  # noqa: E731
    ones = torch.ones_like(x[:, :1])
    G_loss, fakes = 0, {}
    for G, D, G_back, source, target in ((m.G_X, m.D_Y, m.G_Y, x, y), (m.G_Y, m.D_X, m.G_X, y, x)):
        if m.attention == "none":
            iterates = [G(source)]
        else:
            y0 = G(m.T(source, ones))
            M = D(D_in(source, y0))[1].detach()
            iterates = [y0, G(m.T(source, M))]
        adv = sum(mse(D(D_in(source, f))[0], 1) for f in iterates) / len(iterates)
        if m.supervised:
            rec = sum(l1(f, target) for f in iterates) / len(iterates)
        else:
            back = (lambda f: G_back(f)) if m.attention == "none" else (lambda f: G_back(m.T(f, ones)))
            rec = sum(l1(back(f), source) for f in iterates) / len(iterates)
        G_loss = G_loss + 10 * adv + 10 * rec
        fakes[id(D)] = (source, target, iterates[-1].detach())
    D_loss = sum(0.5 * (mse(D(D_in(s, t))[0], 1) + mse(D(D_in(s, f))[0], 0))
                 for D, (s, t, f) in ((m.D_Y, fakes[id(m.D_Y)]), (m.D_X, fakes[id(m.D_X)])))
    return G_loss, D_loss


@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
@pytest.mark.parametrize("attention, concat", [("posthoc", "residual"), ("posthoc", "rgba"), ("ram", "residual"),
                                               ("ram", "rgba"), ("none", "residual")])
def test_step_follows_the_written_out_objectives(mode, attention, concat):
    """Every gradient G's and D's optimizers step on is that of the objective written from the paper: a flipped
    LSGAN target, a detached cycle or a map that skips a pass changes them."""
    torch.manual_seed(0)
    m = model("--mode", mode, "--attention", attention, "--concat", concat, "--dropout", "False")
    for net in (*m.nets.values(), m.T):
        net.double()  # float64, so that the two computations differ by rounding far below any planted bug
    x, y = (t.double() for t in batch(1))  # one image: the pool hands D this step's fake
    reference = copy.deepcopy(m)
    seen, losses = step_gradients(m, x, y)
    assert set(losses) == {"G_adv", "G_l1", "G", "D"} and all(torch.isfinite(v) for v in losses.values())
    G_loss, D_loss = written_out_objectives(reference, x, y)
    for name, loss in (("G", G_loss), ("D", D_loss)):
        params = [p for g in reference.optimizers[name].param_groups for p in g["params"]]
        expected = torch.autograd.grad(loss, params, allow_unused=True)
        assert len(expected) == len(seen[name])
        for got, want in zip(seen[name], expected):
            torch.testing.assert_close(got, torch.zeros_like(got) if want is None else want, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(losses["G"], G_loss.detach(), rtol=1e-10, atol=0)
    assert m.paired == (mode == "supervised")


def test_paper_defaults_and_bad_flags():
    parser = build_parser("guidegan", "", guidegan.DEFAULTS)
    guidegan.add_arguments(parser)
    a = parser.parse_args([])
    assert (a.lr, a.batch_size, a.epochs, a.decay_epoch, a.adv_weight, a.l1_weight) == (2e-4, 1, 150, 100, 10, 10)
    assert (a.mode, a.attention, a.concat, a.img_size, a.pool_size) == ("supervised", "posthoc", "residual", 128, 50)
    for opt in model().optimizers.values():
        assert opt.param_groups[0]["betas"] == (0.5, 0.999)
    a = parser.parse_args(["--mode", "unsupervised", "--img_size", "32", "--ngf", "2", "--ndf", "2"])
    blocks = sum(type(l).__name__ == "ResnetBlock" for l in guidegan.make_model(a, torch.device("cpu")).G_X)
    assert blocks == 6  # Appendix A: 6 residual blocks below 256 px
    with pytest.raises(UsageError, match="--n_res 0"):
        model("--n_res", "0")
    with pytest.raises(UsageError, match="--pool_size -1"):
        model("--pool_size", "-1")


# --- The script ----------------------------------------------------------------------------------------------

def run(tmp_path, *args, check=True):
    p = subprocess.run([sys.executable, str(ROOT / "guidegan.py"), "--result_dir", str(tmp_path / "runs"), *TINY,
                        "--log_freq", "1", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def logged(root):
    lines = (root / "log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(l).items() if k != "time"} for l in lines if "eval" not in l]


@pytest.mark.parametrize("argv, data", [([], "shapes_paired"),
                                        (["--mode", "unsupervised", "--data", "shapes", "--attention", "ram"],
                                         "shapes")])
def test_cli_train_resume_exactly(tmp_path, argv, data):
    straight, parts = tmp_path / "straight", tmp_path / "parts"
    straight.mkdir()
    parts.mkdir()
    argv = [*argv, "--decay_flag", "False"]  # the decay follows --iteration, which the first part shortens
    run(straight, *argv, "--iteration", "4", "--print_freq", "4")
    run(parts, *argv, "--iteration", "2", "--print_freq", "4")
    run(parts, *argv, "--iteration", "4", "--print_freq", "4", "--resume")
    root = f"runs/guidegan/{data}"
    assert logged(parts / root) == logged(straight / root)
    assert (straight / root / "samples/0000004.png").exists()


def test_cli_supervised_needs_paired_data(tmp_path):
    p = run(tmp_path, "--data", "shapes", "--iteration", "2", check=False)
    assert p.returncode == 2 and "shapes is unpaired" in p.stderr and len(p.stderr.splitlines()) == 1


def test_cli_on_a_pix2pix_folder(tmp_path):
    """Side-by-side A|B images in train/ and val/, as the pix2pix data sets come."""
    for split in ("train", "val"):
        (tmp_path / "facades" / split).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(torch.randint(0, 256, (40, 80, 3), dtype=torch.uint8).numpy()).save(
                tmp_path / "facades" / split / f"{i}.jpg")
    run(tmp_path, "--data", str(tmp_path / "facades"), "--iteration", "2")
    run(tmp_path, "--data", str(tmp_path / "facades"), "--phase", "test")
    assert len(list((tmp_path / "runs/guidegan/facades/test/B2A").iterdir())) == 3


def test_map_benchmark_scores_what_the_run_scored(tmp_path):
    """benchmarks/probes/guidegan_map.py: with D's map it scores exactly what the run's own evaluation logged."""
    run(tmp_path, "--iteration", "2", "--result_dir", str(tmp_path / "table/row/seed0"))
    evaluated = json.loads((tmp_path / "table/row/seed0/guidegan/shapes_paired/log.jsonl").read_text()
                           .splitlines()[-1])["eval"]
    for folder in ("table", "table/row/seed0/guidegan/shapes_paired"):  # the runner's folder, or the run's own
        p = subprocess.run([sys.executable, str(ROOT / "benchmarks/probes/guidegan_map.py"), str(tmp_path / folder)],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        b2a = [l for l in p.stdout.splitlines() if l.startswith("| row | 1 |")][-1]  # B2A's table comes second
        assert b2a.split(" | ")[2] == f"{evaluated['B2A/pixel_acc']:.3f} ± n/a"
