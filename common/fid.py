"""KID and FID as U-GAT-IT (Table 2, KID x 100), AttentionGAN (KID, FID) and UAIT (KID) report them.

All three papers compute them with the TensorFlow Inception v3 of 2015-12-05. Its PyTorch port, the one pytorch-fid
publishes as `pt_inception-2015-12-05-6726825d.pth`, is `FIDInception` below: torchvision's Inception3 with the FID
version's pooling (the pool branches of Mixed_5b-5d, 6b-6e and 7b average without counting the padding, Mixed_7c's
is a max pool). The features are the 2048 values of the last global average pool.

* FID (Heusel et al. 2017): ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)) between the Gaussians fitted to
  the two feature sets. Strongly biased on small sets: on 100 images a perfect generator scores far above 0.
* KID (Binkowski et al. 2018): the unbiased MMD^2 with the kernel k(x, y) = (x.y / 2048 + 1)^3, averaged over random
  subsets of min(1000, set size) images. Unbiased: 0 in expectation for two sets from one distribution. The papers
  print it x 100.
The statistics are torchmetrics' (`FrechetInceptionDistance`, `KernelInceptionDistance`) with this network as the
feature extractor; torchmetrics is imported only here, so training never needs it.

Where the weights come from, first found: --fid_weights PATH, $ATTNGAN_FID_WEIGHTS, the torch hub cache
(`torch.hub.get_dir()/checkpoints/`), else a download from pytorch-fid's release into that cache.

    python -m common.fid REAL_DIR FAKE_DIR [--fid_weights PATH] [--img_size S]
"""
import argparse
import hashlib
import os
import sys
import tempfile
import warnings
from contextlib import nullcontext
from pathlib import Path, PurePosixPath

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import checkpoints
from common.data import DataError, FolderDomain, download_limits, fetch

WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
FEATURES = 2048
SUBSETS = 100  # torch-fidelity's default number of KID subsets
SUBSET_SIZE = 1000  # KID's subset size as its authors computed it; smaller test sets use the whole set


class FIDError(DataError):
    """Weights or images that FID/KID cannot use, with a one-line message naming the file or folder."""


# ---------------------------------------------------------------------------------------------------------------------
# The network


class BasicConv2d(nn.Sequential):
    """Conv without bias, BN (TensorFlow's eps 0.001), ReLU: every convolution of Inception v3."""

    def __init__(self, c_in, c_out, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)
        self.relu = nn.ReLU(inplace=True)


def avg_pool():
    """The FID version's pool branch: the TF graph's 3x3 average ignores the zero padding at the border."""
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):  # Mixed_5b, 5c, 5d
    def __init__(self, c_in, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, 1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.pool = avg_pool()
        self.branch_pool = BasicConv2d(c_in, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x),
                          self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(self.pool(x))], 1)


class InceptionB(nn.Module):  # Mixed_6a: 35x35 -> 17x17
    def __init__(self, c_in):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):  # Mixed_6b-6e: 7x7 factorised as 1x7 then 7x1
    def __init__(self, c_in, c7):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.pool = avg_pool()
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x):
        dbl = x
        for i in range(1, 6):
            dbl = getattr(self, f"branch7x7dbl_{i}")(dbl)
        return torch.cat([self.branch1x1(x),
                          self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                          dbl,
                          self.branch_pool(self.pool(x))], 1)


class InceptionD(nn.Module):  # Mixed_7a: 17x17 -> 8x8
    def __init__(self, c_in):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b = x
        for i in range(1, 5):
            b = getattr(self, f"branch7x7x3_{i}")(b)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):  # Mixed_7b, 7c: 3x3 split into parallel 1x3 and 3x1
    def __init__(self, c_in, pool):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 320, 1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.pool = pool
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([self.branch1x1(x),
                          self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
                          self.branch_pool(self.pool(x))], 1)


class FIDInception(nn.Module):
    """Images in [-1, 1], any size (N x 3 x H x W) -> their N x 2048 FID features."""

    num_features = FEATURES  # torchmetrics reads this instead of probing the network with a random image

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool=avg_pool())
        self.Mixed_7c = InceptionE(2048, pool=nn.MaxPool2d(3, stride=1, padding=1))  # the TF graph's last pool
        self.fc = nn.Linear(FEATURES, 1008)  # the 1008 ImageNet logits: in the weights file, unused by FID

    def forward(self, x):
        # Bilinear to 299 x 299 (align_corners False) as pytorch-fid does on [0, 1] images; being linear, it commutes
        # with their [0, 1] -> [-1, 1] scaling, so it applies to our [-1, 1] images directly.
        x = F.interpolate(x.float(), size=(299, 299), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3))


# ---------------------------------------------------------------------------------------------------------------------
# The weights


def weights_name():
    return PurePosixPath(WEIGHTS_URL).name


def hub_cache():
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weights(path=None, download=True):
    """The weights file: `path`, else $ATTNGAN_FID_WEIGHTS, else the hub cache's copy, else (with `download`) a
    fresh download into the hub cache. None where none is found and `download` is False."""
    for given, origin in ((path, "--fid_weights"), (os.environ.get("ATTNGAN_FID_WEIGHTS"), "ATTNGAN_FID_WEIGHTS")):
        if given:
            if not Path(given).is_file():
                raise FIDError(f"{origin} {given}: no such file; give the path of {weights_name()}")
            return Path(given)
    cached = hub_cache() / weights_name()
    if cached.is_file():
        return cached
    return download_weights(cached) if download else None


def download_weights(target):
    """WEIGHTS_URL into `target`, kept only if its SHA-256 starts with the hex digits at the end of its name."""
    prefix = PurePosixPath(WEIGHTS_URL).stem.rsplit("-", 1)[-1]
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, part = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
    os.close(fd)
    part = Path(part)
    elsewhere = (f"download it from there yourself into {target.parent}, or give its path with --fid_weights or "
                 f"ATTNGAN_FID_WEIGHTS")
    try:
        try:
            fetch(WEIGHTS_URL, part, *download_limits(), elsewhere)
        except DataError as e:
            raise FIDError(f"KID/FID need {weights_name()}: {e}") from None
        except Exception as e:  # no network, HTTP errors, a full disk
            raise FIDError(f"KID/FID need {weights_name()}, which could not be downloaded from {WEIGHTS_URL} "
                           f"({checkpoints.first_line(e)}): {elsewhere}") from None
        digest = hashlib.sha256(part.read_bytes()).hexdigest()
        if not digest.startswith(prefix):
            raise FIDError(f"{WEIGHTS_URL}: the download's SHA-256 begins {digest[:8]}, not {prefix}: not kept; "
                           f"try again")
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    return target


def load_inception(path, device="cpu"):
    """FIDInception with the weights in `path`, strictly (every key and shape), in eval mode."""
    try:
        state = checkpoints.read(path)
    except checkpoints.CheckpointError as e:
        raise FIDError(f"{e}; it should be {weights_name()} from {WEIGHTS_URL}") from None
    if not isinstance(state, dict):
        raise FIDError(f"{path} holds a {type(state).__name__}, not a state dict: it should be {weights_name()}")
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # some copies carry them
    net = FIDInception()
    expected = {k: v.shape for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing, unknown = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    wrong = [k for k in expected.keys() & state.keys()
             if not isinstance(state[k], torch.Tensor) or state[k].shape != expected[k]]
    if missing or unknown or wrong:
        shape = lambda k: tuple(getattr(state[k], "shape", ()))
        what = ([f"missing {missing[0]}"] if missing else []) + ([f"unknown {unknown[0]}"] if unknown else []) + \
               ([f"{wrong[0]} of shape {shape(wrong[0])}, not {tuple(expected[wrong[0]])}"] if wrong else [])
        count = len(missing) + len(unknown) + len(wrong)
        raise FIDError(f"{path} is not the FID Inception ({', '.join(what)}; {count} key(s) differ): use "
                       f"{weights_name()} from {WEIGHTS_URL}")
    net.load_state_dict(state, strict=False)  # strict above; only num_batches_tracked, unused in eval, is left
    # Channels-last weights make every convolution run channels-last: 8.3 against 5.1 images/s on 2 CPU cores.
    return net.to(device, memory_format=torch.channels_last).eval()


# ---------------------------------------------------------------------------------------------------------------------
# The statistics


def no_tf32(device):
    """fp32 convolutions on CUDA: FID moves with the precision of the features, so neither half precision nor the
    TF32 convolutions that PyTorch enables by default on Ampere and later are used."""
    return torch.backends.cudnn.flags(enabled=True, allow_tf32=False) if torch.device(device).type == "cuda" \
        else nullcontext()


@torch.no_grad()
def features(net, images, batch_size=50):
    """The N x 2048 features of an iterable of 3 x H x W images in [-1, 1] (any H, W), in batches."""
    out, batch = [], []
    device = next(net.parameters()).device

    def flush():
        out.append(net(torch.stack(batch).to(device)).double().cpu())
        batch.clear()

    with no_tf32(device):
        for image in images:
            batch.append(image)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    return torch.cat(out) if out else torch.zeros(0, FEATURES, dtype=torch.float64)


def kid_fid(real, fake, seed=0):
    """KID x 100 (mean and std over SUBSETS subsets of min(SUBSET_SIZE, n) images) and FID, from two feature sets.
    The subsets are drawn from `seed`, so a number is the same every time it is computed."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    n = min(len(real), len(fake))
    if n < 2:
        raise FIDError(f"KID and FID need at least 2 images on each side, got {len(real)} real and {len(fake)} fake")
    identity = nn.Identity()
    identity.num_features = real.shape[1]  # the features are computed already
    fid = FrechetInceptionDistance(feature=identity)
    with warnings.catch_warnings():  # that KID keeps every feature: 2048 numbers per image, as intended
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=identity, subsets=SUBSETS, subset_size=min(SUBSET_SIZE, n))
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):  # the subsets are drawn on the CPU; the caller's RNG is left as it was
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {"KIDx100": 100 * float(kid_mean), "KIDx100_std": 100 * float(kid_std), "FID": float(fid.compute())}


def report(translate, testA, testB, directions, net, batch_size=50):
    """Per direction, KID x 100 (and its std over subsets) and FID of the translated test images against the target
    domain's real test images, as U-GAT-IT's Table 2 measures them ("A2B/KIDx100", ...), and beside them the floor
    of copying the input: the untranslated test images against the same real ones ("identity/A2B/KIDx100", ...).
    `translate(x, direction)` returns (output, attention), as the paper scripts' models do; outputs are clamped to
    [-1, 1], what the saved test images hold."""
    device = next(net.parameters()).device
    out = {}
    for direction in directions:
        source, target = (testA, testB) if direction == "A2B" else (testB, testA)
        real = features(net, _images(target), batch_size)
        fake = features(net, _translated(translate, source, direction, device, batch_size), batch_size)
        copied = features(net, _images(source), batch_size)
        for prefix, f in ((direction, fake), (f"identity/{direction}", copied)):
            out.update({f"{prefix}/{k}": v for k, v in kid_fid(real, f).items()})
    return out


def _images(domain):
    return (domain.get(i) for i in range(len(domain)))


@torch.no_grad()
def _translated(translate, domain, direction, device, batch_size):
    for first in range(0, len(domain), batch_size):
        x = torch.stack([domain.get(i) for i in range(first, min(first + batch_size, len(domain)))])
        yield from translate(x.to(device), direction)[0].float().clamp(-1, 1).cpu()


def folder_features(net, folder, img_size):
    """The features of every image under `folder`, each resized to img_size x img_size as the scripts' test phase
    does (so sizes may differ); grey and RGBA images are made RGB (common.data.to_rgb)."""
    return features(net, _images(FolderDomain(folder, img_size, train=False)))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m common.fid", description="KID x 100 and FID between two folders "
                                     "of images, as U-GAT-IT's Table 2 reports KID.")
    parser.add_argument("real", help="folder of the target domain's real images (e.g. dataset/selfie2anime/testB)")
    parser.add_argument("fake", help="folder of translated images")
    parser.add_argument("--fid_weights", help=f"path of {weights_name()} (else ATTNGAN_FID_WEIGHTS, the torch hub "
                        "cache, or a download into it)")
    parser.add_argument("--img_size", type=int, default=256, help="images are first resized to this square "
                        "(the scripts' test transform; the network then resizes to 299)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    try:
        if args.img_size < 1:
            raise FIDError(f"--img_size {args.img_size}: give a positive size")
        net = load_inception(find_weights(args.fid_weights), args.device)
        real, fake = (folder_features(net, f, args.img_size) for f in (args.real, args.fake))
        report = kid_fid(real, fake)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"KID x 100 = {report['KIDx100']:.2f} ± {report['KIDx100_std']:.2f}  FID = {report['FID']:.2f}  "
          f"({len(real)} real, {len(fake)} fake images; subsets of {min(SUBSET_SIZE, len(real), len(fake))})")


if __name__ == "__main__":
    main()
