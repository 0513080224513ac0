"""The authors' UGATIT-pytorch checkpoints (znxlwm, b8c4251) against ugatit.py.

Their architecture is read from their code at that commit, and their parameter listings at 256 px, ch 64, n_res 4
are in tests/data/ (ugatit-pytorch-state-dict-{light,full}.txt). Here:

- `authors_shapes` rebuilds their state-dict layout from that description, and must reproduce both listings;
- `from_authors` must map every one of their keys onto a key of ours with the same shape, covering all of ours;
- their generator's forward, written out below over a state dict in THEIR layout (`their_generator`), must give
  what our Generator gives once the same dict is loaded through `from_authors` / `UGATIT.load_weights`;
- their discriminators load, and our D in eval mode uses their stored power-iteration vectors for σ = uᵀWv.
  Our D's CAM re-weights with the normalised fc weight where theirs uses `weight_orig` (a documented choice), so
  D is compared with a reference that does the same, not with theirs, except for the CAM logits, where both agree.
"""
import ast
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.train import UsageError, build_parser, load_nets  # noqa: E402
from ugatit import DEFAULTS, Discriminator, Generator, add_arguments, from_authors, make_model  # noqa: E402

REFERENCE = Path(__file__).resolve().parent / "data"  # the listings, copied from the project's reference notes
LISTINGS = {light: REFERENCE / f"ugatit-pytorch-state-dict-{'light' if light else 'full'}.txt"
            for light in (True, False)}
EPS = 1e-5
TOL = 1e-4


# --- Their layout, from the description of their code ------------------------------------------------------------

def _their_generator_shapes(ch, n_res, img_size, light, img_ch=3):
    """Keys in the order their Generator registers them (CAM and MLP heads first, DownBlock / FC / UpBlock2 last)."""
    C = 4 * ch
    g = {"gap_fc.weight": (1, C), "gmp_fc.weight": (1, C),
         "conv1x1.weight": (C, 2 * C, 1, 1), "conv1x1.bias": (C,),
         "gamma.weight": (C, C), "beta.weight": (C, C)}
    for i in range(1, n_res + 1):                       # AdaILN residual blocks, no conv bias
        for j in (1, 2):
            g[f"UpBlock1_{i}.conv{j}.weight"] = (C, C, 3, 3)
            g[f"UpBlock1_{i}.norm{j}.rho"] = (1, C, 1, 1)
    # DownBlock: 0 pad, 1 conv7, 2 IN, 3 ReLU, then [pad, conv3 s2, IN, ReLU] twice (convs at 5, 9), ResNet blocks
    # from 12 on, each [0 pad, 1 conv3, 2 IN, 3 ReLU, 4 pad, 5 conv3, 6 IN].
    g["DownBlock.1.weight"] = (ch, img_ch, 7, 7)
    g["DownBlock.5.weight"] = (2 * ch, ch, 3, 3)
    g["DownBlock.9.weight"] = (C, 2 * ch, 3, 3)
    for i in range(n_res):
        g[f"DownBlock.{12 + i}.conv_block.1.weight"] = (C, C, 3, 3)
        g[f"DownBlock.{12 + i}.conv_block.5.weight"] = (C, C, 3, 3)
    # FC = [Linear, ReLU, Linear, ReLU]: light sees the pooled features, full all (S/4)²·4ch of them.
    g["FC.0.weight"] = (C, C if light else (img_size // 4) ** 2 * C)
    g["FC.2.weight"] = (C, C)
    # UpBlock2: 2× [0/5 upsample, 1/6 pad, 2/7 conv3, 3/8 ILN, 4/9 ReLU], 10 pad, 11 conv7, 12 tanh.
    for conv_i, norm_i, c_in in ((2, 3, C), (7, 8, C // 2)):
        g[f"UpBlock2.{conv_i}.weight"] = (c_in // 2, c_in, 3, 3)
        for name in ("rho", "gamma", "beta"):
            g[f"UpBlock2.{norm_i}.{name}"] = (1, c_in // 2, 1, 1)
    g["UpBlock2.11.weight"] = (img_ch, C // 4, 7, 7)
    return g


def _sn(key, shape, bias=None):
    """torch.nn.utils.spectral_norm's entries: (bias,) weight_orig, weight_u (rows), weight_v (the rest)."""
    rows, rest = shape[0], math.prod(shape[1:])
    out = {} if bias is None else {f"{key}.bias": (bias,)}
    out.update({f"{key}.weight_orig": tuple(shape), f"{key}.weight_u": (rows,), f"{key}.weight_v": (rest,)})
    return out


def _their_discriminator_shapes(ch, n_layers, img_ch=3):
    """n_layers 7 (global) or 5 (local): n_layers − 1 convs in `model` (one stride 2, n_layers − 3 more stride 2,
    one stride 1, channels doubling from ch), then the classifier `conv`. `model` = [pad, SN conv4, LeakyReLU]×."""
    chans = [img_ch, ch] + [ch * 2 ** k for k in range(1, n_layers - 1)]
    C = chans[-1]
    d = {}
    d.update(_sn("gap_fc", (1, C)))
    d.update(_sn("gmp_fc", (1, C)))
    d.update({"conv1x1.weight": (C, 2 * C, 1, 1), "conv1x1.bias": (C,)})
    d.update(_sn("conv", (1, C, 4, 4)))
    for j, (c_in, c_out) in enumerate(zip(chans, chans[1:])):
        d.update(_sn(f"model.{3 * j + 1}", (c_out, c_in, 4, 4), bias=c_out))
    return d


def authors_shapes(ch, n_res, img_size, light):
    """{"genA2B": {key: shape}, "disGA": ..., "disLA": ...} in the authors' key layout (genB2A, disGB, disLB are
    the same as genA2B, disGA, disLA). Their discriminators do not depend on img_size (7 and 5 layers always)."""
    return {"genA2B": _their_generator_shapes(ch, n_res, img_size, light),
            "disGA": _their_discriminator_shapes(ch, 7),
            "disLA": _their_discriminator_shapes(ch, 5)}


def parse_listing(path):
    """{"genA2B": [(key, shape), ...], ...} from a listing; checks each line's count and each header's totals."""
    sections, headers = {}, {}
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            name, *fields = line[3:].split()
            sections[name] = []
            headers[name] = {k: int(v.replace(",", "")) for k, v in (f.split("=") for f in fields)}
        elif line.strip() and not line.startswith("#"):
            key, shape, count = line.split("\t")
            section, _, key = key.partition(".")
            shape = tuple(ast.literal_eval(shape))
            assert math.prod(shape) == int(count), line
            sections[section].append((key, shape))
    for name, entries in sections.items():
        assert len(entries) == headers[name]["state_dict_entries"], name
        params = sum(math.prod(s) for k, s in entries if not k.endswith(("weight_u", "weight_v")))
        assert params == headers[name]["params"], name
    return sections


# --- Random weights in their layout ------------------------------------------------------------------------------

def _power_iteration(W, steps, gen):
    """u, v as their spectral_norm leaves them after `steps` training forwards (from a random start)."""
    W = W.flatten(1)
    u = F.normalize(torch.randn(W.shape[0], generator=gen), dim=0)
    for _ in range(steps):
        v = F.normalize(W.t() @ u, dim=0)
        u = F.normalize(W @ v, dim=0)
    return u, v


def random_authors_state(shapes, seed):
    """Weights at a sensible scale: convs and linears N(0, 1/fan_in), biases N(0, 0.1²), ρ ~ U[0, 1], ILN γ ≈ 1,
    β ≈ 0; spectral-norm u, v after 3 power-iteration steps on weight_orig."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith(("weight_u", "weight_v")):
            continue
        if key.endswith(".rho"):
            t = torch.rand(shape, generator=gen)
        elif key.endswith(".gamma"):
            t = 1 + 0.1 * torch.randn(shape, generator=gen)
        elif key.endswith((".beta", ".bias")):
            t = 0.1 * torch.randn(shape, generator=gen)
        else:
            t = torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))
        state[key] = t
    for key, shape in shapes.items():
        if key.endswith("weight_u"):
            base = key[:-len("weight_u")]
            state[base + "weight_u"], state[base + "weight_v"] = _power_iteration(state[base + "weight_orig"], 3,
                                                                                   gen)
    assert {k: tuple(v.shape) for k, v in state.items()} == dict(shapes)
    return state


# --- Their forward, written out over their state dict ------------------------------------------------------------

def _conv(p, key, h, pad, stride=1, weight=None):
    if pad:
        h = F.pad(h, (pad,) * 4, mode="reflect")
    return F.conv2d(h, p[key + ".weight"] if weight is None else weight, p.get(key + ".bias"), stride)


def _normalize(h, dims, correction):
    mean = h.mean(dims, keepdim=True)
    var = torch.var(h, dims, keepdim=True, correction=correction)
    return (h - mean) / torch.sqrt(var + EPS)


def _instance_norm(h):          # nn.InstanceNorm2d(affine=False): biased variance
    return _normalize(h, (2, 3), correction=0)


def _ada_iln(h, rho, gamma, beta):
    """adaILN / ILN: ρ·IN + (1 − ρ)·LN, both with the UNBIASED variance (torch.var's default), then γ, β."""
    out = rho * _normalize(h, (2, 3), correction=1) + (1 - rho) * _normalize(h, (1, 2, 3), correction=1)
    return out * gamma + beta


def their_generator(p, x, n_res, light):
    """(image, cam_logit, heatmap) of their ResnetGenerator, from its state dict p (their keys)."""
    h = F.relu(_instance_norm(_conv(p, "DownBlock.1", x, 3)))
    h = F.relu(_instance_norm(_conv(p, "DownBlock.5", h, 1, stride=2)))
    h = F.relu(_instance_norm(_conv(p, "DownBlock.9", h, 1, stride=2)))
    for i in range(n_res):
        k = f"DownBlock.{12 + i}.conv_block"
        r = F.relu(_instance_norm(_conv(p, k + ".1", h, 1)))
        h = h + _instance_norm(_conv(p, k + ".5", r, 1))          # no ReLU after the sum

    w_gap, w_gmp = p["gap_fc.weight"], p["gmp_fc.weight"]        # two Linear(4ch, 1, bias=False)
    gap_logit = F.linear(F.adaptive_avg_pool2d(h, 1).flatten(1), w_gap)
    gmp_logit = F.linear(F.adaptive_max_pool2d(h, 1).flatten(1), w_gmp)
    cam_logit = torch.cat([gap_logit, gmp_logit], 1)
    h = torch.cat([h * w_gap[:, :, None, None], h * w_gmp[:, :, None, None]], 1)
    h = F.relu(_conv(p, "conv1x1", h, 0))
    heatmap = h.sum(1, keepdim=True)

    z = F.adaptive_avg_pool2d(h, 1).reshape(len(h), -1) if light else h.reshape(len(h), -1)
    z = F.relu(F.linear(F.relu(F.linear(z, p["FC.0.weight"])), p["FC.2.weight"]))
    gamma = F.linear(z, p["gamma.weight"])[:, :, None, None]
    beta = F.linear(z, p["beta.weight"])[:, :, None, None]
    for i in range(1, n_res + 1):
        k = f"UpBlock1_{i}"
        r = F.relu(_ada_iln(_conv(p, k + ".conv1", h, 1), p[k + ".norm1.rho"], gamma, beta))
        h = h + _ada_iln(_conv(p, k + ".conv2", r, 1), p[k + ".norm2.rho"], gamma, beta)

    for conv_i, norm_i in ((2, 3), (7, 8)):
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        n = f"UpBlock2.{norm_i}"
        h = F.relu(_ada_iln(_conv(p, f"UpBlock2.{conv_i}", h, 1), p[n + ".rho"], p[n + ".gamma"], p[n + ".beta"]))
    return torch.tanh(_conv(p, "UpBlock2.11", h, 3)), cam_logit, heatmap


def _sn_weight(p, key):
    """W / σ with σ = uᵀ(W v) from the stored vectors (their spectral_norm at eval time)."""
    W = p[key + ".weight_orig"]
    sigma = torch.dot(p[key + ".weight_u"], torch.mv(W.flatten(1), p[key + ".weight_v"]))
    return W / sigma


def reference_discriminator(p, x, n_layers, reweight_with):
    """Their discriminator over their state dict p, with the CAM re-weighting by `reweight_with` = "weight_orig"
    (theirs, as released) or "normalised" (the paper's w_Dt, which ugatit.py follows)."""
    h = x
    for j in range(n_layers - 1):
        k = f"model.{3 * j + 1}"
        h = F.leaky_relu(_conv(p, k, h, 1, stride=1 if j == n_layers - 2 else 2, weight=_sn_weight(p, k)), 0.2)
    w_gap, w_gmp = _sn_weight(p, "gap_fc"), _sn_weight(p, "gmp_fc")
    cam_logit = torch.cat([F.linear(F.adaptive_avg_pool2d(h, 1).flatten(1), w_gap),
                           F.linear(F.adaptive_max_pool2d(h, 1).flatten(1), w_gmp)], 1)
    if reweight_with == "weight_orig":
        w_gap, w_gmp = p["gap_fc.weight_orig"], p["gmp_fc.weight_orig"]
    h = torch.cat([h * w_gap[:, :, None, None], h * w_gmp[:, :, None, None]], 1)
    h = F.leaky_relu(_conv(p, "conv1x1", h, 0), 0.2)
    heatmap = h.sum(1, keepdim=True)
    return _conv(p, "conv", h, 1, weight=_sn_weight(p, "conv")), cam_logit, heatmap


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: one intra-op thread is as fast as two, and on a loaded 2-core machine idle OpenMP
    threads spinning against other processes made this file ten times slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- Helpers ------------------------------------------------------------------------------------------------------

def _args(*argv):
    parser = build_parser("ugatit", "", DEFAULTS)
    add_arguments(parser)
    return parser.parse_args(list(argv))


def _inputs(img_size, seed=1):
    return torch.rand(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _max_diff(ours, theirs):
    assert ours.shape == theirs.shape
    return (ours - theirs).abs().max().item()


def _compare_generator(G, p, n_res, light, x, what):
    with torch.no_grad():
        ours = G(x)
        theirs = their_generator(p, x, n_res, light)
    for name, o, t in zip(("image", "cam_logit", "heatmap"), ours, theirs):
        d = _max_diff(o, t)
        print(f"{what} {name}: max |ours - theirs| = {d:.2e} (|theirs| up to {t.abs().max().item():.3g})")
        assert d <= TOL, (what, name, d)
    assert ours[1].shape == (len(x), 2)
    return ours


def _checkpoint(ch, n_res, img_size, light, seed):
    shapes = authors_shapes(ch, n_res, img_size, light)
    names = {"genA2B": "genA2B", "genB2A": "genA2B", "disGA": "disGA", "disGB": "disGA", "disLA": "disLA",
             "disLB": "disLA"}
    return {net: random_authors_state(shapes[layout], seed + i) for i, (net, layout) in enumerate(names.items())}


# --- 1. The layout --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("light", [True, False], ids=["light", "full"])
def test_authors_shapes_reproduce_the_listings(light):
    listing = parse_listing(LISTINGS[light])
    ours = authors_shapes(64, 4, 256, light)
    assert list(listing) == list(ours)
    for net in listing:
        assert list(ours[net].items()) == listing[net], net


# --- 2. The renaming ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("light", [True, False], ids=["light", "full"])
def test_from_authors_maps_every_key_onto_ours(light):
    listing = {net: dict(entries) for net, entries in parse_listing(LISTINGS[light]).items()}
    with torch.device("meta"):                      # the full MLP's 268M weights cost nothing here
        nets = {"genA2B": Generator(64, 4, 256, light), "disGA": Discriminator(6, 256, 64),
                "disLA": Discriminator(4, 256, 64)}
    saved = {}
    for net, shapes in listing.items():
        theirs = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
        renamed = from_authors(theirs)
        assert len(renamed) == len(theirs), f"{net}: two of their keys map onto one of ours"
        ours = {k: tuple(v.shape) for k, v in nets[net].state_dict().items()}
        mapped = {k: tuple(v.shape) for k, v in renamed.items()}
        assert sorted(set(mapped) - set(ours)) == [], f"{net}: their keys with no counterpart here"
        assert sorted(set(ours) - set(mapped)) == [], f"{net}: keys of ours their checkpoint does not fill"
        assert {k: s for k, s in mapped.items() if ours[k] != s} == {}, f"{net}: shape mismatches"
        saved[net] = renamed
    load_nets(nets, saved, "listing")               # the loader's own check agrees


# --- 3. The generator, number for number ----------------------------------------------------------------------

@pytest.mark.parametrize("light", [True, False], ids=["light", "full"])
def test_generator_matches_their_forward(light):
    ch, n_res, img_size = 8, 2, 64
    p = random_authors_state(authors_shapes(ch, n_res, img_size, light)["genA2B"], seed=10)
    G = Generator(ch, n_res, img_size, light).eval()
    G.load_state_dict(from_authors(p))
    image, cam_logit, heatmap = _compare_generator(G, p, n_res, light, _inputs(img_size), f"G {img_size}px "
                                                   f"{'light' if light else 'full'}")
    assert image.shape == (2, 3, img_size, img_size) and heatmap.shape == (2, 1, img_size // 4, img_size // 4)
    assert heatmap.abs().max() > 1 and cam_logit.abs().max() > 1e-2      # not a vacuous comparison


@pytest.mark.parametrize("light", [True, False], ids=["light", "full"])
def test_authors_checkpoint_file_loads_into_ugatit(tmp_path, light):
    # 96 px: the smallest size their global discriminator runs at, and where ours has all its layers too.
    ch, n_res, img_size = 8, 2, 96
    state = _checkpoint(ch, n_res, img_size, light, seed=20)
    path = tmp_path / "selfie2anime_params_0100000.pt"
    torch.save(state, path)
    flags = ["--ch", str(ch), "--n_res", str(n_res), "--img_size", str(img_size), "--light", str(light)]
    model = make_model(_args(*flags), torch.device("cpu"))
    model.load_weights(path)
    x = _inputs(img_size, seed=2)
    for net in ("genA2B", "genB2A"):
        _compare_generator(model.nets[net].eval(), state[net], n_res, light, x, f"load_weights {net}")
    # --weights does the same at construction.
    model = make_model(_args(*flags, "--weights", str(path)), torch.device("cpu"))
    for net in ("genA2B", "genB2A"):
        _compare_generator(model.nets[net].eval(), state[net], n_res, light, x, f"--weights {net}")
    for net in ("disGA", "disGB", "disLA", "disLB"):
        D, p = model.nets[net].eval(), state[net]
        assert torch.equal(D.classifier[1].weight_u, p["conv.weight_u"])
        assert torch.equal(D.cam.gap_fc.weight_v, p["gap_fc.weight_v"])
        with torch.no_grad():
            logit, cam_logit, heatmap = D(x)
        assert all(t.isfinite().all() for t in (logit, cam_logit, heatmap))
        assert cam_logit.shape == (2, 2) and logit.shape[:2] == (2, 1) and heatmap.shape[:2] == (2, 1)


# --- 4. The discriminators ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["global", "local"])
def test_discriminator_with_their_weights(kind):
    ch, img_size = 8, 96
    n_layers, n_convs = (7, 6) if kind == "global" else (5, 4)
    layout = "disGA" if kind == "global" else "disLA"
    p = random_authors_state(authors_shapes(ch, 2, img_size, True)[layout], seed=30)
    D = Discriminator(n_convs, img_size, ch).eval()
    D.load_state_dict(from_authors(p))
    x = _inputs(img_size, seed=3)
    # Patch logits: global 96 → 48 → 24 → 12 → 6 → 3 → 2 → 1; local 96 → 48 → 24 → 12 → 11 → 10.
    expect = {"global": (2, 1, 1, 1), "local": (2, 1, 10, 10)}[kind]

    # Eval mode: σ = uᵀ(W v) from their stored u, v, untouched by the forward.
    with torch.no_grad():
        ours = D(x)
        ref = reference_discriminator(p, x, n_layers, "normalised")
        theirs = reference_discriminator(p, x, n_layers, "weight_orig")
    assert ours[0].shape == expect and ours[1].shape == (2, 2)
    assert torch.equal(D.encoder[1].weight_u, p["model.1.weight_u"])
    for name, o, r in zip(("logit", "cam_logit", "heatmap"), ours, ref):
        d = _max_diff(o, r)
        print(f"D {kind} eval {name}: max |ours - reference| = {d:.2e} (|reference| up to {r.abs().max():.3g})")
        assert d <= TOL, (name, d)
    # Their CAM logits use the normalised weight too: the same numbers. Their heatmap re-weights by weight_orig.
    assert _max_diff(ours[1], theirs[1]) <= TOL
    assert _max_diff(ours[2], theirs[2]) > 1e-3, "the re-weighting by the normalised weight should show"

    # Train mode: one power-iteration step per SN layer and forward (v ← Wᵀu/‖·‖, u ← Wv/‖·‖), as theirs.
    stepped = dict(p)
    for key in [k[:-len(".weight_u")] for k in p if k.endswith(".weight_u")]:
        W, u = p[key + ".weight_orig"].flatten(1), p[key + ".weight_u"]
        v = F.normalize(W.t() @ u, dim=0)
        stepped[key + ".weight_u"], stepped[key + ".weight_v"] = F.normalize(W @ v, dim=0), v
    D.train()
    with torch.no_grad():
        ours = D(x)
        ref = reference_discriminator(stepped, x, n_layers, "normalised")
    renamed = from_authors(stepped)
    for k, v in D.state_dict().items():
        assert torch.allclose(v, renamed[k], atol=1e-6), k
    for name, o, r in zip(("logit", "cam_logit", "heatmap"), ours, ref):
        assert _max_diff(o, r) <= TOL, (name, _max_diff(o, r))


# --- 5. A checkpoint of another configuration ----------------------------------------------------------------

@pytest.mark.parametrize("saved, wanted, key", [
    (dict(light=True), dict(light=False), "genA2B.mlp.0.weight"),       # light checkpoint, full model
    (dict(light=False), dict(light=True), "genA2B.mlp.0.weight"),       # and the other way round
    (dict(ch=8), dict(ch=16), "genA2B.encoder.1.weight"),               # another width
    (dict(n_res=3), dict(n_res=2), "genA2B.encoder.14.conv_block.1.weight"),   # another depth
], ids=["light-into-full", "full-into-light", "ch", "n_res"])
def test_wrong_configuration_names_the_keys(tmp_path, saved, wanted, key):
    base = dict(ch=8, n_res=2, img_size=96, light=True)
    path = tmp_path / "params.pt"
    torch.save(_checkpoint(**{**base, **saved}, seed=40), path)
    cfg = {**base, **wanted}
    flags = [s for k, v in cfg.items() for s in (f"--{k}", str(v))]
    model = make_model(_args(*flags), torch.device("cpu"))
    with pytest.raises(UsageError, match=key.replace(".", r"\.")) as err:
        model.load_weights(path)
    assert "another configuration" in str(err.value)
    with pytest.raises(UsageError, match=key.replace(".", r"\.")):
        make_model(_args(*flags, "--weights", str(path)), torch.device("cpu"))
