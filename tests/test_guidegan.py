"""guidegan.py: the discriminators' attention (Eq. 2-3), the transfer T (Eq. 4-5), the cache of Eq. 1, the two
modes' steps and objectives, and the script end to end."""
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


def batch(n=2, index=(3, 7)):
    x, y = torch.rand(n, 3, 32, 32) * 2 - 1, torch.rand(n, 3, 32, 32) * 2 - 1
    i = torch.tensor(index[:n])
    return x, y, {"index_A": i, "index_B": i + 1, "label_A": -torch.ones(n, dtype=torch.long),
                  "label_B": -torch.ones(n, dtype=torch.long)}


def snapshot(m):
    return {k: copy.deepcopy(net.state_dict()) for k, net in m.nets.items()}


def changed(m, before, name):
    return any(not torch.equal(v, before[name][k]) for k, v in m.nets[name].state_dict().items())


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
    torch.testing.assert_close(A, F.interpolate(M.mean(1, keepdim=True), size=(40, 40), mode="bilinear",
                                                align_corners=False))
    assert sum(isinstance(l, torch.nn.Conv2d) for l in D.trunk) == 3 and logits.shape[1] == 1


# --- T and Eq. (1) ---------------------------------------------------------------------------------------------

def test_concatenations_give_3_and_4_channels():
    x, M = torch.randn(2, 3, 8, 8), torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(guidegan.Transfer("residual")(x, M), (M + 1) * x)  # Eq. (4)
    rgba = guidegan.Transfer("rgba")(x, M)
    assert rgba.shape == (2, 4, 8, 8) and torch.equal(rgba[:, :3], x) and rgba[:, 3].abs().max() <= 1  # Eq. (5)
    for argv, channels in ((["--concat", "residual"], 3), (["--concat", "rgba"], 4), (["--attention", "none"], 3)):
        for mode in ("supervised", "unsupervised"):
            m = model("--mode", mode, *argv)
            first = next(l for l in m.G_X.modules() if isinstance(l, torch.nn.Conv2d))
            assert first.in_channels == channels
    assert "T" in model("--concat", "rgba").nets and "T" not in model().nets


def test_cache_starts_at_ones_and_keeps_each_images_last_map():
    m = model()
    x, y, info = batch()
    assert torch.equal(m.cache["A"].get(info["index_A"], x), torch.ones(2, 1, 32, 32))
    seen = []
    m.D_Y.register_forward_hook(lambda mod, i, out: seen.append(out[1]))
    m.train_step(x, y, info)
    stored = m.cache["A"].get(torch.tensor([7, 3, 5]), x[:1].expand(3, -1, -1, -1))
    torch.testing.assert_close(stored[:2], seen[0].flip(0), atol=1e-3, rtol=0)  # the map D gave in G's step
    assert torch.equal(stored[2], torch.ones(1, 32, 32))  # an image not yet seen
    assert not torch.equal(stored[0], torch.ones(1, 32, 32))
    state = m.cache["A"].state_dict()
    fresh = guidegan.AttentionCache()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.get(torch.tensor([3, 7]), x), m.cache["A"].get(torch.tensor([3, 7]), x))
    assert "attention_A" in m.pools and "attention_B" in m.pools


def test_generator_reads_the_cached_map():
    m = model()
    x, y, info = batch()
    m.train_step(x, y, info)
    M_x = m.cache["A"].get(info["index_A"], x)
    seen = []
    m.G_X.register_forward_pre_hook(lambda mod, i: seen.append(i[0]))
    m.train_step(x, y, info)
    torch.testing.assert_close(seen[0], (M_x + 1) * x)  # Eq. (1) with Eq. (4)


def test_translate_runs_eq1_once():
    m = model()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    for net in m.nets.values():
        net.eval()
    y1, M = m.translate(x, "A2B")
    y0 = m.G_X(2 * x)  # all-ones map: (1 + 1)·x
    _, M0 = m.D_Y(torch.cat([x, y0], 1))
    torch.testing.assert_close(M, M0)
    torch.testing.assert_close(y1, m.G_X((M0 + 1) * x))
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


@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
@pytest.mark.parametrize("attention, concat", [("posthoc", "residual"), ("posthoc", "rgba"), ("ram", "residual"),
                                               ("ram", "rgba"), ("none", "residual")])
def test_one_step_per_mode_attention_and_concat(mode, attention, concat):
    m = model("--mode", mode, "--attention", attention, "--concat", concat)
    assert m.paired == (mode == "supervised")
    before = snapshot(m)
    losses = m.train_step(*batch())
    assert set(losses) == {"G_adv", "G_l1", "G", "D"} and all(torch.isfinite(v) for v in losses.values())
    assert all(changed(m, before, k) for k in m.nets)
    torch.testing.assert_close(losses["G"], 10 * losses["G_adv"] + 10 * losses["G_l1"])
    assert len(m.cache["A"].maps) == (0 if attention == "none" else 2)


def test_supervised_l1_is_eq8_and_d_is_conditional():
    m = model("--attention", "none", "--dropout", "False")
    x, y, info = batch()
    seen = []
    m.D_Y.register_forward_pre_hook(lambda mod, i: seen.append(i[0]))
    with torch.no_grad():
        expected = F.l1_loss(m.G_X(x), y) + F.l1_loss(m.G_Y(y), x)
    losses = m.train_step(x, y, info)
    torch.testing.assert_close(losses["G_l1"], expected)
    assert seen[0].shape[1] == 6 and torch.equal(seen[0][:, :3], x)


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
    with pytest.raises(UsageError, match="--pool_size 0"):
        model("--pool_size", "0")


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
