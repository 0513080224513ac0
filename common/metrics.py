"""What the embedded data sets' evaluations share (common/datasets/): PSNR, how an attention map is put on
[0, 1] and scored against a mask (IoU, ROC-AUC), and the scoring networks that are trained once and cached.

How a map is read depends on what the paper defines it as (``attention_scale``):
* "probability": a map in [0, 1] by construction, meaning "how much of the output comes from
  the translation here": UAIT's A_S/A_T and AttentionGAN's masks (sigmoids, softmaxes) and DA-GAN's
  soft box masks. It is thresholded at 0.5 on its own scale:
  a mask that stays below 0.5 inside the object has not marked it, however it is shaped.
* "unbounded": a map with no scale of its own: U-GAT-IT's CAM heatmap (a sum of ReLU
  features) and GuideGAN's maps (Eq. 2's min-max per image of conv features, post hoc; of its
  RAM mask's channel mean, which guidegan.RAMD puts on post hoc's scale). Its
  values are min-max normalised once over the whole test set of a direction, never per image:
  a per-image rescaling would stretch a weak map with one bright halo off the object until the
  halo counted as the object, rewarding contrast rather than a map that finds the object.
``auc`` does not depend on either choice (only the order of values within an image counts).
"""

import contextlib
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

import torch
import torch.nn.functional as F

PSNR_CAP_DB = 100.0


def to_unit(images: torch.Tensor) -> torch.Tensor:
    # Clamped, so that outputs are judged as they would be saved.
    return (images.float().clamp(-1.0, 1.0) + 1.0) / 2.0


def background_psnr(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of y against x over the pixels where mask == 0, one value per image."""
    background = (mask < 0.5).double()
    squared = ((to_unit(x) - to_unit(y)).double() ** 2).sum(dim=1, keepdim=True)
    # An image without background counts as untouched, like an image whose background is.
    pixels = (background.sum(dim=(1, 2, 3)) * x.shape[1]).clamp(min=1.0)
    mse = (squared * background).sum(dim=(1, 2, 3)) / pixels
    # 1e-10 is exactly the mean squared error of 100 dB, so the clamp is the cap.
    return (-10.0 * torch.log10(mse.clamp(min=10.0 ** (-PSNR_CAP_DB / 10.0)))).float()


ATTENTION_SCALES = ("probability", "unbounded")


def on_scale(attention: torch.Tensor, scale: str) -> torch.Tensor:
    """The maps of a whole test set (N x 1 x h x w) on [0, 1]: as they are ("probability"), or min-max normalised
    over the set ("unbounded"; a constant set marks nothing)."""
    if scale not in ATTENTION_SCALES:
        raise ValueError(f"attention scale {scale!r}: one of {ATTENTION_SCALES}")
    attention = attention.double()
    if scale == "probability":
        return attention
    low, span = attention.min(), attention.max() - attention.min()
    return (attention - low) / span if span > 0 else torch.zeros_like(attention)


def attention_iou(attention: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """IoU of each map on [0, 1] (upsampled to the mask, thresholded) with its mask, one value per image."""
    resized = F.interpolate(attention.double(), size=mask.shape[-2:], mode="bilinear", align_corners=False)
    marked, target = resized > threshold, mask > 0.5
    intersection = (marked & target).sum(dim=(1, 2, 3)).double()
    union = (marked | target).sum(dim=(1, 2, 3)).double()
    return torch.where(union > 0, intersection / union.clamp(min=1.0), 1.0)


def attention_auc(attention: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ROC-AUC of each (upsampled) map as a score for "object pixel", one value per image: the Mann-Whitney
    statistic, the chance that an object pixel outranks a background pixel, ties counting half."""
    resized = F.interpolate(attention.double(), size=mask.shape[-2:], mode="bilinear", align_corners=False)
    aucs = []
    for values, target in zip(resized.flatten(1), mask.flatten(1) > 0.5):
        unique, inverse, counts = torch.unique(values, return_inverse=True, return_counts=True)
        ranks = (counts.cumsum(0) - (counts - 1) / 2.0)[inverse]  # 1-based ranks, ties at their mean
        positives, negatives = target.sum().item(), (~target).sum().item()
        if positives == 0 or negatives == 0:
            aucs.append(float("nan"))  # no object, or nothing but object: nothing to rank
            continue
        aucs.append((ranks[target].sum().item() - positives * (positives + 1) / 2) / (positives * negatives))
    return torch.tensor(aucs, dtype=torch.float64)


def fit_scorer(make_net, sample, steps, lr, seed, device):
    """A scoring network trained by Adam on cross-entropy, deterministically from `seed`: `sample(generator)` gives
    a batch (images, targets) drawn with that generator. Gradients on: it is trained on first use, which may be
    inside an evaluation (common.train.evaluating)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = make_net().to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            x, y = sample(generator)
            loss = F.cross_entropy(net(x.to(device)), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return net.eval()


def cached_scorer(path, net, train, device):
    """A scoring network (digits' classifier, shapes_paired's segmenter) from `path`, or `train()`ed and saved there
    first (to a temporary file of this process, then renamed: an interrupted run leaves no half file). Runs that need
    the same scorer at once (the ablation runner's --jobs, the parallel tests) take turns on a lock file beside it,
    so one trains it and the others load it. In eval mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.with_name(path.name + ".lock")):
        if path.exists():
            net.load_state_dict(torch.load(path, map_location=device, weights_only=True))
            return net.to(device).eval()
        net = train()
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(net.state_dict(), tmp)
        os.replace(tmp, path)
        return net.eval()


@contextlib.contextmanager
def _locked(lock_path):
    """An exclusive lock on `lock_path` for the block (POSIX flock, released when the process dies); where there is
    no fcntl (Windows) runs train side by side, each writing a whole file."""
    if fcntl is None:
        yield
        return
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when f closes
        yield
