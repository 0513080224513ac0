"""attentiongan.py: the compositions of Eq. 1-2, the losses and weights of Eq. 4-9, Table 1's ablations, the
authors' scheme II checkpoints, one training step per scheme, and the script end to end."""
import copy
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import attentiongan as ag
from common.blocks import PatchGAN
from common.train import UsageError, build_parser
from conftest import ROOT

LISTINGS = ROOT / "tests/data"  # the authors' parameter listings, as their released checkpoints hold them


def make_args(**kw):
    parser = build_parser("attentiongan", "", ag.DEFAULTS)
    ag.add_arguments(parser)
    args = parser.parse_args([])
    args.__dict__.update(dict(img_size=32, ch=4, ndf=8, n_res=1, n_masks=4, iteration=100, dataset="shapes"), **kw)
    return args


def model(**kw):
    return ag.make_model(make_args(**kw), torch.device("cpu"))


def images(n=2, size=32):
    return torch.rand(n, 3, size, size) * 2 - 1, torch.rand(n, 3, size, size) * 2 - 1


def test_scheme_defaults_are_the_papers_settings():
    """§4.1's settings, and where it is silent the authors' code's: v1 (scheme I) and their scheme II code."""
    m = model(scheme="I")
    a = m.args
    assert (a.cycle_weight, a.adv_weight, a.pixel_weight, a.tv_weight) == (10, 0.5, 1, 1e-6)  # §4.1, faces
    assert (a.identity_weight, a.curriculum_epochs, a.epochs, a.lr) == (0, 10, 200, 1e-4)  # v1 code: λ_id 0, lr
    assert a.attention_d and "D_YA" in m.nets  # Table 1's Full model
    m = model(scheme="II")
    a = m.args
    assert (a.cycle_weight, a.identity_weight, a.adv_weight, a.pixel_weight) == (10, 0.5, 1, 0)  # CycleGAN's
    assert (a.curriculum_epochs, a.tv_weight, a.lr) == (0, 0, 2e-4)  # their scheme II code: no TV loss
    assert not a.attention_d and "D_YA" not in m.nets  # nor attention-guided discriminators
    parser = build_parser("attentiongan", "", ag.DEFAULTS)
    ag.add_arguments(parser)
    d = parser.parse_args([])
    assert (d.batch_size, d.pool_size, d.scheme, d.n_masks, d.ch, d.n_res) == (1, 50, "II", 10, 64, 9)
    assert model(scheme="II", adv_weight=2.0).args.adv_weight == 2.0  # a flag beats the scheme's default
    assert model(scheme="II", attention_d=True).args.attention_d and model(scheme="I", lr=3e-4).args.lr == 3e-4
    for scheme, lr in (("I", 1e-4), ("II", 2e-4)):
        opt = model(scheme=scheme).optimizers["G"].param_groups[0]
        assert opt["betas"] == (0.5, 0.999) and opt["lr"] == lr


def test_curriculum_r_of_eq_9():
    assert ag.curriculum_r(0.0, 10, 200) == 0.01 and ag.curriculum_r(0.0499, 10, 200) == 0.01
    assert ag.curriculum_r(0.05, 10, 200) == 0.5 and ag.curriculum_r(0.9, 10, 200) == 0.5
    assert ag.curriculum_r(0.0, 0, 200) == 0.5


@pytest.mark.parametrize("size", [32, 36])
def test_scheme_II_masks_are_a_softmax_and_the_output_is_eq_2(size):
    G = ag.SchemeII(4, 1, 5)
    x = torch.rand(2, 3, size, size) * 2 - 1
    out, masks, content = G(x)
    assert masks.shape == (2, 5, size, size) and content.shape == (2, 4, 3, size, size)
    torch.testing.assert_close(masks.sum(1), torch.ones(2, size, size))
    expected = (masks[:, :-1, None] * content).sum(1) + masks[:, -1:] * x   # Eq. (2), written out
    torch.testing.assert_close(out, expected)
    assert content.abs().max() <= 1


def test_scheme_II_with_two_masks_is_a_single_mask_blend():
    G = ag.SchemeII(4, 1, 2)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    out, masks, content = G(x)
    A = masks[:, :1]                                          # the one foreground mask; A^b = 1 − A
    torch.testing.assert_close(out, content[:, 0] * A + x * (1 - A))   # Eq. (1)'s form
    torch.testing.assert_close(ag.foreground(masks), A)


def test_scheme_I_is_eq_1_and_its_extremes(monkeypatch):
    G = ag.SchemeI(4, 1)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out, A, C = G(x)
    assert A.shape == (2, 1, 32, 32) and 0 <= A.min() and A.max() <= 1
    torch.testing.assert_close(out, C[:, 0] * A + x * (1 - A))
    for bias, expected in ((1e4, C[:, 0]), (-1e4, x)):   # attention all ones: the content; all zeros: the input
        with torch.no_grad():
            G.net[-1].bias[0] = bias
        torch.testing.assert_close(G(x)[0], expected)


def test_tv_is_eq_7():
    A = torch.zeros(1, 1, 4, 5)
    A[..., 1:3, 2] = 1                                         # a 2-pixel vertical bar
    assert ag.tv(A).item() == 4 + 2                            # 2 rows × 2 horizontal edges, 2 vertical edges
    assert ag.tv(torch.ones(3, 2, 6, 6)).item() == 0


@pytest.mark.parametrize("scheme", ["I", "II"])
def test_one_training_step_updates_every_network(scheme):
    m = model(scheme=scheme, attention_d=True, tv_weight=1e-6)
    before = {k: [p.clone() for p in net.parameters()] for k, net in m.nets.items()}
    losses = m.train_step(*images())
    expected = {"G", "D", "r", "G_gan", "G_agan", "G_cycle", "G_tv"}
    expected |= {"G_pixel"} if scheme == "I" else {"G_identity"}
    assert set(losses) == expected and all(torch.isfinite(v) for v in losses.values())
    assert set(m.nets) == {"G_XY", "G_YX", "D_Y", "D_X", "D_YA", "D_XA"}
    for k, net in m.nets.items():
        assert any(not torch.equal(a, b) for a, b in zip(before[k], net.parameters())), k


def capture_step(m, which):
    """Run one train_step; return copies of the networks as they were before it and the gradients the `which`
    optimizer stepped on."""
    captured = {}
    step = m.optimizers[which].step

    def capture(*a, **kw):
        captured["grads"] = [p.grad.clone() for p in m.optimizers[which].param_groups[0]["params"]]
        return step(*a, **kw)
    m.optimizers[which].step = capture
    return captured


def assert_same_gradients(ours, loss, params):
    theirs = torch.autograd.grad(loss, params)
    assert len(ours) == len(theirs)
    noise = 1e-5 * max(g.abs().max() for g in theirs)  # biases before an instance norm: true gradient 0
    for a, b in zip(ours, theirs):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max() + noise


def written_out(nets, scheme, x, y):
    """For each direction (x, y, G_{X→Y}, G_{Y→X}, D_Y, D_YA): G_y and its foreground attention, from Eq. (1)-(2)
    as the paper defines them."""
    out = []
    for x_, y_, G, F_, Y in ((x, y, nets["G_XY"], nets["G_YX"], "Y"), (y, x, nets["G_YX"], nets["G_XY"], "X")):
        G_y, masks, _ = G(x_)
        A_y = masks if scheme == "I" else 1 - masks[:, -1:]  # scheme II: all but the background's mask
        out.append((x_, y_, G, F_, nets[f"D_{Y}"], nets.get(f"D_{Y}A"), G_y, A_y, masks))
    return out


@pytest.mark.parametrize("scheme, progress, kw", [("I", 0.0, {}), ("I", 0.5, {}), ("II", 0.0, {}),
                                                  ("II", 0.0, dict(attention_d=True, tv_weight=1e-6))])
def test_generator_gradients_are_those_of_eq_9(scheme, progress, kw):
    """Eq. (9) written out: r·[λ_cycle L_cycle + λ_pixel L_pixel + λ_id λ_cycle L_id] + (1 − r)·[λ_gan (L_GAN +
    L_AGAN) + λ_tv L_tv], each term from its equation, both directions, against the gradients train_step steps on."""
    m = model(scheme=scheme, **kw)
    m.progress = progress
    nets = {k: copy.deepcopy(v) for k, v in m.nets.items()}
    captured = capture_step(m, "G")
    x, y = images()
    m.train_step(x, y)
    a = m.args
    r = 0.01 if (scheme, progress) == ("I", 0.0) else 0.5
    rec, adv = 0.0, 0.0
    for x_, y_, G, F_, D_Y, D_YA, G_y, A_y, masks in written_out(nets, scheme, x, y):
        rec = rec + a.cycle_weight * (F_(G_y)[0] - x_).abs().mean()                          # Eq. (4)
        rec = rec + a.pixel_weight * (G_y - x_).abs().mean()                                 # Eq. (8)
        rec = rec + a.identity_weight * a.cycle_weight * (G(y_)[0] - y_).abs().mean()        # CycleGAN's L_id
        gan = ((D_Y(G_y) - 1) ** 2).mean()                                                   # Eq. (5), LSGAN
        if a.attention_d:
            gan = gan + ((D_YA(torch.cat([A_y, G_y], 1)) - 1) ** 2).mean()                   # Eq. (6)
        tv = ((masks[..., 1:] - masks[..., :-1]).abs().sum((1, 2, 3))
              + (masks[..., 1:, :] - masks[..., :-1, :]).abs().sum((1, 2, 3))).mean()        # Eq. (7)
        adv = adv + a.adv_weight * gan + a.tv_weight * tv
    loss = r * rec + (1 - r) * adv
    assert_same_gradients(captured["grads"], loss, [*nets["G_XY"].parameters(), *nets["G_YX"].parameters()])


@pytest.mark.parametrize("scheme, kw", [("I", {}), ("II", {}), ("II", dict(attention_d=True)),
                                        ("I", dict(real_pair_mask="y")),
                                        ("II", dict(attention_d=True, real_pair_mask="y"))])
def test_discriminator_gradients_are_those_of_eq_5_and_6(scheme, kw):
    """D's side, halved (§3.4): ½[(D_Y(y) − 1)² + D_Y(G_y)²] + ½[(D_YA([A_y, y]) − 1)² + D_YA([A_y, G_y])²] and
    the same for X, the real pair with the attention of G_y (§3.2), or with --real_pair_mask y the attention
    G_{Y→X} gives y after its update; no pool, fakes from before G's update."""
    m = model(scheme=scheme, pool_size=0, **kw)
    nets = {k: copy.deepcopy(v) for k, v in m.nets.items()}
    captured = capture_step(m, "D")
    x, y = images()
    m.train_step(x, y)
    loss = 0.0
    with torch.no_grad():
        fakes = written_out(nets, scheme, x, y)
    for x_, y_, G, F_, D_Y, D_YA, G_y, A_y, masks in fakes:
        loss = loss + 0.5 * (((D_Y(y_) - 1) ** 2).mean() + (D_Y(G_y) ** 2).mean())
        if m.args.attention_d:
            with torch.no_grad():  # y's own mask comes from G_{Y→X} as this step's update left it
                own = m.nets["G_YX" if F_ is nets["G_YX"] else "G_XY"](y_)[1]
            A_real = A_y if m.args.real_pair_mask == "x" else own if scheme == "I" else 1 - own[:, -1:]
            loss = loss + 0.5 * (((D_YA(torch.cat([A_real, y_], 1)) - 1) ** 2).mean()
                                 + (D_YA(torch.cat([A_y, G_y], 1)) ** 2).mean())
    params = [p for k, net in nets.items() if k.startswith("D") for p in net.parameters()]
    assert_same_gradients(captured["grads"], loss, params)


def test_table_1_ablations_remove_what_they_name():
    m = model(scheme="I", attention_d=False)                             # −AD
    assert set(m.nets) == {"G_XY", "G_YX", "D_Y", "D_X"} and "G_agan" not in m.train_step(*images())
    m = model(attention_g=False)                                         # −AG: CycleGAN's generator
    x, y = images()
    out, att = m.translate(x)
    assert att is None and isinstance(m.G_XY, ag.Plain) and "D_YA" not in m.nets
    assert {"G_tv", "G_agan"}.isdisjoint(m.train_step(x, y))
    assert "G_pixel" not in model(scheme="I", pixel_weight=0.0).train_step(x, y)   # −PL
    assert "G_tv" not in model(scheme="I", tv_weight=0.0).train_step(x, y)         # −AL
    assert "G_identity" not in model(identity_weight=0.0).train_step(x, y)


def test_the_discriminators_judge_attention_image_pairs():
    m = model(scheme="I")
    seen = []
    m.nets["D_YA"].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    m.train_step(*images())
    assert seen and set(seen) == {4}                              # [A_y, image]: 1 + 3 channels (§3.2)


def test_pool_keeps_attention_image_pairs_and_round_trips():
    m = model(pool_size=3)
    for _ in range(2):
        m.train_step(*images())
    stored = m.pools["Y"].state_dict()["images"]
    assert stored.shape == (3, 4, 32, 32)  # batch 2 twice, capped at 3; [A, image]
    fresh = model(pool_size=3)
    fresh.pools["Y"].load_state_dict(m.pools["Y"].state_dict())
    assert torch.equal(torch.stack(fresh.pools["Y"].images), stored)


def test_visuals_show_masks_content_and_result():
    m = model(n_masks=4)
    tiles = m.visuals(images()[0])
    assert len(tiles) == 1 + 4 + 3 + 1                             # input, A^b + 3 masks, 3 contents, output
    assert [t.shape[1] for t in tiles] == [3] + [1] * 4 + [3] * 4
    assert all(t.min() >= -1 and t.max() <= 1 for t in tiles)


# --- The authors' checkpoints -------------------------------------------------------------------------------------

def listing(name):
    rows = [l.split("\t") for l in (LISTINGS / name).read_text().splitlines() if l and not l.startswith("#")]
    return {k: tuple(int(d) for d in shape.strip("()").split(",") if d.strip()) for k, shape, _ in rows}


def test_authors_listing_maps_onto_our_scheme_II_generator():
    theirs = listing("attentiongan-state-dict-G.txt")
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in ag.SchemeII(64, 9, 10).state_dict().items()}
    mapped = {k: shape for k, shape in ag.from_authors(theirs).items()}
    assert mapped == ours
    with torch.device("meta"):
        assert {k: tuple(v.shape) for k, v in PatchGAN(3).state_dict().items()} == \
            listing("attentiongan-state-dict-D.txt")


def their_generator(sd, x, n_res):
    """Their scheme II forward, from the reference notes: reflect-pad 3, conv7, IN, ReLU; conv3 stride 2 zero-pad 1,
    IN, ReLU (twice); residual blocks [reflect-pad 1, conv3, IN, ReLU, reflect-pad 1, conv3, IN] + x; per decoder
    2× [ConvTranspose3 stride 2 pad 1 output-pad 1, IN, ReLU]; content: reflect-pad 3, conv7, tanh; attention:
    conv1×1, softmax; output Σ_{i<10} image_i · attention_i + input · attention_10."""
    IN = lambda t: F.instance_norm(t, eps=1e-5)  # noqa: E731
    conv = lambda t, k, **kw: F.conv2d(t, sd[f"{k}.weight"], sd[f"{k}.bias"], **kw)  # noqa: E731
    h = F.relu(IN(conv(F.pad(x, (3,) * 4, mode="reflect"), "conv1")))
    h = F.relu(IN(conv(h, "conv2", stride=2, padding=1)))
    h = F.relu(IN(conv(h, "conv3", stride=2, padding=1)))
    for i in range(n_res):
        r = F.relu(IN(conv(F.pad(h, (1,) * 4, mode="reflect"), f"resnet_blocks.{i}.conv1")))
        h = h + IN(conv(F.pad(r, (1,) * 4, mode="reflect"), f"resnet_blocks.{i}.conv2"))

    def decoder(kind):
        t = h
        for j in (1, 2):
            t = F.conv_transpose2d(t, sd[f"deconv{j}_{kind}.weight"], sd[f"deconv{j}_{kind}.bias"], stride=2,
                                   padding=1, output_padding=1)
            t = F.relu(IN(t))
        return t
    image = torch.tanh(conv(F.pad(decoder("content"), (3,) * 4, mode="reflect"), "deconv3_content"))
    attention = torch.softmax(conv(decoder("attention"), "deconv3_attention"), 1)
    n = attention.shape[1]
    return sum(image[:, 3 * i:3 * i + 3] * attention[:, i:i + 1] for i in range(n - 1)) + x * attention[:, -1:]


def their_state_dict(ch, n_res):
    """A random state dict in their layout (the listing's keys at ch 64 and 9 blocks, scaled down)."""
    scale = {64: ch, 128: 2 * ch, 256: 4 * ch}
    sd = {}
    for key, shape in listing("attentiongan-state-dict-G.txt").items():
        if key.startswith("resnet_blocks.") and int(key.split(".")[1]) >= n_res:
            continue
        sd[key] = torch.randn(tuple(scale.get(d, d) for d in shape)) * 0.1
    return sd


def test_authors_weights_give_their_networks_outputs(tmp_path):
    sd_A, sd_B = their_state_dict(4, 2), their_state_dict(4, 2)
    torch.save(sd_A, tmp_path / "latest_net_G_A.pth")
    torch.save(sd_B, tmp_path / "latest_net_G_B.pth")
    m = model(ch=4, n_res=2, n_masks=10, weights=str(tmp_path))
    x = torch.rand(2, 3, 36, 36) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(m.translate(x, "A2B")[0], their_generator(sd_A, x, 2), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m.translate(x, "B2A")[0], their_generator(sd_B, x, 2), rtol=1e-4, atol=1e-5)
    with pytest.raises(UsageError, match="latest_net_G_B.pth"):
        (tmp_path / "latest_net_G_B.pth").unlink()
        model(ch=4, n_res=2, n_masks=10, weights=str(tmp_path))


# --- End to end ---------------------------------------------------------------------------------------------------

TINY = ["--img_size", "32", "--ch", "4", "--ndf", "8", "--n_res", "1", "--n_masks", "3", "--log_freq", "1"]


def run(tmp_path, *args, check=True):
    tmp_path.mkdir(exist_ok=True)
    p = subprocess.run([sys.executable, str(ROOT / "attentiongan.py"), "--result_dir", str(tmp_path / "runs"), *args],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def logged(root):
    return [{k: v for k, v in json.loads(l).items() if k != "time"}
            for l in (root / "log.jsonl").read_text().splitlines() if "eval" not in l]


def test_script_trains_resumes_exactly_across_the_curriculum_and_tests(tmp_path):
    # Scheme I, 8 iterations of 200 "epochs" with a 50-epoch curriculum: r = 0.01 for iterations 1-2. A pool of 2
    # fills at once, so the resumed run's D sees the same fakes only if the pool was saved and restored.
    args = [*TINY, "--scheme", "I", "--curriculum_epochs", "50", "--print_freq", "4", "--save_freq", "1",
            "--pool_size", "2", "--decay_flag", "False"]
    straight = tmp_path / "straight"
    p = run(straight, *args, "--iteration", "8")
    assert "--lr 0.0001" in p.stdout and "--attention_d True" in p.stdout  # the settings line shows scheme I's
    assert [r["r"] for r in logged(straight / "runs/attentiongan/shapes")] == [0.01] * 2 + [0.5] * 6
    # a second run stopped at 1 (inside the curriculum) and resumed, against the straight one (constant lr: a run of
    # 1 iteration would otherwise have decayed it to 0 already)
    third = tmp_path / "third"
    run(third, *args, "--iteration", "1")
    p = run(third, *args, "--iteration", "8", "--resume")
    assert "resumed from" in p.stdout and "A2B/bg_psnr" in p.stdout and "A2B/iou" in p.stdout
    assert logged(third / "runs/attentiongan/shapes") == logged(straight / "runs/attentiongan/shapes")

    root = third / "runs/attentiongan/shapes"
    run(third, *args, "--phase", "test")
    sample = Image.open(sorted((root / "test/A2B").iterdir())[0])
    assert sample.size[0] > 4 * 32                                   # input | A | C | output
    assert "A2B/target" in json.loads((root / "test/metrics.json").read_text())


def test_plain_cyclegan_row_reports_no_iou_and_epochs_set_the_length(tmp_path):
    for domain, n in (("trainA", 3), ("trainB", 5), ("testA", 1), ("testB", 1)):
        (tmp_path / "dataset/tiny" / domain).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (40, 36), (30 * i, 100, 200)).save(tmp_path / "dataset/tiny" / domain / f"{i}.jpg")
    p = run(tmp_path, *TINY, "--dataset", "tiny", "--epochs", "2", "--batch_size", "2", "--attention_g", "False")
    assert "--iteration 5" in p.stdout                              # 2 epochs × 5 images / batch 2, rounded up
    root = tmp_path / "runs/attentiongan/tiny"
    assert [r["step"] for r in logged(root)] == [1, 2, 3, 4, 5]
    run(tmp_path, *TINY, "--dataset", "tiny", "--attention_g", "False", "--phase", "test")
    assert len(list((root / "test/A2B").iterdir())) == 1
    p = run(tmp_path, *TINY, "--attention_g", "False", "--iteration", "1")
    assert "A2B/bg_psnr" in p.stdout and "iou" not in p.stdout.split("shapes evaluation")[1]


@pytest.mark.parametrize("args, message", [
    (["--scheme", "III"], "invalid choice"),
    (["--n_masks", "1"], "--n_masks 1"),
    (["--curriculum_epochs", "300"], "--curriculum_epochs 300"),
    (["--epochs", "0"], "--epochs 0"),
    (["--weights", "nowhere/"], "--weights nowhere"),
])
def test_bad_input_gives_one_clear_line(tmp_path, args, message):
    p = run(tmp_path, *TINY, "--iteration", "1", *args, check=False)
    assert p.returncode == 2 and message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
