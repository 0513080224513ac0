"""uait.py: Eq. (1) and the cycle, the networks of Appendix A, the two stages of Algorithm 1, Table 2's ablations,
the pools, and the script end to end."""
import copy
import json
import math
import subprocess
import sys

import pytest
import torch
from PIL import Image

import uait
from common.blocks import ImagePool
from common.datasets.shapes import ShapesDomain
from common.train import UsageError, build_parser, load_checkpoint, parse_args, save_checkpoint
from conftest import ROOT

TINY = ["--img_size", "32", "--ch", "4", "--n_res", "1"]


def make_args(*argv):
    parser = build_parser("uait", "", uait.DEFAULTS)
    uait.add_arguments(parser)
    return parse_args(parser, [*TINY, *argv], {})  # with the harness's checks


def model(*argv):
    return uait.make_model(make_args(*argv), torch.device("cpu"))


def images(n=1, size=32):
    return torch.rand(n, 3, size, size) * 2 - 1, torch.rand(n, 3, size, size) * 2 - 1


def snapshot(m):
    return {k: copy.deepcopy(net.state_dict()) for k, net in m.nets.items()}


def changed(m, before, name):
    return any(not torch.equal(v, before[name][k]) for k, v in m.nets[name].state_dict().items())


def straddle_tau(m):
    """Bias the attention maps to sigmoid⁻¹(τ), so that at initialisation some pixels fall on each side of τ."""
    for A in (m.A_S, m.A_T):
        if A is not None:
            A[-2].bias.data.fill_(math.log(0.1 / 0.9))


def record_inputs(net):
    seen = []
    net.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
    return seen


# --- Eq. (1), the networks, the defaults ----------------------------------------------------------------------

def test_all_ones_attention_is_cyclegan_and_all_zeros_is_the_input():
    m = model()
    s, _ = images(2)
    ones = lambda x: torch.ones_like(x[:, :1])  # noqa: E731
    s_prime, s_a, content = uait.map_to(m.F_ST, ones, s)
    assert torch.equal(s_prime, m.F_ST(s)) and torch.equal(content, s_prime)
    assert torch.equal(uait.map_to(m.F_ST, lambda x: torch.zeros_like(x[:, :1]), s)[0], s)
    a = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(uait.map_to(m.F_ST, lambda x: a, s)[0], a * m.F_ST(s) + (1 - a) * s)


@pytest.mark.parametrize("size", [36, 40])
def test_output_shapes_and_ranges(size):
    m = model("--img_size", str(size))
    x = torch.rand(2, 3, size, size) * 2 - 1
    for A in (m.A_S, m.A_T):
        a = A(x)
        assert a.shape == (2, 1, size, size) and a.min() >= 0 and a.max() <= 1
    for F_xy in (m.F_ST, m.F_TS):
        y = F_xy(x)
        assert y.shape == x.shape and y.abs().max() <= 1
    for direction in ("A2B", "B2A"):
        x_prime, x_a = m.translate(x, direction)
        assert x_prime.shape == x.shape and x_a.shape == (2, 1, size, size)
        assert [t.shape[1] for t in m.visuals(x, direction)] == [3, 1, 3, 3]
    assert m.D_T(x).shape[:2] == (2, 1)


def test_networks_follow_appendix_a():
    with torch.device("meta"):
        A = uait.AttentionNet(32)
        F_ST = uait.generator(32, 9)
    convs = [c for c in A if isinstance(c, torch.nn.Conv2d)]  # top level: not the residual block's
    assert [c.kernel_size[0] for c in convs] == [7, 3, 3, 3, 7]
    assert [c.stride[0] for c in convs] == [2, 2, 1, 1, 1]
    assert [c.out_channels for c in convs] == [32, 64, 64, 32, 1]
    assert sum(isinstance(l, torch.nn.Upsample) and l.mode == "nearest" for l in A) == 2
    assert sum(isinstance(l, torch.nn.InstanceNorm2d) for l in A) == 4 and isinstance(A[-1], torch.nn.Sigmoid)
    assert sum(type(l).__name__ == "ResnetBlock" for l in F_ST) == 9
    assert F_ST[-2].kernel_size == (7, 7) and F_ST[-2].in_channels == 32 and F_ST[0].padding == (3, 3, 3, 3)
    # D: c4s2-64-LR, c4s2-128-LR, c4s2-256-LR, c4s1-512-LR, c4s1-1, instance norm after every conv but the last
    layers = list(model("--ndf", "64").D_T.model)
    convs = [l for l in layers if isinstance(l, torch.nn.Conv2d)]
    assert [(c.out_channels, c.stride[0]) for c in convs] == [(64, 2), (128, 2), (256, 2), (512, 1), (1, 1)]
    assert [isinstance(b, torch.nn.InstanceNorm2d) for a, b in zip(layers, layers[1:]) if a in convs] == [True] * 4


def test_paper_hyperparameters_are_the_defaults():
    parser = build_parser("uait", "", uait.DEFAULTS)
    uait.add_arguments(parser)
    a = parser.parse_args([])
    assert (a.cycle_weight, a.tau, a.switch_epoch, a.epochs, a.lr) == (10, 0.1, 30, 100, 1e-4)
    assert (a.batch_size, a.img_size, a.ch, a.n_res, a.pool_size, a.iteration) == (1, 256, 32, 9, 50, None)
    assert a.decay_flag and a.cycle and a.cycle_att and a.A_S and a.A_T and a.masked_D and a.freeze_A
    assert a.masked_fake == "composite"
    m = model()
    assert m.switch == 0.3 and m.cycle_weight == 10
    for opt in m.optimizers.values():
        assert opt.param_groups[0]["betas"] == (0.5, 0.999) and opt.param_groups[0]["weight_decay"] == 0
    preset = parse_args(parser, [], uait.CPU_PRESET)
    assert preset.dataset == "shapes" and preset.img_size == 64 and preset.iteration == uait.CPU_PRESET["iteration"]
    assert preset.switch_epoch == 60  # the preset's own switch (docs/uait.md); real data keeps the paper's 30


@pytest.mark.parametrize("argv, message", [(["--tau", "0"], "--tau 0"), (["--tau", "1.5"], "--tau 1.5"),
                                           (["--switch_epoch", "101"], "--switch_epoch 101"),
                                           (["--pool_size", "-1"], "--pool_size -1")])
def test_bad_flags_name_themselves(argv, message):
    with pytest.raises(UsageError, match=message):
        model(*argv)


# --- The two stages (Algorithm 1) -------------------------------------------------------------------------------

def test_d_input_is_eq6():
    image, mask = torch.randn(2, 3, 8, 8), torch.rand(2, 1, 8, 8)
    mask[0, 0, 0, 0] = 0.1
    out = uait.d_input(image, mask, True, 0.1)
    below = (mask <= 0.1).expand_as(image)
    assert (out[below] == 0).all() and torch.equal(out[~below], image[~below]) and below.any() and (~below).any()
    assert torch.equal(uait.d_input(image, mask, False, 0.1), image)


def test_stage1_trains_everything_on_whole_images():
    m = model()
    m.progress = m.switch - 1e-6
    seen = record_inputs(m.D_T)
    before = snapshot(m)
    s, t = images()
    losses = m.train_step(s, t)
    assert set(losses) == {"G", "G_adv", "G_cycle", "D"} and all(torch.isfinite(v) for v in losses.values())
    assert all(changed(m, before, k) for k in m.nets)
    assert m.D_S.normalize and m.D_T.normalize
    assert torch.equal(seen[-1][:1], t)  # D_T's real half in its own update


@pytest.mark.parametrize("masked_fake", ["composite", "F"])
def test_stage2_freezes_attention_and_masks_what_D_sees(masked_fake):
    m = model("--masked_fake", masked_fake)
    straddle_tau(m)
    m.progress = m.switch
    seen = record_inputs(m.D_T)
    s, t = images()
    with torch.no_grad():
        t_a, s_a = m.A_T(t), m.A_S(s)
        s_prime = s_a * m.F_ST(s) + (1 - s_a) * s
        # The authors' code masks s' (§3.2: "a masked version of s'"); Eq. (6) as printed masks F_ST(s).
        fake = torch.where(s_a > 0.1, s_prime if masked_fake == "composite" else m.F_ST(s), 0.0)
    assert (t_a > 0.1).any() and (t_a <= 0.1).any()
    before = snapshot(m)
    losses = m.train_step(s, t)
    assert set(losses) == {"G", "G_adv", "G_cycle", "D"} and all(torch.isfinite(v) for v in losses.values())
    assert not changed(m, before, "A_S") and not changed(m, before, "A_T")
    assert all(changed(m, before, k) for k in ("F_ST", "F_TS", "D_S", "D_T"))
    assert not m.D_S.normalize and not m.D_T.normalize
    g_input, (real, d_fake) = seen[0], seen[-1].split(1)
    assert torch.equal(real, torch.where(t_a > 0.1, t, 0.0))
    torch.testing.assert_close(g_input, fake)
    torch.testing.assert_close(d_fake, fake)


def test_stage_follows_progress_both_ways():
    """Set from the progress at every step, so a run resumed on either side of the switch is in its stage."""
    m = model()
    for progress, frozen in ((0.5, True), (0.1, False), (0.3, True)):
        m.progress = progress
        m.train_step(*images())
        assert all(p.requires_grad != frozen for A in (m.A_S, m.A_T) for p in A.parameters())
        assert m.D_T.normalize != frozen


# --- Eq. (4) and Eq. (7), and Table 2 ---------------------------------------------------------------------------

def reference_G_loss(m, s, t, masked, cycle=True, cycle_att=True, tau=0.1, masked_fake="composite"):
    """Eq. (1)-(4), and Eq. (6)-(7) when masked, written out as the paper has them (LSGAN, Appendix A); the masked
    fake is s' (authors' code) or F(s) (Eq. 6 as printed)."""
    ones = lambda x: torch.ones_like(x[:, :1])  # noqa: E731
    A_S, A_T = m.get("A_S", ones), m.get("A_T", ones)
    s_a, t_a = A_S(s), A_T(t)
    s_p = s_a * m["F_ST"](s) + (1 - s_a) * s
    t_p = t_a * m["F_TS"](t) + (1 - t_a) * t
    s_pa, t_pa = (A_T(s_p), A_S(t_p)) if cycle_att else (s_a, t_a)
    s_pp = s_pa * m["F_TS"](s_p) + (1 - s_pa) * s_p
    t_pp = t_pa * m["F_ST"](t_p) + (1 - t_pa) * t_p
    if masked:
        fake_T = (s_p if masked_fake == "composite" else m["F_ST"](s)) * (s_a > tau)
        fake_S = (t_p if masked_fake == "composite" else m["F_TS"](t)) * (t_a > tau)
    else:
        fake_T, fake_S = s_p, t_p
    adv = ((m["D_T"](fake_T) - 1) ** 2).mean() + ((m["D_S"](fake_S) - 1) ** 2).mean()
    cyc = (s - s_pp).abs().mean() + (t - t_pp).abs().mean()
    return adv + 10 * cyc * cycle


@pytest.mark.parametrize("argv", [[], ["--cycle", "False"], ["--cycle_att", "False"], ["--A_S", "False"],
                                  ["--A_T", "False"], ["--masked_D", "False"], ["--masked_fake", "F"]])
@pytest.mark.parametrize("stage", [1, 2])
def test_generator_gradients_are_those_of_the_paper(argv, stage):
    m = model(*argv)
    straddle_tau(m)
    m.progress = 0.0 if stage == 1 else 0.5
    s, t = images(2)
    captured = {}
    step = m.optimizers["G"].step

    def capture(*a, **kw):
        captured["nets"] = copy.deepcopy(m.nets)
        captured["grads"] = [p.grad for p in m.optimizers["G"].param_groups[0]["params"]]
        return step(*a, **kw)
    m.optimizers["G"].step = capture
    losses = m.train_step(s, t)
    ref = captured["nets"]
    flags = make_args(*argv)
    # With one attention network removed, both discriminators see whole images (the test below).
    masked = stage == 2 and flags.masked_D and flags.A_S and flags.A_T
    loss = reference_G_loss(ref, s, t, masked=masked, cycle=flags.cycle, cycle_att=flags.cycle_att,
                            masked_fake=flags.masked_fake)
    torch.testing.assert_close(loss, losses["G"], rtol=1e-5, atol=1e-5)
    assert ("G_cycle" in losses) == flags.cycle
    params = [p for k, net in ref.items() if k[0] in "FA" for p in net.parameters()]
    assert [g is None for g in captured["grads"]] == [not p.requires_grad for p in params]
    assert any(g is None for g in captured["grads"]) == (stage == 2)  # A frozen: Adam skips it
    theirs = torch.autograd.grad(loss, [p for p in params if p.requires_grad])
    # Biases before an instance norm have a true gradient of 0: theirs is float noise, measured on the largest.
    noise = 1e-5 * max(g.abs().max() for g in theirs)
    for ours, expected in zip([g for g in captured["grads"] if g is not None], theirs):
        assert (ours - expected).abs().max() <= 1e-4 * expected.abs().max() + noise


@pytest.mark.parametrize("argv", [[], ["--A_S", "False"], ["--A_T", "False"], ["--masked_D", "False"],
                                  ["--masked_fake", "F"]])
@pytest.mark.parametrize("stage", [1, 2])
def test_discriminator_gradients_are_those_of_eq2_and_eq7(argv, stage):
    """D's side, written out: ½[(D_T(t_new) − 1)² + D_T(s'_new)²] + the same for D_S, t_new = t where A_T(t) > τ,
    s'_new = s' where A_S(s) > τ (stage 2; whole images and instance norm in stage 1, or when either attention
    network is removed, so that neither side of a D is masked alone). No pool, so D sees this step's fakes."""
    m = model("--pool_size", "0", *argv)
    straddle_tau(m)
    m.progress = 0.0 if stage == 1 else 0.5
    s, t = images(2)
    nets = copy.deepcopy(m.nets)  # D's fakes are made before the generators' update
    captured = {}
    step = m.optimizers["D"].step

    def capture(*a, **kw):
        captured["grads"] = [p.grad.clone() for p in m.optimizers["D"].param_groups[0]["params"]]
        return step(*a, **kw)
    m.optimizers["D"].step = capture
    m.train_step(s, t)

    flags = make_args(*argv)
    ones = lambda x: torch.ones_like(x[:, :1])  # noqa: E731
    masked = stage == 2 and flags.masked_D and "A_S" in nets and "A_T" in nets
    with torch.no_grad():
        s_a, t_a = nets.get("A_S", ones)(s), nets.get("A_T", ones)(t)
        F_s, F_t = nets["F_ST"](s), nets["F_TS"](t)
        s_p, t_p = s_a * F_s + (1 - s_a) * s, t_a * F_t + (1 - t_a) * t
        fake_T, fake_S = (F_s, F_t) if masked and flags.masked_fake == "F" else (s_p, t_p)
    keep = lambda x, a: x * (a > 0.1) if masked else x  # noqa: E731
    D_S, D_T = nets["D_S"], nets["D_T"]
    D_S.normalize = D_T.normalize = not masked
    loss = (0.5 * (((D_T(keep(t, t_a)) - 1) ** 2).mean() + (D_T(keep(fake_T, s_a)) ** 2).mean())
            + 0.5 * (((D_S(keep(s, s_a)) - 1) ** 2).mean() + (D_S(keep(fake_S, t_a)) ** 2).mean()))
    theirs = torch.autograd.grad(loss, [*D_S.parameters(), *D_T.parameters()])
    assert len(theirs) == len(captured["grads"])
    noise = 1e-5 * max(g.abs().max() for g in theirs)  # biases before an instance norm: true gradient 0
    for ours, expected in zip(captured["grads"], theirs):
        assert (ours - expected).abs().max() <= 1e-4 * expected.abs().max() + noise


def test_without_A_S_the_map_is_all_ones():
    m = model("--A_S", "False")
    assert "A_S" not in m.nets and "A_T" in m.nets
    x = images(2)[0]
    x_prime, x_a = m.translate(x, "A2B")
    assert x_a is None and torch.equal(x_prime, m.F_ST(x))
    assert torch.equal(m.visuals(x, "A2B")[1], torch.ones(2, 1, 32, 32))
    assert m.translate(x, "B2A")[1] is not None
    no_attention = model("--A_S", "False", "--A_T", "False")
    assert set(no_attention.nets) == {"F_ST", "F_TS", "D_S", "D_T"}


@pytest.mark.parametrize("cycle_att, calls", [(True, 2), (False, 1)])
def test_cycle_att_false_reuses_A_S_on_the_way_back(cycle_att, calls):
    m = model("--cycle_att", str(cycle_att))
    seen = record_inputs(m.A_T)
    s, t = images()
    m.train_step(s, t)
    assert len(seen) == calls and torch.equal(seen[0], t)  # A_T(t), and A_T(s') only with cycleAtt
    with torch.no_grad():
        s_prime, s_a, _ = uait.map_to(m.F_ST, m.A_S, s)
        a = m.A_T(s_prime) if cycle_att else s_a
        torch.testing.assert_close(m.back(s_prime, s_a, m.F_TS, m.A_T), a * m.F_TS(s_prime) + (1 - a) * s_prime)


def test_ours_minus_D_keeps_whole_images_and_instance_norm_in_stage2():
    m = model("--masked_D", "False")
    straddle_tau(m)
    m.progress = 0.5
    seen = record_inputs(m.D_T)
    before = snapshot(m)
    s, t = images()
    m.train_step(s, t)
    assert m.D_T.normalize and m.D_S.normalize and torch.equal(seen[-1][:1], t)
    assert not changed(m, before, "A_S") and not changed(m, before, "A_T")


def test_ours_minus_D_minus_A_keeps_training_attention():
    m = model("--masked_D", "False", "--freeze_A", "False")
    m.progress = 0.5
    before = snapshot(m)
    m.train_step(*images())
    assert changed(m, before, "A_S") and changed(m, before, "A_T") and m.D_T.normalize


# --- Pools ------------------------------------------------------------------------------------------------------

def test_pools_hold_fake_and_map_and_survive_a_checkpoint(tmp_path):
    args = make_args("--pool_size", "3")
    m = uait.make_model(args, torch.device("cpu"))
    for progress in (0.0, 0.1, 0.5, 0.6):
        m.progress = progress
        m.train_step(*images())
    for pool in m.pools.values():
        stored = torch.stack(pool.images)
        assert stored.shape == (3, 4, 32, 32) and stored[:, 3].min() >= 0 and stored[:, 3].max() <= 1
    path = tmp_path / "latest.pt"
    save_checkpoint(path, m, {}, 4, args)
    state = load_checkpoint(path)
    for name, pool in m.pools.items():
        fresh = ImagePool(3)
        fresh.load_state_dict(state["pools"][name])
        assert len(fresh.images) == 3 and all(torch.equal(a, b) for a, b in zip(fresh.images, pool.images))


def test_a_pool_of_size_0_passes_the_new_fakes_and_draws_nothing():
    """CycleGAN's pool_size 0: no history. No random draws either, so that two ranks of batch 1 take the same
    steps as one process of batch 2 (tests/test_distributed.py)."""
    pool, fakes = ImagePool(0), torch.randn(3, 4, 8, 8, requires_grad=True)
    state = torch.get_rng_state()
    out = pool.query(fakes)
    assert torch.equal(out, fakes) and not out.requires_grad and pool.images == []
    assert torch.equal(torch.get_rng_state(), state)


# --- The script end to end --------------------------------------------------------------------------------------

def run(tmp_path, *args):
    p = subprocess.run([sys.executable, str(ROOT / "uait.py"), "--result_dir", str(tmp_path / "runs"), *TINY,
                        "--log_freq", "1", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def losses(tmp_path, dataset="shapes"):
    lines = (tmp_path / "runs/uait" / dataset / "log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(l).items() if k != "time"} for l in lines if "eval" not in l]


def folder_dataset(root):
    """A few PNGs of two sizes in the trainA/ trainB/ testA/ testB/ layout."""
    for i, split in enumerate(("trainA", "trainB", "testA", "testB")):
        (root / split).mkdir(parents=True)
        for j in range(3):
            img = Image.new("RGB", (40 + 4 * j, 36), (60 * i, 200 - 50 * j, 90))
            img.paste((250, 250, 250), (10, 8, 22, 20))
            img.save(root / split / f"{j}.png")
    return root


def test_train_then_test_phase(tmp_path):
    p = run(tmp_path, "--iteration", "4", "--print_freq", "2", "--save_freq", "2")
    root = tmp_path / "runs/uait/shapes"
    assert sorted(f.name for f in (root / "samples").iterdir()) == ["0000002.png", "0000004.png"]
    assert Image.open(root / "samples/0000004.png").size == (5 * 34 + 2, 8 * 34 + 2)  # x | map | F(x) | x' | back
    assert [r["step"] for r in losses(tmp_path)] == [1, 2, 3, 4]
    state = torch.load(root / "checkpoints/latest.pt", weights_only=True)
    assert state["step"] == 4 and set(state["nets"]) == {"F_ST", "F_TS", "A_S", "A_T", "D_S", "D_T"}
    assert set(state["pools"]) == {"S", "T"} and state["pools"]["T"]["images"].shape == (4, 4, 32, 32)
    assert "A2B/bg_psnr" in p.stdout and "B2A/iou" in p.stdout

    run(tmp_path, "--phase", "test")
    a2b = sorted((root / "test/A2B").iterdir())
    assert len(a2b) == 100 and len(list((root / "test/B2A").iterdir())) == 100
    assert Image.open(a2b[0]).size == (4 * 34 + 2, 36)
    assert set(json.loads((root / "test/metrics.json").read_text())) >= {"A2B/target", "B2A/iou"}

    # benchmarks/probes/attention_levels.py on the same checkpoint: A_S's mean over the object pixels of the test
    # apples
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/probes/attention_levels.py"), "uait",
                          str(root / "checkpoints/latest.pt")], capture_output=True, text=True, check=True).stdout
    A_S = uait.AttentionNet(4)
    A_S.load_state_dict(state["nets"]["A_S"])
    apples = ShapesDomain("A", "test", 32)
    x = torch.stack([apples.get(i) for i in range(100)])
    inside = torch.stack([apples.mask(i) for i in range(100)]) > 0.5
    with torch.no_grad():
        a = A_S(x)
    assert f"A2B: {a[inside].mean():.3f} | {a[~inside].mean():.3f} |" in out and "B2A: " in out
    assert "A2B floor: inside the object" in out and "B2A floor: inside the object" in out
    # A perfect translation's floor, written out per pixel: each apple pixel becomes the oranges' mean object colour.
    oranges = ShapesDomain("B", "test", 32)
    colour = torch.cat([oranges.get(i).double()[:, oranges.mask(i)[0] > 0.5] for i in range(100)], 1).mean(1)
    needs = []
    for s, m in zip(x.double(), inside):
        for pixel in s[:, m[0]].T:
            needs.append(max(abs(t - v) / ((1 - v) if t > v else (1 + v)) for v, t in zip(pixel, colour)))
    assert f"a perfect translation's inside {sum(needs) / len(needs):.3f}" in out.split("B2A:")[0]


def test_resume_with_a_larger_iteration_is_exact_across_the_switch_on_a_folder_dataset(tmp_path):
    """Switch at 80% of 12 iterations: the first part (4 iterations, progress <= 0.75) stays in stage 1, the
    resumed part crosses into stage 2 at iteration 10, as the straight run does. The learning rate is constant,
    since the decay follows --iteration."""
    data = folder_dataset(tmp_path / "tiny")
    # A pool of 2 is full from iteration 2 on: its random draws must line up after the resume too.
    args = ["--dataset", str(data), "--decay_flag", "False", "--switch_epoch", "80", "--print_freq", "100",
            "--pool_size", "2"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    straight.mkdir()
    split.mkdir()
    run(straight, *args, "--iteration", "12")
    p = run(split, *args, "--iteration", "4")
    assert (split / "runs/uait/tiny/checkpoints/latest.pt").exists() and "shapes evaluation" not in p.stdout
    p = run(split, *args, "--iteration", "12", "--resume")
    assert "at iteration 4" in p.stdout and (split / "runs/uait/tiny/samples/0000012.png").exists()
    assert [r["step"] for r in losses(split, "tiny")] == list(range(1, 13))
    assert losses(split, "tiny") == losses(straight, "tiny")


def test_the_floor_of_a_map_is_the_smallest_map_any_content_in_range_allows():
    """benchmarks/probes/attention_levels.py's floor against a brute-force search: the smallest a on a fine grid for
    which C = x + (y − x)/a lies in [−1, 1] in every channel, with y made by Eq. (1) from a known map and content."""
    sys.path.insert(0, str(ROOT / "benchmarks/probes"))
    from attention_levels import floor
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 4, 4, generator=g, dtype=torch.float64) * 1.8 - 0.9
    a = torch.rand(1, 1, 4, 4, generator=g, dtype=torch.float64) * 0.9 + 0.05
    C = torch.rand(1, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    C[:, 0] = torch.where(C[:, 0] > 0, 1.0, -1.0)  # channel 0 at tanh's bound: a itself is the floor
    y = x + a * (C - x)
    assert torch.allclose(floor(x, y), a)
    C_inside = C * 0.5  # content well inside the range: a smaller map would have done
    y = x + a * (C_inside - x)
    grid = torch.linspace(1e-4, 1, 10_000, dtype=torch.float64).view(-1, 1, 1, 1, 1)
    feasible = ((x + (y - x) / grid).abs() <= 1).all(2, keepdim=True)  # grid × 1 × 1 × 4 × 4
    smallest = torch.where(feasible, grid, 2.0).amin(0)
    assert (smallest < a).all()
    assert torch.allclose(floor(x, y), smallest, atol=1e-4)
