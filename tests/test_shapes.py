"""Tests of the embedded ``shapes`` data set and of the metrics computed on it."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.datasets import shapes
from common.datasets.shapes import TEST_SIZE, TRAIN_SIZE, ShapesDomain, target_score
from common.metrics import attention_auc, attention_iou, background_psnr, on_scale

ROOT = Path(__file__).resolve().parents[1]


def _batch(dataset: ShapesDomain, count: int = TEST_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.stack([dataset.get(i) for i in range(count)])
    return images, torch.stack([dataset.mask(i) for i in range(count)])


@pytest.fixture(scope="module")
def test_sets_64() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {domain: _batch(ShapesDomain(domain, "test", 64)) for domain in "AB"}


def _hue_degrees(rgb: torch.Tensor) -> torch.Tensor:
    red, green, blue = rgb.unbind(dim=1)
    return torch.rad2deg(torch.atan2(math.sqrt(3) / 2 * (green - blue), red - (green + blue) / 2))


def _far_background(masks: torch.Tensor) -> torch.Tensor:
    # Dilated by 2 px, so the anti-aliased rim (object colour mixed in) is not "background".
    return F.max_pool2d(masks, 5, stride=1, padding=2) < 0.5


# ----------------------------------------------------------------------------- data set


def test_same_index_gives_the_same_image_whatever_the_global_rng():
    torch.manual_seed(1)
    np.random.seed(1)
    first = ShapesDomain("A", "train", 64, seed=3).get(17)
    torch.manual_seed(2)
    np.random.seed(2)
    second = ShapesDomain("A", "train", 64, seed=3)
    assert torch.equal(first, second.get(17))
    assert torch.equal(first, second[17])
    assert torch.equal(first, second.get(17, generator=torch.Generator().manual_seed(5)))


def test_images_are_identical_across_processes():
    code = (
        "from common.datasets.shapes import ShapesDomain; d = ShapesDomain('B', 'test', 32, seed=4); "
        "print(repr(d.get(9).double().sum().item()), repr(d.mask(9).sum().item()))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    here = ShapesDomain("B", "test", 32, seed=4)
    assert out.stdout.split() == [repr(here.get(9).double().sum().item()), repr(here.mask(9).sum().item())]


def test_index_seed_split_and_domain_all_change_the_image():
    reference = ShapesDomain("A", "train", 64).get(5)
    others = [
        ShapesDomain("A", "train", 64).get(6),
        ShapesDomain("A", "train", 64, seed=1).get(5),
        ShapesDomain("A", "test", 64).get(5),
        ShapesDomain("B", "train", 64).get(5),
    ]
    for other in others:
        assert (other - reference).abs().mean() > 0.05


def test_backgrounds_of_the_two_domains_are_unpaired(test_sets_64):
    (images_a, masks_a), (images_b, masks_b) = test_sets_64["A"], test_sets_64["B"]
    both = (_far_background(masks_a) & _far_background(masks_b)).float()
    difference = ((images_a - images_b).abs() * both).sum(dim=(1, 2, 3)) / (3 * both.sum(dim=(1, 2, 3)))
    assert (difference > 0.02).float().mean() > 0.95


@pytest.mark.parametrize("size", [64, 100, 256])
def test_image_and_mask_format(size):
    for domain in "AB":
        dataset = ShapesDomain(domain, "test", size)
        image, mask = dataset.get(3), dataset.mask(3)
        assert image.dtype == torch.float32 and image.shape == (3, size, size)
        assert image.min() >= -1.0 and image.max() <= 1.0 and image.std() > 0.1
        assert mask.dtype == torch.float32 and mask.shape == (1, size, size)
        assert set(mask.unique().tolist()) == {0.0, 1.0}
        assert 0.03 < mask.mean() < 0.6


def test_sizes_names_and_bad_arguments():
    train, test = ShapesDomain("A", "train", 32), ShapesDomain("B", "test", 32)
    assert (len(train), len(test)) == (TRAIN_SIZE, TEST_SIZE) == (2000, 100)
    assert test.name(7) == "B_test_0007" and train.name(1234) == "A_train_1234"
    with pytest.raises(IndexError):
        test.get(TEST_SIZE)
    with pytest.raises(IndexError):
        test.mask(-1)
    with pytest.raises(ValueError):
        ShapesDomain("C", "test", 32)
    with pytest.raises(ValueError):
        ShapesDomain("A", "val", 32)


def test_every_test_object_is_clearly_visible():
    for domain in "AB":
        dataset = ShapesDomain(domain, "test", 64)
        areas = torch.stack([dataset.mask(i).mean() for i in range(TEST_SIZE)])
        assert areas.min() > 0.03 and areas.max() < 0.6


def test_mask_lines_up_with_the_object(test_sets_64):
    for images, masks in test_sets_64.values():
        redness = images[:, :1] - images[:, 2:]  # apples and oranges alike: red minus blue
        inside = (redness * masks).sum(dim=(1, 2, 3)) / masks.sum(dim=(1, 2, 3))
        outside_mask = _far_background(masks).float()
        outside = (redness * outside_mask).sum(dim=(1, 2, 3)) / outside_mask.sum(dim=(1, 2, 3))
        assert (inside > outside + 0.3).all()


def test_scene_does_not_depend_on_resolution():
    small, large = ShapesDomain("A", "test", 64), ShapesDomain("A", "test", 128)
    for i in range(5):
        shrunk = F.avg_pool2d(large.mask(i)[None], 2)[0] >= 0.5
        same = small.mask(i) > 0.5
        assert (shrunk & same).sum() / (shrunk | same).sum() > 0.9


def test_backgrounds_of_both_domains_share_one_distribution():
    statistics = {}
    for domain in "AB":
        images, masks = _batch(ShapesDomain(domain, "train", 32), count=400)
        background = _far_background(masks).float()
        colour = (images * background).sum(dim=(2, 3)) / background.sum(dim=(2, 3))  # N x 3
        statistics[domain] = (colour.mean(dim=0), colour.std(dim=0))
    (mean_a, spread_a), (mean_b, spread_b) = statistics["A"], statistics["B"]
    # Per-image means spread by 0.2-0.25 (in [-1, 1] units), so the difference of two
    # averages over 400 images has a standard error of about 0.018 and 0.06 is over three of
    # those. Drawing A backgrounds without one of the four colour families moves the
    # averages by 0.04-0.15, which this catches for three families out of four.
    assert (mean_a - mean_b).abs().max() < 0.06
    assert (spread_a - spread_b).abs().max() < 0.04


def test_background_hues_stay_away_from_red_and_orange(test_sets_64):
    for images, masks in test_sets_64.values():
        rgb = (images + 1) / 2
        saturation = (rgb.amax(dim=1) - rgb.amin(dim=1)) / rgb.amax(dim=1).clamp(min=1e-6)
        coloured = _far_background(masks)[:, 0] & (saturation > 0.15)
        hues = _hue_degrees(rgb)[coloured]
        assert hues.numel() > 10_000
        assert ((hues > -30) & (hues < 40)).float().mean() < 0.001


# ----------------------------------------------------------------------------- target_score


@pytest.mark.parametrize("size", [64, 128])
def test_target_score_separates_the_domains(size, test_sets_64):
    batches = test_sets_64 if size == 64 else {d: _batch(ShapesDomain(d, "test", size)) for d in "AB"}
    scores_a, scores_b = (target_score(*batches[domain]) for domain in "AB")
    assert scores_a.shape == scores_b.shape == (TEST_SIZE,)
    assert scores_a.mean() < 0.1 and scores_b.mean() > 0.9
    assert (scores_a < 0.5).float().mean() >= 0.95 and (scores_b > 0.5).float().mean() >= 0.95


def test_target_score_needs_both_colour_and_texture(test_sets_64):
    images, masks = test_sets_64["B"]
    blurred = F.avg_pool2d(images, 7, stride=1, padding=3, count_include_pad=False)
    smooth = images * (1 - masks) + blurred * masks
    green = images * (1 - masks) + images[:, [1, 0, 2]] * masks
    grey = images * (1 - masks) + images.mean(dim=1, keepdim=True) * masks
    for changed in (smooth, green, grey):
        assert target_score(changed, masks).mean() < 0.6


# ----------------------------------------------------------------------------- background_psnr


def _random_images(count: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(count, 3, size, size, generator=generator) * 1.6 - 0.8
    masks = torch.zeros(count, 1, size, size)
    masks[:, :, 8:20, 10:24] = 1.0
    return images, masks


def test_background_psnr_is_capped_for_identical_backgrounds():
    images, masks = _random_images()
    assert torch.equal(background_psnr(images, images.clone(), masks), torch.full((4,), 100.0))


def test_background_psnr_of_a_known_offset_ignores_the_object():
    images, masks = _random_images()
    shifted = images + 0.1 * (1 - masks)  # 0.05 on the [0, 1] scale
    expected = 20 * math.log10(1 / 0.05)
    assert torch.allclose(background_psnr(images, shifted, masks), torch.full((4,), expected), atol=1e-3)
    repainted = shifted * (1 - masks) + torch.rand_like(shifted) * masks
    assert torch.allclose(background_psnr(images, repainted, masks), torch.full((4,), expected), atol=1e-3)


def test_background_psnr_is_per_image():
    images, masks = _random_images()
    offsets = torch.tensor([0.01, 0.05, 0.1, 0.2]).view(4, 1, 1, 1)  # keeps within [-1, 1]
    psnr = background_psnr(images, images + offsets * (1 - masks), masks)
    expected = torch.tensor([20 * math.log10(2 / offset) for offset in offsets.flatten().tolist()])
    assert torch.allclose(psnr, expected, atol=1e-3)


# ----------------------------------------------------------------------------- attention metrics


def _auc_by_pairs(values, target):
    """ROC-AUC written out: over every (object, background) pixel pair, 1 if the object pixel ranks higher, 1/2
    for a tie."""
    pos, neg = values[target].double(), values[~target].double()
    wins = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
    return wins.mean().item()


def test_auc_is_the_pairwise_ranking_with_ties_halved():
    generator = torch.Generator().manual_seed(0)
    maps = torch.randint(0, 5, (3, 1, 12, 12), generator=generator).double()  # few levels: many ties
    masks = (torch.rand(3, 1, 12, 12, generator=generator) < 0.3).double()
    expected = [_auc_by_pairs(maps[i].flatten(), masks[i].flatten() > 0.5) for i in range(3)]
    assert torch.allclose(attention_auc(maps, masks), torch.tensor(expected, dtype=torch.float64), atol=1e-12)


def test_hand_made_masks_score_what_they_should(test_sets_64):
    _, masks = test_sets_64["A"]
    object_px = masks > 0.5
    binary = object_px.double()
    # A bright disc off the object: the top-left or bottom-right corner, whichever the object is farther from.
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    halo = torch.zeros_like(masks, dtype=torch.bool)
    for i in range(len(masks)):
        for cy, cx in ((6, 6), (57, 57), (6, 57), (57, 6)):
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 25
            if not (F.max_pool2d(masks[i:i + 1], 9, 1, 4)[0, 0] > 0)[disc].any():
                halo[i, 0] = disc
                break
    assert halo.flatten(1).any(1).all()

    def scores(attention, scale="probability"):
        attention = on_scale(attention, scale)
        return attention_iou(attention, masks), attention_auc(attention, masks)

    iou, auc = scores(binary)                                             # perfect
    assert torch.allclose(iou, torch.ones(TEST_SIZE, dtype=torch.float64)) and (auc > 0.999).all()
    iou, auc = scores(torch.zeros_like(masks))                            # empty
    assert (iou == 0).all() and torch.allclose(auc, torch.full_like(auc, 0.5))
    weak = torch.where(halo, 1.0, 0.2 * binary)                           # weak inside, a bright halo outside
    iou, auc = scores(weak)
    assert (iou == 0).all()  # the halo is all it marks
    # AUC: object pixels (0.2) rank above every background pixel (0) but the halo's (1).
    background, halo_px = (~object_px).flatten(1).sum(1), halo.flatten(1).sum(1)
    assert torch.allclose(auc, 1 - halo_px.double() / background, atol=1e-9)
    inside = 0.3 * binary                                                 # uniformly 0.3 inside
    iou, auc = scores(inside)
    assert (iou == 0).all() and (auc > 0.999).all()  # a probability that never reaches 0.5 marks nothing
    iou, _ = scores(inside, "unbounded")
    assert (iou > 0.99).all()  # the same values as an unbounded map: the set's maximum is the object


def test_unbounded_maps_share_one_normalisation(test_sets_64):
    _, masks = test_sets_64["A"]
    strength = torch.linspace(0.1, 1.0, TEST_SIZE).view(-1, 1, 1, 1)
    maps = 1000 * strength * masks - 3  # any offset and scale, weaker in the first images
    iou = attention_iou(on_scale(maps, "unbounded"), masks)
    assert (iou[strength.flatten() < 0.45] == 0).all() and (iou[strength.flatten() > 0.55] > 0.99).all()
    assert (on_scale(torch.full_like(maps, 7.0), "unbounded") == 0).all()  # a constant set marks nothing
    with pytest.raises(ValueError):
        on_scale(maps, "percent")


# ----------------------------------------------------------------------------- report


def test_report_floors_and_ceilings():
    test_a, test_b = ShapesDomain("A", "test", 64), ShapesDomain("B", "test", 64)

    def identity(x, direction):
        return x, None

    report = shapes.report(identity, {"testA": test_a, "testB": test_b}, "cpu", batch_size=6, limit=16)
    model = {f"{d}/{k}" for d in ("A2B", "B2A") for k in ("bg_psnr", "target")}
    assert set(report) == model | {f"identity/{k}" for k in model} | {f"real/{d}/target" for d in ("A2B", "B2A")}
    assert all(isinstance(value, float) for value in report.values())
    for key in model:  # the identity is its own floor
        assert report[key] == report[f"identity/{key}"]
    assert report["A2B/bg_psnr"] == report["B2A/bg_psnr"] == 100.0
    assert report["A2B/target"] < 0.1 and report["B2A/target"] < 0.1
    assert report["real/A2B/target"] > 0.9 and report["real/B2A/target"] > 0.9

    def grey_with_true_masks(domain):
        served = iter(range(16))

        def translate(x, direction):
            masks = torch.stack([domain[direction].mask(next(served)) for _ in range(len(x))])
            return torch.zeros_like(x), masks
        return translate
    for direction in ("A2B", "B2A"):
        seen = shapes.report(grey_with_true_masks({"A2B": test_a, "B2A": test_b}), {"testA": test_a, "testB": test_b},
                             "cpu", batch_size=6, limit=16, directions=(direction,))
        assert seen[f"{direction}/bg_psnr"] < 20
        assert seen[f"{direction}/iou"] > 0.99 and seen[f"{direction}/auc"] > 0.999  # the ceiling
        assert seen[f"uniform/{direction}/auc"] == 0.5  # a map that marks everything ranks nothing
        share = torch.stack([test_a.mask(i) if direction == "A2B" else test_b.mask(i) for i in range(16)])
        assert abs(seen[f"uniform/{direction}/iou"] - (share > 0.5).double().mean().item()) < 1e-9
