"""common/fid.py: the FID Inception against its published parameter listing, where its weights come from and what
it refuses, the KID and FID statistics against their formulas, the folder command and the test phase's report.
No real weights here: a randomly initialised state dict with the listed keys stands in for the file."""
import hashlib
import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from common import fid
from conftest import ROOT
from test_download import server  # noqa: F401  (the local HTTP server on 127.0.0.1, a fixture)

LISTING = Path(__file__).parent / "data/fid-inception-state-dict.txt"  # ../shared/reference's, copied


def listing():
    rows = (line.split(" ", 1) for line in LISTING.read_text().splitlines())
    return {key: tuple(int(n) for n in shape.strip("()\n").split(",") if n.strip()) for key, shape in rows}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random state dict with every listed key (num_batches_tracked included, as some copies carry them). Its batch
    norms' running statistics are those of random images: with the initial ones (mean 0, variance 1), activations
    shrink layer by layer to features of ~1e-8 for every image, and the tests would compare zeros."""
    torch.manual_seed(1)
    net = fid.FIDInception()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a plain average over the calibration batch
    with torch.no_grad():
        net.train()(torch.rand(8, 3, 299, 299) * 2 - 1)
    path = tmp_path_factory.mktemp("fid") / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache, and no weights named in the environment."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("ATTNGAN_FID_WEIGHTS", raising=False)
    return tmp_path / "torch_home/hub/checkpoints"


def features_of(net, seed=0):
    x = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return fid.features(net, x)


# ---------------------------------------------------------------------------------------------------------------------
# The network and its weights


def test_the_network_has_the_listed_keys_and_shapes():
    assert {k: tuple(v.shape) for k, v in fid.FIDInception().state_dict().items()} == listing()


def test_features_are_2048_per_image_of_any_size(weights):
    net = fid.load_inception(weights)
    assert not net.training
    assert fid.features(net, torch.zeros(3, 3, 40, 70)).shape == (3, fid.FEATURES)
    # In batches or one by one, the same features: eval mode, no batch statistics.
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(fid.features(net, x, batch_size=2), fid.features(net, x, batch_size=3))


def test_the_input_is_resized_to_299_bilinearly_then_read_on_the_minus_1_to_1_scale(weights):
    """pytorch-fid resizes [0, 1] images and then scales them to [-1, 1]; we resize [-1, 1] images directly."""
    net = fid.load_inception(weights)
    x01 = torch.rand(1, 3, 50, 60)
    resized = F.interpolate(x01, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
    # float32 rounding of the two orders, through 94 layers: features ~70, differences ~1e-4
    torch.testing.assert_close(fid.features(net, x01 * 2 - 1), fid.features(net, resized), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("block", ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                                   "Mixed_6e", "Mixed_7b"])
def test_pool_branches_average_without_the_padding(block):
    """A constant image stays constant to its corners: an average over the window's pixels inside the image. With the
    padding counted, a corner would get 4/9 of it."""
    pool = getattr(fid.FIDInception(), block).pool
    out = pool(torch.full((1, 2, 5, 5), 3.0))
    torch.testing.assert_close(out, torch.full_like(out, 3.0))


def test_the_last_pool_branch_is_a_3x3_max_pool():
    pool = fid.FIDInception().Mixed_7c.pool
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 0, 0], x[0, 0, 3, 2] = -1.0, 2.0
    expected = torch.zeros(1, 1, 5, 5)
    expected[0, 0, 2:5, 1:4] = 2.0  # the spike fills its 3x3 neighbourhood; the negative corner is lost to the zeros
    torch.testing.assert_close(pool(x), expected)


def test_weights_come_from_the_flag_then_the_environment_then_the_hub_cache(weights, hub, monkeypatch, tmp_path):
    assert fid.find_weights(str(weights)) == weights
    monkeypatch.setenv("ATTNGAN_FID_WEIGHTS", str(weights))
    assert fid.find_weights(None) == weights
    monkeypatch.delenv("ATTNGAN_FID_WEIGHTS")
    assert fid.find_weights(None, download=False) is None
    hub.mkdir(parents=True)
    (hub / fid.weights_name()).write_bytes(weights.read_bytes())
    assert fid.find_weights(None, download=False) == hub / fid.weights_name()
    with pytest.raises(fid.FIDError, match="--fid_weights .*nowhere.pth: no such file"):
        fid.find_weights(str(tmp_path / "nowhere.pth"))


def test_the_weights_download_into_the_hub_cache_when_their_hash_matches_their_name(weights, hub, server,
                                                                                    monkeypatch):
    served, url, _ = server
    prefix = hashlib.sha256(weights.read_bytes()).hexdigest()[:8]
    name = f"pt_inception-2015-12-05-{prefix}.pth"
    (served / name).write_bytes(weights.read_bytes())
    monkeypatch.setattr(fid, "WEIGHTS_URL", f"{url}/{name}")
    path = fid.find_weights(None)
    assert path == hub / name and path.read_bytes() == weights.read_bytes()
    assert [p.name for p in hub.iterdir()] == [name]  # no partial file left
    torch.testing.assert_close(features_of(fid.load_inception(path)), features_of(fid.load_inception(weights)))


def test_a_download_whose_hash_differs_from_its_name_is_not_kept(weights, hub, server, monkeypatch):
    served, url, _ = server
    (served / "pt_inception-2015-12-05-00000000.pth").write_bytes(weights.read_bytes())
    monkeypatch.setattr(fid, "WEIGHTS_URL", f"{url}/pt_inception-2015-12-05-00000000.pth")
    with pytest.raises(fid.FIDError, match="SHA-256 begins .*, not 00000000: not kept"):
        fid.find_weights(None)
    assert list(hub.iterdir()) == []


def test_without_a_network_the_error_says_which_file_where_it_is_published_and_where_to_put_it(hub, server,
                                                                                                 monkeypatch):
    _, url, _ = server
    monkeypatch.setattr(fid, "WEIGHTS_URL", f"{url}/pt_inception-2015-12-05-6726825d.pth")  # 404
    with pytest.raises(fid.FIDError) as e:
        fid.find_weights(None)
    message = str(e.value)
    assert "\n" not in message
    assert "pt_inception-2015-12-05-6726825d.pth" in message and url in message and str(hub) in message
    assert "--fid_weights" in message
    assert list(hub.iterdir()) == []


def damaged(tmp_path, weights, how):
    state = torch.load(weights, weights_only=True)
    path = tmp_path / f"{how}.pth"
    if how == "wrong key":
        state["Mixed_5b.branch1x1.conv.weights"] = state.pop("Mixed_5b.branch1x1.conv.weight")
    elif how == "wrong shape":
        state["fc.weight"] = torch.zeros(1000, 2048)
    elif how == "missing key":
        del state["fc.bias"]
    if how == "truncated":
        path.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "code-running pickle":
        path.write_bytes(pickle.dumps(Evil()))
    else:
        torch.save(state, path)
    return path


class Evil:
    def __reduce__(self):
        return (print, ("this pickle ran code",))


@pytest.mark.parametrize("how, says", [("wrong key", "unknown Mixed_5b.branch1x1.conv.weights"),
                                       ("wrong shape", r"fc.weight of shape \(1000, 2048\), not \(1008, 2048\)"),
                                       ("missing key", "missing fc.bias"),
                                       ("truncated", "not a readable checkpoint"),
                                       ("code-running pickle", "not a readable checkpoint")])
def test_a_wrong_or_damaged_weights_file_is_refused_in_one_line_that_names_it(weights, tmp_path, capsys, how, says):
    path = damaged(tmp_path, weights, how)
    with pytest.raises(fid.FIDError, match=says) as e:
        fid.load_inception(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert "ran code" not in capsys.readouterr().out


def test_weights_without_num_batches_tracked_load(weights, tmp_path):
    state = {k: v for k, v in torch.load(weights, weights_only=True).items() if "num_batches_tracked" not in k}
    torch.save(state, tmp_path / "lean.pth")
    torch.testing.assert_close(features_of(fid.load_inception(tmp_path / "lean.pth")),
                               features_of(fid.load_inception(weights)))


# ---------------------------------------------------------------------------------------------------------------------
# The statistics, against their formulas in float64


def sqrtm_psd(a):
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet(x, y):
    """||mu_x - mu_y||^2 + Tr(S_x + S_y - 2 (S_x S_y)^(1/2)), the trace of the root through S_x^(1/2) S_y S_x^(1/2)."""
    mx, my, sx, sy = x.mean(0), y.mean(0), np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = sqrtm_psd(sx)
    return ((mx - my) ** 2).sum() + np.trace(sx + sy - 2 * sqrtm_psd(root @ sy @ root))


def test_fid_of_a_set_with_itself_is_0_and_kid_nearly():
    """KID's cross term counts the pairs (x_i, x_i) of a set with itself, so KID(X, X) is not 0 but -O(1/n): at
    1000 features in [0, 1]^64 (ReLU-like), within 0.1 of 0 where scaling the set by 1.1 gives over 1.5 (x 100)."""
    x = torch.rand(1000, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    same = fid.kid_fid(x, x.clone())
    assert same["FID"] == pytest.approx(0, abs=1e-9) and abs(same["KIDx100"]) < 0.1
    assert fid.kid_fid(x, 1.1 * x)["KIDx100"] > 1.5


def test_fid_is_the_frechet_distance_of_the_fitted_gaussians():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    y = rng.normal(size=(300, 6)) * [1, 2, 3, 1, 1, 0.5] + 0.7
    assert fid.kid_fid(torch.from_numpy(x), torch.from_numpy(y))["FID"] == pytest.approx(frechet(x, y), rel=1e-6)


def test_fid_approaches_the_closed_form_between_two_gaussians():
    """N(m1, diag s1^2) and N(m2, diag s2^2): FID = |m1 - m2|^2 + sum (s1 - s2)^2, here 4 + 4 * 1 = 8."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40000, 4, generator=g, dtype=torch.float64)
    y = 2 * torch.randn(40000, 4, generator=g, dtype=torch.float64) + torch.tensor([1.0, 1, 1, 1])
    assert fid.kid_fid(x, y)["FID"] == pytest.approx(8.0, abs=0.15)


def test_kid_uses_the_cubic_kernel_over_the_feature_dimension():
    """Two sets of one repeated point each: every subset's MMD^2 is k(a, a) + k(b, b) - 2 k(a, b), exactly, with
    k(x, y) = (x.y / d + 1)^3 and d = 2048."""
    a, b = torch.full((5, 2048), 0.5, dtype=torch.float64), torch.full((5, 2048), -0.25, dtype=torch.float64)
    k = lambda u, v: (u @ v / 2048 + 1) ** 3
    expected = k(a[0], a[0]) + k(b[0], b[0]) - 2 * k(a[0], b[0])
    report = fid.kid_fid(a, b)
    assert report["KIDx100"] == pytest.approx(100 * float(expected), rel=1e-9)
    assert report["KIDx100_std"] == pytest.approx(0, abs=1e-9)


def test_kid_is_unbiased_for_two_sets_from_one_distribution():
    """Over many pairs of small sets from one Gaussian, KID averages to 0 (within 3 standard errors), where the biased
    MMD^2 (the kernel's diagonal kept) averages clearly above 0: the test tells the two estimators apart."""
    g = torch.Generator().manual_seed(0)
    k = lambda u, v: (u @ v.T / u.shape[1] + 1) ** 3
    unbiased, biased = [], []
    for _ in range(200):
        x, y = torch.randn(2, 10, 8, generator=g, dtype=torch.float64)
        unbiased.append(fid.kid_fid(x, y)["KIDx100"] / 100)
        biased.append(float(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()))
    se = np.std(unbiased) / math.sqrt(len(unbiased))
    assert abs(np.mean(unbiased)) < 3 * se
    assert np.mean(biased) > 10 * se


def test_kid_needs_two_images_on_each_side():
    with pytest.raises(fid.FIDError, match="at least 2 images on each side, got 1 real"):
        fid.kid_fid(torch.zeros(1, 8), torch.zeros(5, 8))


def test_kid_subsets_are_min_1000_and_the_set_and_seeded():
    """On 1200 features the subsets hold 1000, so they differ and KID has a spread; drawn from a seed, it repeats."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 1200, 4, generator=g, dtype=torch.float64)
    first, again = fid.kid_fid(x, y + 0.1), fid.kid_fid(x, y + 0.1)
    assert first == again and first["KIDx100_std"] > 0


# ---------------------------------------------------------------------------------------------------------------------
# The folder command and the test phase


def save_images(folder, specs):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(len(specs))
    for i, (mode, size) in enumerate(specs):
        channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
        pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8).squeeze()
        Image.fromarray(pixels, mode).save(folder / f"{i}.png")


def test_the_folder_command_prints_kid_and_fid(weights, tmp_path):
    save_images(tmp_path / "real", [("RGB", (40, 30)), ("L", (32, 32)), ("RGBA", (20, 50))])  # mixed on purpose
    save_images(tmp_path / "fake", [("RGB", (32, 32))] * 3)
    p = subprocess.run([sys.executable, "-m", "common.fid", str(tmp_path / "real"), str(tmp_path / "fake"),
                        "--fid_weights", str(weights), "--img_size", "32"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "KID x 100 = " in p.stdout and "FID = " in p.stdout and "(3 real, 3 fake images; subsets of 3)" in p.stdout


@pytest.mark.parametrize("real, fake, says", [([], [("RGB", (8, 8))] * 2, "no image files in"),
                                              ([("RGB", (8, 8))], [("RGB", (8, 8))] * 2, "at least 2 images")])
def test_the_folder_command_refuses_what_it_cannot_measure_in_one_line(weights, tmp_path, capsys, real, fake, says):
    save_images(tmp_path / "real", real)
    save_images(tmp_path / "fake", fake)
    with pytest.raises(SystemExit) as e:
        fid.main([str(tmp_path / "real"), str(tmp_path / "fake"), "--fid_weights", str(weights), "--img_size", "8"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and says in err and len(err.strip().splitlines()) == 1


def folder_dataset(root, n):
    for split in ("trainA", "trainB", "testA", "testB"):
        save_images(root / split, [("RGB", (32, 32))] * n)
    return root


def test_the_test_phase_reports_kid_and_fid_beside_the_floor_of_copying_the_input(weights, tmp_path):
    data = folder_dataset(tmp_path / "toy", 3)
    base = [sys.executable, str(ROOT / "ugatit.py"), "--dataset", str(data), "--result_dir", str(tmp_path / "runs"),
            "--img_size", "32", "--ch", "4", "--n_res", "1", "--n_dis", "4", "--light"]
    p = subprocess.run(base + ["--iteration", "2"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    p = subprocess.run(base + ["--phase", "test", "--fid_weights", str(weights)], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    metrics = json.loads(next((tmp_path / "runs").rglob("metrics.json")).read_text())
    for direction in ("A2B", "B2A"):
        for prefix in (direction, f"identity/{direction}"):
            assert {f"{prefix}/KIDx100", f"{prefix}/KIDx100_std", f"{prefix}/FID"} <= metrics.keys()
    assert "KID x 100 and FID" in p.stdout and "identity: A2B/KIDx100" in p.stdout


def test_without_weights_or_network_the_test_phase_says_so_in_one_line_and_measures_nothing(tmp_path, hub, server,
                                                                                         monkeypatch, capsys):
    from common.train import inception_report
    from common.data import load_data
    _, url, _ = server
    monkeypatch.setattr(fid, "WEIGHTS_URL", f"{url}/pt_inception-2015-12-05-6726825d.pth")
    data = load_data(str(folder_dataset(tmp_path / "toy", 2)), 32)
    model = type("Copy", (), {"nets": {}, "translate": lambda self, x, d: (x, None)})()
    args = type("Args", (), {"fid_weights": None, "dataset": str(tmp_path / "toy")})()
    assert inception_report(model, args, data, "cpu") == {}
    assert "KID/FID skipped: KID/FID need pt_inception-2015-12-05-6726825d.pth" in capsys.readouterr().err


def test_the_report_scores_the_translation_and_beside_it_the_untranslated_input(weights):
    """Each direction: its translations against the other domain's real images, and the floor, identity/, the
    untranslated images against the same real ones (formed here from the features directly)."""
    net = fid.load_inception(weights)
    g = torch.Generator().manual_seed(0)
    testA, testB = (torch.rand(2, 3, 16, 16, generator=g) * 2 - 1 for _ in range(2))
    domain = lambda x: type("Domain", (), {"__len__": lambda self: len(x), "get": lambda self, i: x[i]})()
    flip = lambda x, direction: (x.flip(-1) if direction == "A2B" else -x, None)
    report = fid.report(flip, domain(testA), domain(testB), ("A2B", "B2A"), net, batch_size=2)
    f = lambda x: fid.features(net, x)
    for key, real, other in (("A2B", testB, testA.flip(-1)), ("identity/A2B", testB, testA),
                             ("B2A", testA, -testB), ("identity/B2A", testA, testB)):
        assert report[f"{key}/KIDx100"] == pytest.approx(fid.kid_fid(f(real), f(other))["KIDx100"], rel=1e-6)
