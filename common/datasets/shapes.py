"""The embedded unpaired data set ``shapes``: "apples to oranges" small enough for a CPU.

Domain A ("apples") shows one smooth, glossy red ellipse with a small brown stem; domain B
("oranges") shows one orange ellipse whose brightness is covered in fine dimples. Everything
else is shared on purpose, so that a translator has exactly two things to learn (hue and
texture) and exactly one region to change (the object):

* Backgrounds of both domains come from one generator with one set of parameters: a colour
  gradient, a low-frequency brightness field, a few soft blobs and stripes. Their colours are
  greens, blues, greys and olive browns, whose hues (47 to 223 degrees) stay far from the
  objects' reds and oranges (-9 to 31 degrees). True browns would sit at orange hues and leak the
  domain cue into the background, so "brown" here means khaki and mud.
* Object geometry (centre, semi-axes of 16-38% of the side, rotation) and lighting (light
  direction, sphere-like diffuse shading) have the same distribution in both domains; only
  the highlight differs, as apples are glossier than oranges.

Every image is a pure function of ``(seed, domain, split, index)``: a ``numpy`` SeedSequence
over those integers seeds three independent streams (geometry, background, object
appearance), so images are identical across processes and untouched by any global RNG, and
A and B images with the same index share nothing (the data set is unpaired). ``img_size``
only changes the rendering, not the scene: image 7 at 64 px and at 256 px shows the same
apple. The one exception is the orange texture, which is white noise on a grid of
``min(img_size, 64)`` cells, so that dimples are one pixel at 64 px and scale with the image
above that.

Edges are anti-aliased with an analytic coverage (a first-order signed distance to the
ellipse), and the ground-truth mask is exactly "pixel centre inside the ellipse", which is
where that coverage reaches one half. Images are never augmented (the ``generator`` argument of ``get`` is
ignored) so that ``mask(i)`` always lines up with ``get(i)``.

Its evaluation (``report``): unpaired translation has no target image to compare with, but ``shapes`` knows
where the object is, which gives three numbers per direction (A2B: apples -> oranges, B2A: back):

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

How each attention map is put on [0, 1] first: common/metrics.py.

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

import colorsys
import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from common.metrics import attention_auc, attention_iou, background_psnr, on_scale, to_unit

TRAIN_SIZE = 2000
TEST_SIZE = 100

_DOMAIN_IDS = {"A": 0, "B": 1}
_SPLIT_IDS = {"train": 0, "test": 1}

# (hue, saturation, value) ranges in HSV [0, 1] units; see the module docstring for why the
# hues stop where they do.
_BACKGROUND_FAMILIES = (
    ((0.22, 0.42), (0.25, 0.65), (0.30, 0.75)),  # greens
    ((0.50, 0.62), (0.20, 0.60), (0.35, 0.85)),  # blues
    ((0.13, 0.62), (0.00, 0.08), (0.30, 0.85)),  # greys, tinted only within the allowed hues
    ((0.13, 0.18), (0.25, 0.50), (0.25, 0.60)),  # olive browns
)

# The orange dimples are drawn on at most this many cells per side, i.e. at a fixed fraction
# of the image rather than a fixed number of pixels.
_TEXTURE_CELLS = 64


class _Ellipse(NamedTuple):
    cx: float  # centre and semi-axes in units of the image side
    cy: float
    a: float  # semi-axis along the object's u axis (the longer one)
    b: float  # semi-axis along the object's v axis, where the apple's stem points
    theta: float


class _ObjectFrame(NamedTuple):
    u: np.ndarray  # pixel coordinates in the object's frame, scaled so the rim is u^2+v^2 = 1
    v: np.ndarray
    coverage: np.ndarray  # anti-aliased fraction of each pixel covered by the ellipse


def _scene_rngs(seed: int, domain: str, split: str, index: int) -> list[np.random.Generator]:
    # Separate streams keep the background identical in distribution whatever the object
    # painter consumes, and let mask() draw only the geometry.
    sequence = np.random.SeedSequence([seed, _DOMAIN_IDS[domain], _SPLIT_IDS[split], index])
    return [np.random.default_rng(child) for child in sequence.spawn(3)]


def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    # float32 and channels-first throughout: blending is several times faster than in float64
    # with the colour axis last. Scalars therefore come from math and Python floats, which numpy
    # does not let widen an array to float64.
    centres = ((np.arange(size) + 0.5) / size).astype(np.float32)
    return np.meshgrid(centres, centres)  # x varies along columns, y along rows


def _smooth_upsample(cells: np.ndarray, size: int) -> np.ndarray:
    """Cubic B-spline resampling of an n x n grid to size x size.

    Smooth (no bilinear creases) and built from four gathers per axis: matrix products
    would go through multithreaded BLAS, which stalls for milliseconds on a busy CPU.
    """
    n = cells.shape[0]
    position = ((np.arange(size) + 0.5) * n / size - 0.5).astype(np.float32)
    t = position - np.floor(position)
    first = np.floor(position).astype(np.int64) - 1
    weights = (
        (1 - t) ** 3 / 6,
        (3 * t**3 - 6 * t**2 + 4) / 6,
        (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6,
        t**3 / 6,
    )
    taps = [np.clip(first + k, 0, n - 1) for k in range(4)]
    cells = cells.astype(np.float32)
    rows = sum(w[:, None] * cells[tap] for w, tap in zip(weights, taps))
    return sum(w[None, :] * rows[:, tap] for w, tap in zip(weights, taps))


def _hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    """One colour as a 3 x 1 x 1 array, ready to broadcast against 3 x S x S images."""
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), np.float32)[:, None, None]


def _lerp(image: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return image + (colour - image) * alpha


# ----------------------------------------------------------------------------- background


def _background_colour(rng: np.random.Generator) -> np.ndarray:
    family = _BACKGROUND_FAMILIES[rng.integers(len(_BACKGROUND_FAMILIES))]
    return _hsv(*(rng.uniform(low, high) for low, high in family))


def _gradient(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    start, end = _background_colour(rng), _background_colour(rng)
    angle, steepness = rng.uniform(0, 2 * math.pi), rng.uniform(0.8, 2.0)
    along = (x - 0.5) * math.cos(angle) + (y - 0.5) * math.sin(angle)
    ramp = np.clip(0.5 + steepness * along, 0.0, 1.0)
    return _lerp(start, end, ramp)


def _blob(rng: np.random.Generator, image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    cx, cy = rng.uniform(0, 1, size=2).tolist()
    rx, ry = rng.uniform(0.06, 0.22, size=2).tolist()
    angle, opacity = rng.uniform(0, math.pi), rng.uniform(0.3, 0.7)
    cos, sin = math.cos(angle), math.sin(angle)
    du = (x - cx) * cos + (y - cy) * sin
    dv = (y - cy) * cos - (x - cx) * sin
    alpha = opacity * np.exp(-0.5 * ((du / rx) ** 2 + (dv / ry) ** 2))
    return _lerp(image, _background_colour(rng), alpha)


def _stripe(rng: np.random.Generator, image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    angle, offset = rng.uniform(0, math.pi), rng.uniform(-0.5, 0.5)
    width, opacity = rng.uniform(0.02, 0.08), rng.uniform(0.2, 0.5)
    distance = (x - 0.5) * math.cos(angle) + (y - 0.5) * math.sin(angle) - offset
    alpha = opacity * np.exp(-0.5 * (distance / width) ** 2)
    return _lerp(image, _background_colour(rng), alpha)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _pixel_grid(size)
    image = _gradient(rng, x, y)
    # Brightness-only modulation keeps every pixel on its palette hue.
    field = _smooth_upsample(rng.standard_normal((4, 4)), size)
    image = image * (1.0 + 0.1 * field)
    for _ in range(rng.integers(1, 4)):
        image = _blob(rng, image, x, y)
    for _ in range(rng.integers(0, 3)):
        image = _stripe(rng, image, x, y)
    return image


# ----------------------------------------------------------------------------- the object


def _sample_ellipse(rng: np.random.Generator) -> _Ellipse:
    a = rng.uniform(0.20, 0.38)
    b = a * rng.uniform(0.78, 1.0)
    # At most a thin sliver of the rim may leave the image.
    cx, cy = rng.uniform(0.85 * a, 1.0 - 0.85 * a, size=2).tolist()
    return _Ellipse(cx, cy, a, b, rng.uniform(0, 2 * math.pi))


def _object_frame(ellipse: _Ellipse, size: int) -> _ObjectFrame:
    x, y = _pixel_grid(size)
    cos, sin = math.cos(ellipse.theta), math.sin(ellipse.theta)
    u = ((x - ellipse.cx) * cos + (y - ellipse.cy) * sin) / ellipse.a
    v = (-(x - ellipse.cx) * sin + (y - ellipse.cy) * cos) / ellipse.b
    # First-order distance to the rim, (f - 1) / |grad f| with f = u^2 + v^2, in pixels.
    grad_x = 2 * (u * cos / ellipse.a - v * sin / ellipse.b)
    grad_y = 2 * (u * sin / ellipse.a + v * cos / ellipse.b)
    gradient = np.hypot(grad_x, grad_y) + 1e-12  # zero only at the centre, far inside
    distance = (u**2 + v**2 - 1.0) / gradient * size
    return _ObjectFrame(u, v, np.clip(0.5 - distance, 0.0, 1.0))


def _sample_light(rng: np.random.Generator) -> tuple[float, float, float]:
    azimuth, height = rng.uniform(0, 2 * math.pi), rng.uniform(0.5, 0.8)
    spread = math.sqrt(1.0 - height**2)
    return spread * math.cos(azimuth), spread * math.sin(azimuth), height


def _shading(
    frame: _ObjectFrame, light: tuple[float, float, float], gloss: float, shininess: float
) -> tuple[np.ndarray, np.ndarray]:
    """Diffuse brightness and specular highlight of a sphere squashed onto the ellipse."""
    normal = (frame.u, frame.v, np.sqrt(np.clip(1.0 - frame.u**2 - frame.v**2, 0.0, None)))
    towards_viewer = (light[0], light[1], light[2] + 1.0)
    halfway = [h / math.hypot(*towards_viewer) for h in towards_viewer]
    diffuse = np.clip(sum(n * l for n, l in zip(normal, light)), 0.0, None)
    specular = np.clip(sum(n * h for n, h in zip(normal, halfway)), 0.0, None) ** shininess
    return 0.45 + 0.55 * diffuse, gloss * specular


def _add_highlight(colour: np.ndarray, specular: np.ndarray) -> np.ndarray:
    # Blending towards white keeps the hue, so highlights do not bias the target scorer.
    return colour + (1.0 - colour) * specular


def _stem_alpha(frame: _ObjectFrame, ellipse: _Ellipse, size: int) -> np.ndarray:
    # A short segment along -v that ends inside the rim, so the stem belongs to the object's
    # mask and A backgrounds stay distributed like B backgrounds.
    across = frame.u * ellipse.a * size
    along = (frame.v - np.clip(frame.v, -0.92, -0.5)) * ellipse.b * size
    half_width = max(0.7, 0.05 * ellipse.a * size)
    return np.clip(half_width + 0.5 - np.hypot(across, along), 0.0, 1.0)


def _paint_apple(rng: np.random.Generator, frame: _ObjectFrame, ellipse: _Ellipse, size: int) -> np.ndarray:
    base = _hsv(rng.uniform(-0.025, 0.015), rng.uniform(0.75, 0.92), rng.uniform(0.7, 0.9))
    brightness, specular = _shading(frame, _sample_light(rng), rng.uniform(0.35, 0.6), 25.0)
    apple = base * brightness
    stem = _hsv(rng.uniform(0.06, 0.09), rng.uniform(0.6, 0.8), rng.uniform(0.2, 0.3))
    apple = _lerp(apple, stem, _stem_alpha(frame, ellipse, size))
    return _add_highlight(apple, specular)


def _dimples(rng: np.random.Generator, size: int) -> np.ndarray:
    cells = min(size, _TEXTURE_CELLS)
    noise = _smooth_upsample(rng.standard_normal((cells, cells)), size)
    return noise / noise.std()


def _paint_orange(rng: np.random.Generator, frame: _ObjectFrame, ellipse: _Ellipse, size: int) -> np.ndarray:
    base = _hsv(rng.uniform(0.06, 0.085), rng.uniform(0.85, 0.97), rng.uniform(0.9, 1.0))
    brightness, specular = _shading(frame, _sample_light(rng), rng.uniform(0.08, 0.18), 10.0)
    strength = rng.uniform(0.07, 0.12)
    # The noise is drawn last: it is the only draw whose size depends on img_size, so every
    # other property of the scene stays the same at every resolution.
    texture = np.clip(1.0 + strength * _dimples(rng, size), 0.0, None)
    return _add_highlight(base * (brightness * texture), specular)


_PAINTERS = {"A": _paint_apple, "B": _paint_orange}


def _render(seed: int, domain: str, split: str, index: int, size: int) -> np.ndarray:
    geometry_rng, background_rng, appearance_rng = _scene_rngs(seed, domain, split, index)
    ellipse = _sample_ellipse(geometry_rng)
    frame = _object_frame(ellipse, size)
    background = _background(background_rng, size)
    painted = _PAINTERS[domain](appearance_rng, frame, ellipse, size)
    image = _lerp(background, painted, frame.coverage)
    return np.clip(image, 0.0, 1.0)


class ShapesDomain(torch.utils.data.Dataset):
    """One domain ("A" apples, "B" oranges) of one split of the procedural ``shapes`` set."""

    def __init__(self, domain: str, split: str, img_size: int, seed: int = 0):
        if domain not in _DOMAIN_IDS:
            raise ValueError(f"domain must be 'A' or 'B', got {domain!r}")
        if split not in _SPLIT_IDS:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if img_size < 8 or seed < 0:
            raise ValueError(f"need img_size >= 8 and seed >= 0, got {img_size} and {seed}")
        self.domain, self.split, self.img_size, self.seed = domain, split, img_size, seed

    def __len__(self) -> int:
        return TRAIN_SIZE if self.split == "train" else TEST_SIZE

    def _check(self, i: int) -> int:
        # IndexError (not a silent modulo) so that plain iteration over the data set stops.
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        return int(i)

    def get(self, i: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Image i as float32 3 x S x S in [-1, 1]; ``generator`` is ignored (no augmentation)."""
        image = _render(self.seed, self.domain, self.split, self._check(i), self.img_size)
        return torch.from_numpy(image * 2.0 - 1.0)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.get(i)

    def mask(self, i: int) -> torch.Tensor:
        """The object of image i as float32 1 x S x S, 1 inside and 0 outside."""
        geometry_rng = _scene_rngs(self.seed, self.domain, self.split, self._check(i))[0]
        frame = _object_frame(_sample_ellipse(geometry_rng), self.img_size)
        inside = frame.u**2 + frame.v**2 <= 1.0  # where _render's coverage reaches one half
        return torch.from_numpy(inside.astype(np.float32)[None])

    def name(self, i: int) -> str:
        return f"{self.domain}_{self.split}_{self._check(i):04d}"


# --- evaluation -------------------------------------------------------------------------------------------------------

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


def _ramp(value: torch.Tensor, at_a: float, at_b: float) -> torch.Tensor:
    return (2.0 * (value - at_a) / (at_b - at_a) - 1.0).clamp(-1.0, 1.0)


def _scorer_inputs(img: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB in [0, 1] at scorer resolution and the eroded object mask there."""
    rgb, mask = to_unit(img), mask.float()
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


def report(translate, data, device, cache_dir=None, directions=("A2B", "B2A"), attention_scale="probability",
           batch_size: int = 16, limit: int | None = None) -> dict[str, float]:
    """Mean bg_psnr, target, iou and auc of each direction over the first ``limit`` test images, with their floors
    (``identity/``, ``uniform/``) and ceiling (``real/``). `cache_dir` is not used: unlike the other embedded sets'
    scorers, ``target_score`` has no weights to train and keep.

    ``translate(x, direction)`` gets a batch on ``device`` and "A2B" or "B2A" and returns the
    translated batch and an attention map (N x 1 x h x w, any resolution, on ``attention_scale``) or None.
    """
    testA, testB = data["testA"], data["testB"]
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


# What the harness reads (common.data.load_data, common.train.evaluate): the domains' class, whether A[i] and B[i]
# are one scene, and the model's attributes that report takes besides translate and directions.
Domain, PAIRED, MODEL_ATTRIBUTES = ShapesDomain, False, ("attention_scale",)
