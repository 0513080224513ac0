"""The embedded paired data set ``shapes_paired``: a tiny street scene (A, the "photo") and its label map (B),
standing in for Cityscapes photo <-> label in GuideGAN's Tables 1-2, where both directions can be scored exactly.

A scene has five classes, drawn in Cityscapes' label colours (``PALETTE``): sky above a horizon, road below it,
one to three buildings standing on the horizon, up to two trees (ellipses) in front of them, and up to two cars on
the road. The photo paints each class with its own look, so that a label needs recognition and a photo needs
invented detail: a sky gradient; grey road with fine grain and white lane dashes; walls in greys and browns with a
grid of dark windows (grey like the road: position and windows tell them apart); trees of mottled greens; cars of
saturated colours with a dark window band. The label map B is one palette colour per pixel, exactly ``classes(i)``.

Every scene is a pure function of ``(seed, split, index)`` (a numpy SeedSequence): A[i] and B[i] are the same
scene, rendered at ``img_size`` (the layout does not depend on the size; the grain is per pixel). No augmentation:
``get`` ignores its generator, so a photo stays aligned with its labels.

The evaluation (GuideGAN §4.1, after pix2pix's FCN-score): photo -> label (A2B) is scored by mapping each output
pixel to the nearest palette colour; label -> photo (B2A) by a small fully convolutional segmenter, which should
find the classes in a good translation as it does in a real photo. Per-pixel accuracy, per-class accuracy and class
IoU come from one confusion matrix over the test set, as the Cityscapes scripts compute them. ``report`` gives, for
each direction d, ``d/pixel_acc``, ``d/class_acc`` and ``d/iou`` for the model, beside its floor
``identity/d/...`` (the input as the output: for A2B the photo read as a label map by nearest palette colour, for
B2A the label map handed to the segmenter as the photo) and its ceiling ``real/d/...`` (the true counterpart as
the output: the true label map, 1.0; the real test photo).

A segmenter trained on real photos only reads label colours as their classes: the label map itself, handed in as
the photo, scored 0.947 / 0.914 / 0.850 (per-pixel / per-class / IoU, 64 px), on a par with the best trained model.
So the segmenter has a (k+1)-th class, ``REJECT`` ("not a photo"), learnt from label-like images of training
scenes: the palette colours, exact or with each class colour moved by up to ±0.1 and pixel noise of σ up to 0.05
(on [0, 1]). A pixel called REJECT is wrong, and REJECT is no class of the averages (per-class accuracy over the
true classes, IoU over the k classes). What it must not learn is "smooth means not a photo", since a translation
is blurry before it is wrong: the training photos are blurred (3×3 box) half of the time and all get pixel noise
of a random σ below 0.05, and no flat renderings in photo colours are among the rejected (a translation that
paints each class with its mean photo colour is a poor photo, not a label map). Measured on the 100 test pairs
at 64 px and 32 px, per-pixel / per-class / IoU (noise σ on [0, 1]), and for the segmenter before (real photos
only, unblurred, no REJECT):

                                                  with REJECT, 64 px      32 px                   before, 64 px
    real photos                                   0.996 / 0.989 / 0.980   0.996 / 0.988 / 0.979   0.998 / 0.997 / 0.994
    5×5 box blur                                  0.974 / 0.929 / 0.900   0.959 / 0.865 / 0.822   0.966 / 0.906 / 0.878
    gaussian blur, σ 1.5 px                       0.979 / 0.939 / 0.915   0.971 / 0.888 / 0.855   0.972 / 0.916 / 0.894
    down ×2, up (bilinear)                        0.988 / 0.964 / 0.947   0.982 / 0.936 / 0.910   0.985 / 0.954 / 0.938
    pixel noise σ 0.1                             0.986 / 0.974 / 0.946   0.989 / 0.974 / 0.953   0.976 / 0.969 / 0.930
    each class flat in its mean photo colour      0.967 / 0.915 / 0.896   0.990 / 0.943 / 0.931   0.976 / 0.899 / 0.883
    label maps                                    0.000 / 0.000 / 0.000   0.000 / 0.000 / 0.000   0.947 / 0.914 / 0.850
    label maps, 3×3 box blur                      0.000 / 0.000 / 0.000   0.000 / 0.000 / 0.000   0.937 / 0.893 / 0.841
    label maps, pixel noise σ 0.1                 0.005 / 0.007 / 0.007   0.000 / 0.000 / 0.000   0.910 / 0.924 / 0.754
    label maps, each colour moved by 0.1 up or
      down in every channel, noise σ 0.05         0.178 / 0.151 / 0.147   0.132 / 0.134 / 0.132   0.768 / 0.769 / 0.549

The last row is the edge of what REJECT was trained on. GuideGAN's default (``python guidegan.py``, 3000
iterations, 64 px) scored 0.964 / 0.871 / 0.828 label -> photo with this segmenter.
"""
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.metrics import cached_scorer, fit_scorer

TRAIN_SIZE = 2000
TEST_SIZE = 100
CLASS_NAMES = ("sky", "road", "building", "tree", "car")
PALETTE = np.array([(70, 130, 180), (128, 64, 128), (70, 70, 70), (107, 142, 35), (0, 0, 142)], dtype=np.uint8)
SKY, ROAD, BUILDING, TREE, CAR = range(5)
_SPLIT_IDS = {"train": 0, "test": 1}


def _smooth(rng, size, cells):
    """Noise in [0, 1] on a cells × cells grid, bilinearly upsampled: blotches of a fixed fraction of the image."""
    grid = torch.from_numpy(rng.random((1, 1, cells, cells)))
    return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=True)[0, 0].numpy()


def _scene(seed, split, index, size):
    """(photo 3×S×S in [0, 1], classes S×S) of one scene."""
    # Two streams: the layout's draws must not depend on how many grain pixels the size needs.
    rng, grain = (np.random.default_rng(s) for s in np.random.SeedSequence((seed, _SPLIT_IDS[split], index)).spawn(2))
    u = (np.arange(size) + 0.5) / size
    x, y = np.meshgrid(u, u, indexing="xy")
    horizon = rng.uniform(0.45, 0.65)
    classes = np.where(y < horizon, SKY, ROAD)
    sky = rng.uniform([0.35, 0.55, 0.75], [0.6, 0.8, 1.0])
    photo = np.where(y < horizon, sky[:, None, None] * (0.8 + 0.3 * y / horizon), 0.0)
    grey = rng.uniform(0.3, 0.5)
    road = grey + 0.06 * (grain.random((size, size)) - 0.5)
    lane = (np.abs(x - rng.uniform(0.3, 0.7)) < 0.02) & ((y * 8) % 1 < 0.5) & (y > horizon + 0.05)
    road = np.where(lane, 0.9, road)
    photo = np.where(y < horizon, photo, road[None].repeat(3, 0))

    for _ in range(rng.integers(1, 4)):  # buildings stand on the horizon
        left, width, top = rng.uniform(-0.1, 0.8), rng.uniform(0.15, 0.4), rng.uniform(0.08, horizon - 0.12)
        inside = (x >= left) & (x < left + width) & (y >= top) & (y < horizon)
        wall = rng.choice([rng.uniform(0.3, 0.55, 3).clip(0) * [1, 1, 1], rng.uniform([0.45, 0.3, 0.2],
                                                                                     [0.7, 0.5, 0.35])])
        windows = ((x - left) * 12 % 1 > 0.45) & ((y - top) * 14 % 1 > 0.5)
        colour = np.where(windows, 0.15, 1.0)[None] * np.asarray(wall)[:, None, None]
        photo = np.where(inside, colour, photo)
        classes = np.where(inside, BUILDING, classes)

    for _ in range(rng.integers(0, 3)):  # trees in front of the buildings
        cx, cy = rng.uniform(0.05, 0.95), horizon - rng.uniform(0.05, 0.2)
        rx, ry = rng.uniform(0.08, 0.16), rng.uniform(0.1, 0.2)
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
        leaves = _smooth(rng, size, 24)
        colour = np.stack([0.15 + 0.2 * leaves, 0.35 + 0.35 * leaves, 0.1 + 0.1 * leaves])
        photo = np.where(inside, colour, photo)
        classes = np.where(inside, TREE, classes)

    for _ in range(rng.integers(0, 3)):  # cars on the road
        cx, cy = rng.uniform(0.1, 0.9), rng.uniform(horizon + 0.08, 0.92)
        w, h = rng.uniform(0.08, 0.15), rng.uniform(0.04, 0.07)
        inside = (np.abs(x - cx) < w) & (np.abs(y - cy) < h)
        body = np.eye(3)[rng.integers(3)] * 0.7 + rng.uniform(0.1, 0.3)
        window_band = (y < cy - 0.2 * h) & (np.abs(x - cx) < 0.7 * w)
        colour = np.where(window_band, 0.1, 1.0)[None] * body[:, None, None]
        photo = np.where(inside, colour, photo)
        classes = np.where(inside, CAR, classes)

    photo = photo * rng.uniform(0.8, 1.1)  # the light of the day
    return np.clip(photo, 0.0, 1.0), classes


class PairedShapesDomain(torch.utils.data.Dataset):
    """One side ("A" photos, "B" label maps) of one split of ``shapes_paired``; A[i] and B[i] are one scene."""

    def __init__(self, domain, split, img_size, seed=0):
        if domain not in ("A", "B") or split not in _SPLIT_IDS:
            raise ValueError(f"domain 'A' or 'B' and split 'train' or 'test', got {domain!r}, {split!r}")
        self.domain, self.split, self.img_size, self.seed = domain, split, img_size, seed

    def __len__(self):
        return TRAIN_SIZE if self.split == "train" else TEST_SIZE

    def _render(self, i):
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        return _scene(self.seed, self.split, int(i), self.img_size)

    def get(self, i, generator=None):
        """Image i as float32 3 × S × S in [-1, 1]; ``generator`` is ignored (no augmentation)."""
        photo, classes = self._render(i)
        image = photo if self.domain == "A" else PALETTE[classes].transpose(2, 0, 1) / 255.0
        return torch.from_numpy(image * 2 - 1).float()

    def __getitem__(self, i):
        return self.get(i)

    def classes(self, i):
        """The class of every pixel of scene i, S × S (int64)."""
        return torch.from_numpy(self._render(i)[1])

    def name(self, i):
        return f"{self.split}_{i:04d}"


# --- GuideGAN §4.1's scores ------------------------------------------------------------------------------------

REJECT = len(CLASS_NAMES)  # the segmenter's (k+1)-th class, "not a photo"


def to_classes(images):
    """Label-colour images N×3×H×W in [-1, 1] -> N×H×W class ids, by the nearest palette colour."""
    palette = torch.from_numpy(PALETTE).to(images) / 127.5 - 1
    return (images[:, None] - palette[None, :, :, None, None]).square().sum(2).argmin(1)


def confusion(predicted, true, k=len(CLASS_NAMES)):
    """k×(k+1) counts: row = true class, column = predicted class; the last column counts REJECT."""
    return torch.bincount((true.flatten() * (k + 1) + predicted.flatten()).long(),
                          minlength=k * (k + 1)).view(k, k + 1)


def scores(matrix):
    """Per-pixel accuracy, mean per-class accuracy (classes present in the truth) and mean class IoU (classes
    present in the truth or the prediction) of a confusion matrix, rows = true classes. Columns beyond the rows
    (REJECT) are wrong for every pixel and are no class of the averages."""
    matrix = matrix.double()
    diag, truth, predicted = matrix.diag(), matrix.sum(1), matrix[:, :len(matrix)].sum(0)
    union = truth + predicted - diag
    return {"pixel_acc": (diag.sum() / matrix.sum()).item(),
            "class_acc": (diag[truth > 0] / truth[truth > 0]).mean().item(),
            "iou": (diag[union > 0] / union[union > 0]).mean().item()}


class Segmenter(nn.Module):
    """The "FCN" of the FCN-score: a small fully convolutional net, photo -> per-pixel logits of the k classes
    and REJECT."""

    def __init__(self, k=len(CLASS_NAMES), ch=16):
        super().__init__()

        def block(c_in, c_out, stride=1, dilation=1):
            return [nn.Conv2d(c_in, c_out, 3, stride, dilation, dilation), nn.BatchNorm2d(c_out), nn.ReLU(True)]
        self.fine = nn.Sequential(*block(3, ch))
        self.coarse = nn.Sequential(*block(ch, 2 * ch, 2), *block(2 * ch, 2 * ch, 2), *block(2 * ch, 2 * ch, 1, 2),
                                    *block(2 * ch, 2 * ch, 1, 4))
        self.head = nn.Sequential(*block(3 * ch, ch), nn.Conv2d(ch, k + 1, 1))

    def forward(self, x):
        fine = self.fine(x)
        coarse = F.interpolate(self.coarse(fine), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(torch.cat([fine, coarse], 1))


def box_blur(images):
    """A 3×3 box blur (edges replicated)."""
    return F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, 1)


def label_like(classes, generator):
    """Label maps of `classes` (N×H×W) in [-1, 1] as a translation that paints no photo would give: half of them
    exact, the other half with each class colour moved by up to ±0.1 and pixel noise of σ up to 0.05 (on [0, 1]),
    by one random amount per image."""
    n = len(classes)
    amount = torch.rand(n, 1, 1, generator=generator) * (torch.rand(n, 1, 1, generator=generator) < 0.5)
    palette = torch.from_numpy(PALETTE).float() / 127.5 - 1
    colours = palette + 0.2 * amount * (2 * torch.rand(n, len(PALETTE), 3, generator=generator) - 1)
    images = colours[torch.arange(n)[:, None, None], classes].permute(0, 3, 1, 2)
    return (images + 0.1 * amount[..., None] * torch.randn(images.shape, generator=generator)).clamp(-1, 1)


def train_segmenter(domain, device, steps=300, batch_size=8, seed=0):
    """The segmenter, trained on `batch_size` real photos of `domain` (A's training split) and their classes per
    step, half of them blurred (3×3 box) and all with pixel noise of a random σ below 0.05 (on [0, 1]), so that blur
    and grain are no reason to reject; and on half as many label-like images of training scenes, all REJECT."""
    def sample(generator):
        indices = torch.randint(len(domain), (batch_size + batch_size // 2,), generator=generator).tolist()
        classes = torch.stack([domain.classes(i) for i in indices])
        photos = torch.stack([domain.get(i) for i in indices[:batch_size]])
        photos = torch.where(torch.rand(batch_size, 1, 1, 1, generator=generator) < 0.5, box_blur(photos), photos)
        grain = 0.1 * torch.rand(batch_size, 1, 1, 1, generator=generator)
        photos = (photos + grain * torch.randn(photos.shape, generator=generator)).clamp(-1, 1)
        targets = torch.cat([classes[:batch_size], torch.full_like(classes[batch_size:], REJECT)])
        return torch.cat([photos, label_like(classes[batch_size:], generator)]), targets
    return fit_scorer(Segmenter, sample, steps, 2e-3, seed, device)


def segmenter(cache_dir, img_size, seed, device, steps=300):
    """The trained segmenter, kept in `cache_dir`."""
    # "v2": the segmenter with REJECT; a cached one from before (no REJECT) must not be loaded.
    path = Path(cache_dir) / f"shapes_paired_fcn_v2_{img_size}px_seed{seed}_steps{steps}.pt"
    return cached_scorer(path, Segmenter(), lambda: train_segmenter(PairedShapesDomain("A", "train", img_size, seed),
                                                                    device, steps, seed=seed), device)


def report(translate, data, device, cache_dir, directions=("A2B", "B2A"), seed=0, steps=300):
    """Tables 1-2's three scores for photo -> label (A2B) and label -> photo (B2A), each beside its floor
    ("identity/": the input itself as the output) and its ceiling ("real/": the true counterpart as the output)."""
    testA, testB = data["testA"], data["testB"]
    net = segmenter(cache_dir, testA.img_size, seed, device, steps)
    scorer = {"A2B": to_classes, "B2A": lambda photos: net(photos).argmax(1)}
    matrices = {}
    with torch.no_grad():
        for start in range(0, len(testA), 20):
            indices = range(start, min(start + 20, len(testA)))
            photos = torch.stack([testA.get(i) for i in indices]).to(device)
            labels = torch.stack([testB.get(i) for i in indices]).to(device)
            true = torch.stack([testA.classes(i) for i in indices])
            for direction, source, target in (("A2B", photos, labels), ("B2A", labels, photos)):
                if direction not in directions:
                    continue
                outputs = {direction: translate(source, direction)[0], f"identity/{direction}": source,
                           f"real/{direction}": target}
                for name, output in outputs.items():
                    matrices[name] = matrices.get(name, 0) + confusion(scorer[direction](output.float()).cpu(), true)
    return {f"{name}/{key}": value for name, matrix in matrices.items() for key, value in scores(matrix).items()}


# What the harness reads (common.data.load_data, common.train.evaluate): the domains' class, whether A[i] and B[i]
# are one scene, and the model's attributes that report takes besides translate and directions.
Domain, PAIRED, MODEL_ATTRIBUTES = PairedShapesDomain, True, ()
