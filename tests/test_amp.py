"""--amp (common.amp): every script trains under bf16 autocast with float32 losses close to float32 training's, fp16's
loss scaling skips only the step that overflowed, spectral norm keeps σ in float32, and an fp16 run resumes exactly,
loss scales included."""
import importlib
import shutil

import pytest
import torch

from common.amp import Precision
from common.blocks import SNConv2d
from common.train import build_parser, parse_args
from test_cli import TINY as UGATIT_TINY
from test_cli import losses, run

TINY = {"ugatit": UGATIT_TINY[:-2],
        "attentiongan": ["--img_size", "32", "--ch", "4", "--ndf", "8", "--n_res", "1", "--n_masks", "3"],
        "uait": ["--img_size", "32", "--ch", "4", "--n_res", "1"],
        "guidegan": ["--img_size", "32", "--ngf", "4", "--ndf", "4", "--n_res", "1"],
        "dagan": ["--ch", "4", "--n_res", "1"]}


def model(name, amp):
    script = importlib.import_module(name)
    parser = build_parser(name, "", script.DEFAULTS)
    script.add_arguments(parser)
    torch.manual_seed(0)
    return script.make_model(parse_args(parser, [*TINY[name], "--amp", amp, "--iteration", "10"], {}),
                             torch.device("cpu"))


def batch(name):
    g = torch.Generator().manual_seed(1)
    s, t = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    if name != "dagan":
        return s, t
    return s, t, {"label_A": torch.tensor([1, -1]), "label_B": torch.tensor([2, 3])}


def first_step(name, amp):
    m = model(name, amp)
    m.progress = 0.0
    torch.manual_seed(5)
    with m.amp.autocast():
        losses = m.train_step(*batch(name))
    return {k: v for k, v in losses.items() if isinstance(v, torch.Tensor)}, m


@pytest.mark.parametrize("name", TINY)
def test_every_script_trains_under_bf16_with_float32_losses_close_to_float32s(name):
    full, _ = first_step(name, "off")
    half, m = first_step(name, "bf16")
    assert set(half) == set(full)
    assert all(v.dtype in (torch.float32, torch.float64) and torch.isfinite(v) for v in half.values()), half
    # The first step's losses are forward passes of the same weights (D's after one G step): bf16's 8-bit mantissa
    # moves them by about 1% here, and it did run (no loss is bit-identical to float32's).
    for k, v in full.items():
        assert abs(half[k].item() - v.item()) <= 0.05 * abs(v.item()) + 1e-3, (k, half[k].item(), v.item())
    assert any(half[k].item() != v.item() for k, v in full.items())
    assert all(torch.isfinite(p).all() for net in m.nets.values() for p in net.parameters())


def test_fp16_loss_scaling_skips_only_the_optimizer_whose_gradients_overflowed():
    p_D, p_G = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    optimizers = {"D": torch.optim.SGD([p_D], lr=0.1), "G": torch.optim.SGD([p_G], lr=0.1)}
    amp = Precision("fp16", "cpu", optimizers)
    amp.update("D", (p_D * torch.tensor([1.0, float("inf"), 1.0])).sum())  # an overflowing gradient
    amp.update("G", (2 * p_G).sum())
    assert torch.equal(p_D.detach(), torch.ones(3)) and p_D.grad is None      # skipped, gradients cleared
    assert torch.allclose(p_G.detach(), torch.full((3,), 1 - 0.1 * 2))        # unscaled: the true gradient 2
    scales = {k: s["scale"] for k, s in amp.state_dict()["scalers"].items()}
    assert scales == {"D": 2.0 ** 15, "G": 2.0 ** 16}                          # only D's scale halved


def test_spectral_norm_under_bf16_keeps_sigma_and_the_power_iteration_in_float32():
    torch.manual_seed(0)
    conv = SNConv2d(8, 16, 3, 1, 1)
    twin = SNConv2d(8, 16, 3, 1, 1)
    twin.load_state_dict(conv.state_dict())
    x = torch.randn(2, 8, 16, 16)
    y = conv(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_low = twin(x)
    assert y_low.dtype == torch.bfloat16
    assert torch.equal(twin.weight_u, conv.weight_u) and torch.equal(twin.weight_v, conv.weight_v)
    assert (y_low.float() - y).abs().max() < 0.02 * y.abs().max()
    # The weight's gradient, σ's rank-1 term included, against float32's.
    y.square().sum().backward()
    (y_low.float().square().sum()).backward()
    assert twin.weight.grad.dtype == torch.float32
    assert (twin.weight.grad - conv.weight.grad).norm() < 0.02 * conv.weight.grad.norm()


def test_an_fp16_run_resumes_exactly_with_its_loss_scales(tmp_path):
    args = [*UGATIT_TINY, "--amp", "fp16", "--iteration", "4", "--save_freq", "2", "--print_freq", "100"]
    straight = tmp_path / "straight"
    straight.mkdir()
    run(straight, *args)
    # The same run stopped at iteration 2: its folder with the checkpoint of iteration 2 as the latest.
    stopped = tmp_path / "stopped"
    shutil.copytree(straight, stopped)
    checkpoints = stopped / "runs/ugatit/shapes/checkpoints"
    shutil.move(checkpoints / "previous.pt", checkpoints / "latest.pt")
    scales = torch.load(checkpoints / "latest.pt", weights_only=True)["amp"]["scalers"]
    # λ_cam = 1000 puts G's loss near 3000; scaled by 2^16 its fp16 gradients overflow: G's first steps are
    # skipped and its scale halved, so a resume that started from fresh scales would differ.
    assert scales["G"]["scale"] < 2.0 ** 16
    run(stopped, *args, "--resume")
    assert losses(stopped) == losses(straight)
    a, b = (torch.load(d / "runs/ugatit/shapes/checkpoints/latest.pt", weights_only=True) for d in (straight, stopped))
    assert a["amp"] == b["amp"]
    assert all(torch.equal(v, b["nets"][n][k]) for n, net in a["nets"].items() for k, v in net.items())
