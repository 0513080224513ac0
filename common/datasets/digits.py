"""The embedded data set ``digits``: SVHN-like (A) and MNIST-like (B) digits with their labels, for DA-GAN's
domain-adaptation experiment (§4.3: translate SVHN to the MNIST domain, classify with an MNIST classifier).

Both domains draw the ten digits from one set of strokes (``STROKES``: polylines in a unit box, written once per
digit), each image with its own handwriting: the control points jitter, and the digit is scaled, rotated, sheared,
shifted and drawn with a random stroke width. The rendering is analytic: a pixel's ink is its distance to the
nearest stroke segment, against half the stroke width, with a one-pixel ramp for anti-aliasing.

* B, MNIST-like: one white digit, centred and large, on black; grey replicated to RGB.
* A, SVHN-like: the labelled digit, smaller, in a random colour, its centre anywhere in the middle 0.3 of the side
  (``CENTRE_RANGE``), over a cluttered background (a two-colour gradient, low-frequency blotches, pixel noise), with
  parts of neighbouring digits to its left and right, as in SVHN's crops of house numbers. The digit's brightness differs from the background's by at least 0.3 (on
  [0, 1]), dark on light or light on dark at random, so it stays readable.

Every image and label is a pure function of ``(seed, domain, split, index)`` (a numpy SeedSequence), so images are
identical across processes, and A and B with the same index share nothing (unpaired). Labels are uniform over 0-9.
``img_size`` changes only the rendering: image 7 at 32 px and at 64 px shows the same digit. Images are rendered on
first use and kept, each with the labelled digit's own ink and bounding box, the ground truth of an attention box
(5000 training images per domain at 32 px: 80 MB).

The evaluation of §4.3: ``classifier`` trains a small CNN on B's training images and labels only (the labels an
unsupervised domain adaptation may use) and keeps it in a cache folder; ``report`` gives its accuracy on the test
set of A translated to B (``A2B/accuracy``), beside its floor, untranslated A (``identity/A2B/accuracy``: no
adaptation, about chance), and its ceiling, real B (``real/A2B/accuracy``). For a model with boxes (DA-GAN's DAE)
it also gives where the first box sits on A's test set: ``A2B/box_error_px``, the distance in pixels from its centre
to the centre of the labelled digit's box, ``A2B/ink_in_box``, the share of the labelled digit's ink inside it, and
``A2B/box_slope``, how far the box follows the digit (``follows``: 1 moves as the digit does, 0 ignores it), each
beside a box of the same size that stays at the image centre (``centred/``), the floor of a box that does not move.
"""
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.metrics import cached_scorer, fit_scorer

TRAIN_SIZE = 5000
TEST_SIZE = 500
# A's labelled digit is centred anywhere in the middle CENTRE_RANGE of the side, in both directions (SVHN's crops
# centre the digit loosely): an attention that is to find the instance has somewhere to look.
CENTRE_RANGE = 0.3

# Each digit as polylines in a unit box (x right, y down); ellipses are sampled as closed polylines.


def _ellipse(cx, cy, rx, ry, start=0.0, end=2 * math.pi, n=16):
    t = np.linspace(start, end, n)
    return list(zip(cx + rx * np.cos(t), cy + ry * np.sin(t)))


STROKES = {
    0: [_ellipse(0.5, 0.5, 0.28, 0.4)],
    1: [[(0.35, 0.25), (0.55, 0.1), (0.55, 0.9)]],
    2: [[(0.22, 0.3), (0.35, 0.13), (0.6, 0.1), (0.75, 0.28), (0.68, 0.48), (0.25, 0.9), (0.8, 0.9)]],
    3: [[(0.22, 0.15), (0.72, 0.12), (0.45, 0.45), (0.72, 0.58), (0.7, 0.82), (0.45, 0.92), (0.2, 0.82)]],
    4: [[(0.65, 0.9), (0.65, 0.1), (0.2, 0.65), (0.82, 0.65)]],
    5: [[(0.75, 0.1), (0.3, 0.1), (0.27, 0.45), (0.6, 0.42), (0.77, 0.62), (0.65, 0.88), (0.25, 0.88)]],
    6: [[(0.7, 0.1), (0.4, 0.33), (0.26, 0.65)], _ellipse(0.5, 0.68, 0.24, 0.22)],
    7: [[(0.2, 0.1), (0.8, 0.1), (0.45, 0.9)]],
    8: [_ellipse(0.5, 0.29, 0.2, 0.19), _ellipse(0.5, 0.7, 0.25, 0.21)],
    9: [_ellipse(0.5, 0.32, 0.23, 0.22), [(0.73, 0.32), (0.66, 0.9)]],
}

_DOMAIN_IDS = {"A": 0, "B": 1}
_SPLIT_IDS = {"train": 0, "test": 1}


def _segments(rng, digit, scale, centre):
    """The digit's strokes as segments (K×2×2, in units of the image side) after jitter and a random affine map."""
    angle, shear = rng.uniform(-0.2, 0.2), rng.uniform(-0.3, 0.3)
    c, s = math.cos(angle), math.sin(angle)
    matrix = scale * np.array([[c, -s], [s, c]]) @ np.array([[1.0, shear], [0.0, 1.0]])
    segments = []
    for line in STROKES[digit]:
        points = np.array(line) - 0.5 + rng.normal(0.0, 0.025, (len(line), 2))
        points = points @ matrix.T + centre
        segments += [points[:-1], points[1:]]
    pairs = [np.stack([a, b], 1) for a, b in zip(segments[0::2], segments[1::2])]
    return np.concatenate(pairs)


def _ink(segments, width, size):
    """Coverage in [0, 1] of strokes of the given width (units of the side), one-pixel anti-aliased edges."""
    u = (np.arange(size) + 0.5) / size
    p = np.stack(np.meshgrid(u, u, indexing="xy"), -1).reshape(-1, 1, 2)
    a, b = segments[None, :, 0], segments[None, :, 1]
    ab = b - a
    t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
    distance = np.linalg.norm(p - (a + t[..., None] * ab), axis=-1).min(1)
    return np.clip((width / 2 - distance) * size + 0.5, 0.0, 1.0).reshape(size, size)


def _smooth_noise(rng, size, cells):
    """Low-frequency noise in [0, 1]: random values on a cells × cells grid, bilinearly upsampled."""
    grid = torch.from_numpy(rng.random((1, 1, cells, cells)))
    return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=True)[0, 0].numpy()


def _luma(rgb):
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _box(segments, width):
    """The digit's bounding box (x0, y0, x1, y1) in units of the side, stroke width included, inside the image."""
    points = segments.reshape(-1, 2)
    return np.clip(np.concatenate([points.min(0) - width / 2, points.max(0) + width / 2]), 0.0, 1.0)


def _render_B(rng, digit, size):
    """(image, the digit's ink, its box)."""
    segments = _segments(rng, digit, rng.uniform(0.7, 0.85), np.array([0.5, 0.5]) + rng.normal(0, 0.02, 2))
    width = rng.uniform(0.08, 0.14)
    ink = _ink(segments, width, size)
    return np.repeat(ink[None], 3, 0), ink, _box(segments, width)


def _render_A(rng, digit, size):
    """(image, the labelled digit's ink, its box): the neighbours' ink is not the digit's."""
    top, bottom = rng.random(3), rng.random(3)
    ramp = np.linspace(0.0, 1.0, size)[None, :, None]
    background = (top[:, None, None] * (1 - ramp) + bottom[:, None, None] * ramp).repeat(size, 2)
    background = background + 0.35 * (_smooth_noise(rng, size, 4)[None] - 0.5) * rng.random(3)[:, None, None]
    light = _luma(background.mean((1, 2)))
    # The digit's brightness is at least 0.3 away from the background's, on whichever side leaves room.
    target = rng.uniform(0.0, max(0.0, light - 0.3)) if light > 0.5 else rng.uniform(min(1.0, light + 0.3), 1.0)
    colour = rng.random(3)
    colour = np.clip(colour + (target - _luma(colour)), 0.0, 1.0)
    scale, centre = rng.uniform(0.5, 0.7), rng.uniform(0.5 - CENTRE_RANGE / 2, 0.5 + CENTRE_RANGE / 2, 2)
    width = rng.uniform(0.07, 0.13)
    segments = _segments(rng, digit, scale, centre)
    digit_ink = ink = _ink(segments, width, size)
    for side in (-1, 1):  # the neighbours in the house number, cut off by the crop
        if rng.random() < 0.7:
            shift = np.array([side * rng.uniform(0.6, 0.75) * scale * 1.1, rng.normal(0, 0.02)])
            ink = np.maximum(ink, _ink(_segments(rng, int(rng.integers(10)), scale, centre + shift), width, size))
    image = background * (1 - ink) + colour[:, None, None] * ink
    return np.clip(image + rng.normal(0, 0.03, image.shape), 0.0, 1.0), digit_ink, _box(segments, width)


class DigitsDomain(torch.utils.data.Dataset):
    """One domain ("A" SVHN-like, "B" MNIST-like) of one split of the procedural ``digits`` set."""

    def __init__(self, domain, split, img_size, seed=0):
        if domain not in _DOMAIN_IDS or split not in _SPLIT_IDS:
            raise ValueError(f"domain 'A' or 'B' and split 'train' or 'test', got {domain!r}, {split!r}")
        self.domain, self.split, self.img_size, self.seed = domain, split, img_size, seed
        self.rendered = {}

    def __len__(self):
        return TRAIN_SIZE if self.split == "train" else TEST_SIZE

    def _rng(self, i):
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        sequence = np.random.SeedSequence((self.seed, _DOMAIN_IDS[self.domain], _SPLIT_IDS[self.split], int(i)))
        return np.random.default_rng(sequence)

    def label(self, i):
        return int(self._rng(i).integers(10))

    def render(self, i):
        """(image 3 × S × S in [-1, 1], the labelled digit's ink S × S in [0, 1], its box (x0, y0, x1, y1) in
        units of the side), float32."""
        if i not in self.rendered:
            rng = self._rng(i)
            digit = int(rng.integers(10))  # the first draw, as in label()
            image, ink, box = (_render_A if self.domain == "A" else _render_B)(rng, digit, self.img_size)
            self.rendered[i] = tuple(torch.from_numpy(a).float() for a in (image * 2 - 1, ink, box))
        return self.rendered[i]

    def get(self, i, generator=None):
        """Image i as float32 3 × S × S in [-1, 1]; ``generator`` is ignored (no augmentation)."""
        return self.render(i)[0]

    def __getitem__(self, i):
        return self.get(i)

    def name(self, i):
        return f"{self.domain}_{self.split}_{i:04d}_{self.label(i)}"


# --- §4.3's evaluation ---------------------------------------------------------------------------------------------

class Classifier(nn.Sequential):
    """A small CNN for the ten digits: three conv blocks, global pooling, a linear layer."""

    def __init__(self):
        def block(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.ReLU(True), nn.MaxPool2d(2)]
        super().__init__(*block(3, 32), *block(32, 64), *block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(128, 10))


def _batch(domain, indices):
    return torch.stack([domain.get(i) for i in indices]), torch.tensor([domain.label(i) for i in indices])


def train_classifier(domain, device, steps=800, batch_size=64, seed=0):
    """The MNIST-like classifier, trained on `domain` (B's training split) from `seed`."""
    def sample(generator):
        return _batch(domain, torch.randint(len(domain), (batch_size,), generator=generator).tolist())
    return fit_scorer(Classifier, sample, steps, 1e-3, seed, device)


def classifier(cache_dir, img_size, seed, device, steps=800):
    """The trained classifier, kept in `cache_dir`."""
    path = Path(cache_dir) / f"digits_classifier_{img_size}px_seed{seed}_steps{steps}.pt"
    return cached_scorer(path, Classifier(), lambda: train_classifier(DigitsDomain("B", "train", img_size, seed),
                                                                      device, steps, seed=seed), device)


def accuracy(net, images_and_labels, device):
    correct = total = 0
    for x, y in images_and_labels:
        correct += (net(x.to(device)).argmax(1).cpu() == y).sum().item()
        total += len(y)
    return correct / total


def box_scores(centres, halves, domain, indices):
    """Summed over the images: the distance (px) from each box's centre to the centre of the labelled digit's box,
    and the share of the digit's ink inside the box. centres, halves: N × 2 in kernels/boxmask's coordinates (the
    image spans [-1, 1])."""
    size = domain.img_size
    u = (2 * torch.arange(size) + 1) / size - 1  # pixel centres, as kernels/boxmask
    error = share = 0.0
    for (cx, cy), (hx, hy), i in zip(centres.tolist(), halves.tolist(), indices):
        _, ink, box = domain.render(i)
        tx, ty = (box[:2] + box[2:] - 1).tolist()  # the box's centre, from [0, 1] units onto [-1, 1]
        error += math.hypot(cx - tx, cy - ty) * size / 2
        inside = ((u[None, :] - cx).abs() < hx) & ((u[:, None] - cy).abs() < hy)
        share += (ink * inside).sum().item() / max(ink.sum().item(), 1e-12)
    return error, share


def true_centres(domain, indices):
    """The centre of each labelled digit's box, in kernels/boxmask's coordinates (the image spans [-1, 1]):
    len(indices) × 2."""
    return torch.stack([domain.render(i)[2][:2] + domain.render(i)[2][2:] - 1 for i in indices])


def follows(boxes, digits):
    """Per axis (x, y) of N × 2 centres: the least-squares slope of the boxes' centres on the digits' (1: the box
    moves as the digit does, 0: it ignores it), their correlation, and the mean offset boxes − digits."""
    b, d = boxes - boxes.mean(0), digits - digits.mean(0)
    slope = (b * d).sum(0) / (d * d).sum(0)
    correlation = (b * d).sum(0) / ((b * b).sum(0) * (d * d).sum(0)).sqrt()
    return slope, correlation, (boxes - digits).mean(0)


def report(translate, data, device, cache_dir, directions=("A2B",), seed=0, steps=800, boxes=None):
    """§4.3: the MNIST-like classifier's accuracy on A translated to B, on untranslated A (the floor) and on real B
    (the ceiling); with `boxes` (x -> the boxes' centres and half-sizes, B × N × 2, or None) where the first box
    sits. Nothing for a model that does not translate A to B."""
    if "A2B" not in directions:
        return {}
    net = classifier(cache_dir, data["testB"].img_size, seed, device, steps)

    def batches(domain, direction=None):
        for start in range(0, len(domain), 100):
            x, y = _batch(domain, range(start, min(start + 100, len(domain))))
            yield (translate(x.to(device), direction)[0] if direction else x), y

    testA = data["testA"]
    with torch.no_grad():
        scores = {"A2B/accuracy": accuracy(net, batches(testA, "A2B"), device),
                  "identity/A2B/accuracy": accuracy(net, batches(testA), device),
                  "real/A2B/accuracy": accuracy(net, batches(data["testB"]), device)}
        placed = [boxes(x.to(device)) for x, _ in batches(testA)] if boxes else [None]
    if placed[0] is not None:
        centres, halves = (torch.cat([b[i][:, 0].cpu() for b in placed]) for i in (0, 1))
        digits = true_centres(testA, range(len(testA)))
        for name, c in (("A2B", centres), ("centred/A2B", torch.zeros_like(centres))):
            error, share = box_scores(c, halves, testA, range(len(testA)))
            scores.update({f"{name}/box_error_px": error / len(testA), f"{name}/ink_in_box": share / len(testA),
                           f"{name}/box_slope": follows(c, digits)[0].mean().item()})  # x's and y's slopes, averaged
    return scores


# What the harness reads (common.data.load_data, common.train.evaluate): the domains' class, whether A[i] and B[i]
# are one scene, and the model's attributes that report takes besides translate and directions (DA-GAN's boxes).
Domain, PAIRED, MODEL_ATTRIBUTES = DigitsDomain, False, ("boxes",)
