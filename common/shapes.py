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
"""

import colorsys
import math
from typing import NamedTuple

import numpy as np
import torch

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
