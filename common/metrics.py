"""Evaluation of a translator on the ``shapes`` data set, where the ground truth is known.

Unpaired translation has no target image to compare with, but ``shapes`` knows where the
object is, which gives three numbers per direction (A2B: apples -> oranges, B2A: back):

* ``bg_psnr``: PSNR in dB (peak 1 on the [0, 1] scale) between input and output over the
  background, i.e. the pixels outside the input's object mask. Measures "leave the rest
  alone". Identical backgrounds give the cap of 100 dB; 30 dB and more is a faithful copy;
  a constant mid-grey output gets about 17 dB on the test set, a black one about 7.
* ``target``: how much the object region of the output looks like the target domain, in
  [0, 1], from the fixed scorer ``target_score`` (colour and texture, no learnt weights).
  For A2B it is the score itself, for B2A it is ``1 - score``. Real images of the target
  domain score about 0.98, real images of the source domain about 0.02.
* ``iou`` and ``auc``: does the translator's attention map mark the object? ``iou`` is the
  intersection over union of the map thresholded at 0.5 with the object mask; ``auc`` the
  ROC-AUC of the map's values as a ranking of object pixels above background pixels (1: every
  object pixel above every background pixel, 0.5: no better than chance), threshold-free.

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

Every report holds, beside the model's numbers, their floor and ceiling:
``identity/<dir>/bg_psnr`` and ``identity/<dir>/target`` (output = input: bg_psnr at the cap,
target ~ 0.02), ``real/<dir>/target`` (the target domain's real test images, ~ 0.98), and for
a model with attention ``uniform/<dir>/iou`` and ``uniform/<dir>/auc`` (a map that marks every
pixel: iou = the object's share of the image, auc = 0.5). A perfect translator gets a high
bg_psnr (it may only change the object and its anti-aliased rim), target ~ 0.98, and iou and
auc close to 1 when its attention marks the object.

The object is judged inside the INPUT's mask, since a translator is expected to keep the
object where it was.
"""

import contextlib
import math
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

import torch
import torch.nn.functional as F

from common.shapes import ShapesDomain

PSNR_CAP_DB = 100.0

# target_score works at this resolution at most, so that one set of constants serves every
# image size: the orange dimples of ``shapes`` are one cell of a 64 x 64 grid.
SCORER_SIZE = 64
# Eroding the mask by this many scorer pixels keeps the anti-aliased rim (background colour,
# strong edges) out of the object's statistics.
SCORER_ERODE = 2
# Each cue is mapped linearly to -1 at its "A" anchor and +1 at its "B" anchor, then clipped
# to [-1, 1]. The anchors bracket what 100 real test images per domain measure at 64 and 128
# px (in parentheses), with the boundary (cue 0) in the gap between the domains.
# Hue of the mean object colour, degrees on the RGB hue hexagon (0 = red, 60 = yellow):
# oranges measure 21 to 31 and apples -8 to 5, so the cue is the distance from HUE_ORANGE_DEG.
HUE_ORANGE_DEG = 25.0
HUE_OFF_A_DEG, HUE_OFF_B_DEG = 20.0, 8.0
# Chroma of the mean colour (objects 0.35-0.62) only rules out grey objects.
CHROMA_A, CHROMA_B = 0.1, 0.25
# Median |Laplacian| of the luma relative to the brightness, on a log scale
# (apples 0.0006-0.004, oranges 0.014-0.046).
TEXTURE_A, TEXTURE_B = 0.003, 0.015
SCORER_GAIN = 2.0  # logistic gain on the sum of the two cues


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    # Clamped, so that outputs are judged as they would be saved.
    return (images.float().clamp(-1.0, 1.0) + 1.0) / 2.0


def background_psnr(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of y against x over the pixels where mask == 0, one value per image."""
    background = (mask < 0.5).double()
    squared = ((_to_unit(x) - _to_unit(y)).double() ** 2).sum(dim=1, keepdim=True)
    # An image without background counts as untouched, like an image whose background is.
    pixels = (background.sum(dim=(1, 2, 3)) * x.shape[1]).clamp(min=1.0)
    mse = (squared * background).sum(dim=(1, 2, 3)) / pixels
    # 1e-10 is exactly the mean squared error of 100 dB, so the clamp is the cap.
    return (-10.0 * torch.log10(mse.clamp(min=10.0 ** (-PSNR_CAP_DB / 10.0)))).float()


def _ramp(value: torch.Tensor, at_a: float, at_b: float) -> torch.Tensor:
    return (2.0 * (value - at_a) / (at_b - at_a) - 1.0).clamp(-1.0, 1.0)


def _scorer_inputs(img: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB in [0, 1] at scorer resolution and the eroded object mask there."""
    rgb, mask = _to_unit(img), mask.float()
    size = (min(rgb.shape[-2], SCORER_SIZE), min(rgb.shape[-1], SCORER_SIZE))
    if size != tuple(rgb.shape[-2:]):
        rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False, antialias=True)
        mask = (F.interpolate(mask, size=size, mode="area") >= 0.5).float()
    width = 2 * SCORER_ERODE + 1
    eroded = 1.0 - F.max_pool2d(1.0 - mask, width, stride=1, padding=SCORER_ERODE)
    # Objects too small to survive erosion are scored on the whole mask instead.
    enough = eroded.sum(dim=(1, 2, 3), keepdim=True) >= 16
    return rgb, torch.where(enough, eroded, mask)


def _colour_cue(rgb: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    # Hue and chroma of the mean colour; the mean of a shaded object keeps its hue, and a
    # white highlight only lowers its chroma a little.
    mean = (rgb * region).sum(dim=(2, 3)) / region.sum(dim=(2, 3)).clamp(min=1.0)
    red, green, blue = mean.unbind(dim=1)
    alpha, beta = red - (green + blue) / 2, math.sqrt(3) / 2 * (green - blue)
    hue = torch.rad2deg(torch.atan2(beta, alpha))
    # Distance from orange, so that greens or blues count as "not orange" like reds do.
    off_orange = ((hue - HUE_ORANGE_DEG + 180.0) % 360.0 - 180.0).abs()
    hue_cue = _ramp(off_orange, HUE_OFF_A_DEG, HUE_OFF_B_DEG)
    return torch.minimum(hue_cue, _ramp(torch.hypot(alpha, beta), CHROMA_A, CHROMA_B))


def _texture_cue(rgb: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    luma = (0.299 * rgb[:, :1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:]).contiguous()
    neighbours = torch.tensor([[0.0, 0.25, 0.0], [0.25, 0.0, 0.25], [0.0, 0.25, 0.0]])
    average = F.conv2d(F.pad(luma, (1, 1, 1, 1), mode="replicate"), neighbours.view(1, 1, 3, 3))
    laplacian = (luma - average).abs().flatten(1)
    inside = region.flatten(1) > 0.5
    # The median ignores the stem and the highlight, which are sharp but small; dividing by
    # the mean brightness makes the dimples of a dark orange count like those of a bright one.
    median = torch.where(inside, laplacian, torch.nan).nanmedian(dim=1).values.nan_to_num(0.0)
    brightness = (luma.flatten(1) * inside).sum(dim=1) / inside.sum(dim=1).clamp(min=1)
    relative = (median / (brightness + 0.05)).clamp(min=1e-6)
    return _ramp(relative.log(), math.log(TEXTURE_A), math.log(TEXTURE_B))


def target_score(img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """How much the object of each image looks like domain B (orange, dimpled), in [0, 1].

    score = sigmoid(SCORER_GAIN * (colour + texture)), each cue in [-1, 1] and at -1 for
    a typical apple, +1 for a typical orange:
      colour  = min(hue cue, chroma cue) of the mean object colour: the hue cue is
                (14 - |hue - 25 deg|) / 6, i.e. +1 within 8 degrees of orange and -1 from 20
                degrees away (red, but also green or blue); the chroma cue rises from -1 at
                0.1 to +1 at 0.25, so that a grey object is no orange either;
      texture = log of the median |Laplacian| of the luma over the eroded object, relative
                to the object's brightness, rising from -1 at 0.003 to +1 at 0.015.
    Both cues at their A ends give 0.018, both at B 0.982, one of each 0.5: an orange but
    smooth object is half-way. Calibrated for images of 64 px and more; below that the
    dimples reach the pixel limit and apple edges count as texture.
    """
    rgb, region = _scorer_inputs(img, mask)
    cues = _colour_cue(rgb, region) + _texture_cue(rgb, region)
    return torch.sigmoid(SCORER_GAIN * cues)


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


def _load(dataset: ShapesDomain, indices: range) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.stack([dataset.get(i) for i in indices])
    return images, torch.stack([dataset.mask(i) for i in indices])


def _looks_like_target(images, mask, direction):
    score = target_score(images, mask)
    return score if direction == "A2B" else 1.0 - score


def _direction(translate, source: ShapesDomain, target: ShapesDomain, direction: str, device, batch_size, count,
               attention_scale):
    """The mean of each score over the first `count` test images of one direction, with its references."""
    scores, maps, masks = {}, [], []

    def add(key, values):
        scores.setdefault(key, []).append(values.double())
    for start in range(0, count, batch_size):
        indices = range(start, min(start + batch_size, count))
        x, mask = _load(source, indices)
        y, attention = translate(x.to(device), direction)
        y = y.float().cpu()
        add("bg_psnr", background_psnr(x, y, mask))
        add("target", _looks_like_target(y, mask, direction))
        add("identity/bg_psnr", background_psnr(x, x, mask))
        add("identity/target", _looks_like_target(x, mask, direction))
        add("real/target", _looks_like_target(*_load(target, indices), direction))
        masks.append(mask)
        if attention is not None:  # a translator without attention (CycleGAN) has no iou
            maps.append(attention.float().cpu())
    mask = torch.cat(masks)
    if maps:
        # The whole set's maps at once: an unbounded map is put on [0, 1] by one normalisation for all of them.
        attention = on_scale(torch.cat(maps), attention_scale)
        add("iou", attention_iou(attention, mask))
        add("auc", attention_auc(attention, mask))
        add("uniform/iou", attention_iou(torch.ones_like(attention), mask))
        add("uniform/auc", attention_auc(torch.ones_like(attention), mask))
    return {key: torch.cat(values).nanmean().item() for key, values in scores.items()}


def shapes_report(translate, testA: ShapesDomain, testB: ShapesDomain, device, batch_size: int = 16,
                  limit: int | None = None, directions=("A2B", "B2A"),
                  attention_scale: str = "probability") -> dict[str, float]:
    """Mean bg_psnr, target, iou and auc of each direction over the first ``limit`` test images, with their floors
    (``identity/``, ``uniform/``) and ceiling (``real/``).

    ``translate(x, direction)`` gets a batch on ``device`` and "A2B" or "B2A" and returns the
    translated batch and an attention map (N x 1 x h x w, any resolution, on ``attention_scale``) or None.
    """
    model, references = {}, {}
    with torch.no_grad():
        for direction, source, target in (("A2B", testA, testB), ("B2A", testB, testA)):
            if direction not in directions:
                continue
            count = len(source) if limit is None else min(limit, len(source), len(target))
            scores = _direction(translate, source, target, direction, device, batch_size, count, attention_scale)
            for key, value in scores.items():
                kind, _, name = key.rpartition("/")  # "identity/target" -> identity/A2B/target
                (references if kind else model)[f"{kind + '/' if kind else ''}{direction}/{name}"] = value
    return {**model, **references}


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
