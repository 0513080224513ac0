"""common/datasets/digits.py: the embedded SVHN-like / MNIST-like digits, and §4.3's evaluation."""
import pytest
import torch

from common.datasets import digits
from common.datasets.digits import DigitsDomain


def test_images_are_pure_functions_of_seed_domain_split_index():
    a = DigitsDomain("A", "train", 32)
    assert torch.equal(a.get(3), DigitsDomain("A", "train", 32).get(3))
    assert not torch.equal(a.get(3), DigitsDomain("A", "train", 32, seed=1).get(3))
    assert not torch.equal(a.get(3), DigitsDomain("A", "test", 32).get(3))
    x = a.get(0)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert DigitsDomain("B", "test", 48).get(5).shape == (3, 48, 48)
    assert a.name(7).startswith("A_train_0007_") and a.name(7).endswith(str(a.label(7)))


def test_labels_are_uniform_and_unpaired():
    labels = [DigitsDomain("B", "train", 32).label(i) for i in range(1000)]
    counts = torch.bincount(torch.tensor(labels), minlength=10)
    assert counts.min() > 70 and counts.max() < 130
    A = [DigitsDomain("A", "train", 32).label(i) for i in range(1000)]
    assert sum(a == b for a, b in zip(A, labels)) < 150  # A and B with the same index are unrelated


def test_the_digit_does_not_depend_on_the_size():
    small, large = DigitsDomain("B", "train", 32).get(11), DigitsDomain("B", "train", 64).get(11)
    down = torch.nn.functional.avg_pool2d(large[None], 2)[0]
    assert (down - small).abs().mean() < 0.1


def test_b_is_grey_ink_on_black_and_a_is_cluttered():
    b = DigitsDomain("B", "train", 32).get(1)
    assert torch.equal(b[0], b[1]) and torch.equal(b[1], b[2]) and (b == -1).float().mean() > 0.5
    a = DigitsDomain("A", "train", 32).get(1)
    assert (a == -1).float().mean() < 0.05 and (a[0] - a[1]).abs().mean() > 0.05


def test_report_floor_ceiling_and_cache(tmp_path):
    data = {f"test{d}": DigitsDomain(d, "test", 32) for d in "AB"}
    identity = lambda x, direction: (x, None)  # noqa: E731
    first = digits.report(identity, data, torch.device("cpu"), tmp_path, steps=60)
    assert set(first) == {"A2B/accuracy", "identity/A2B/accuracy", "real/A2B/accuracy"}
    # A translation that adapts nothing scores as untranslated A does: about chance (0.112 measured).
    assert first["A2B/accuracy"] == first["identity/A2B/accuracy"] < 0.2
    assert first["real/A2B/accuracy"] > 0.95  # 0.996 measured
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits_classifier_32px_seed0_steps60.pt",
                                                           "digits_classifier_32px_seed0_steps60.pt.lock"]
    assert digits.report(identity, data, torch.device("cpu"), tmp_path, steps=60) == first  # loaded, not retrained
    blank = lambda x, direction: (torch.full_like(x, -1), None)  # noqa: E731
    assert digits.report(blank, data, torch.device("cpu"), tmp_path, steps=60)["A2B/accuracy"] < 0.2

    # A perfect translation: each A test image becomes a real B test image of its digit.
    testA, testB = data["testA"], data["testB"]
    of_digit = {d: [i for i in range(len(testB)) if testB.label(i) == d] for d in range(10)}

    def perfect(x, direction):
        found = [next(i for i in range(len(testA)) if torch.equal(testA.get(i), image)) for image in x]
        return torch.stack([testB.get(of_digit[testA.label(i)][i % len(of_digit[testA.label(i)])])
                            for i in found]), None

    r = digits.report(perfect, data, torch.device("cpu"), tmp_path, steps=60)
    assert r["identity/A2B/accuracy"] == first["identity/A2B/accuracy"]
    assert r["A2B/accuracy"] > 0.95 and abs(r["A2B/accuracy"] - r["real/A2B/accuracy"]) < 0.02


def test_report_says_where_the_boxes_sit(tmp_path):
    """Boxes that follow each labelled digit's centre (computed here from the digit's box) by half in x and by 0.3 in
    y: slope 0.4, the mean of the two, and their distance from the digit |(0.5 x, 0.7 y)|; a centred box ignores it
    (slope 0) and misses it by |(x, y)|."""
    data = {f"test{d}": DigitsDomain(d, "test", 32) for d in "AB"}
    boxes = torch.stack([data["testA"].render(i)[2] for i in range(500)])
    truth = boxes[:, :2] + boxes[:, 2:] - 1  # onto [-1, 1]
    batches = iter(torch.split(truth * torch.tensor([0.5, 0.3]), 100))  # report asks for A's test set in order
    partway = lambda x: (next(batches)[:, None], torch.full((len(x), 1, 2), 0.3))  # noqa: E731
    r = digits.report(lambda x, direction: (x, None), data, torch.device("cpu"), tmp_path, steps=1,  # accuracy unread
                      boxes=partway)
    assert r["A2B/box_slope"] == pytest.approx(0.4, abs=1e-5) and r["centred/A2B/box_slope"] == 0
    missed = (truth * torch.tensor([0.5, 0.7])).norm(dim=1).mean().item() * 16  # in px: 16 px a unit at 32 px
    assert r["A2B/box_error_px"] == pytest.approx(missed, rel=1e-4)
    assert r["centred/A2B/box_error_px"] == pytest.approx(truth.norm(dim=1).mean().item() * 16, rel=1e-4)


def test_a_digit_sits_anywhere_in_the_middle_and_its_box_holds_its_ink():
    a, b = DigitsDomain("A", "train", 32), DigitsDomain("B", "train", 32)
    centres = {}
    for name, domain in (("A", a), ("B", b)):
        boxes = torch.stack([domain.render(i)[2] for i in range(300)])
        centres[name] = (boxes[:, :2] + boxes[:, 2:]) / 2
        for i in range(20):
            image, ink, box = domain.render(i)
            u = (torch.arange(32) + 0.5) / 32
            inside = (u[None, :] >= box[0] - 1 / 32) & (u[None, :] <= box[2] + 1 / 32) \
                & (u[:, None] >= box[1] - 1 / 32) & (u[:, None] <= box[3] + 1 / 32)
            assert ink.sum() > 10 and (ink * ~inside).sum() == 0  # all the digit's ink in its box
    spread = centres["A"].amax(0) - centres["A"].amin(0)
    assert (spread >= 0.2).all() and (centres["B"].std(0) < 0.05).all()  # SVHN-like off centre, MNIST-like centred


def test_how_far_the_boxes_follow_the_digits_against_numpy():
    """follows: per axis, numpy's least-squares line and correlation of the boxes' centres on the digits', in float64,
    on boxes that follow x by half and ignore y, 0.1 below the digits on average."""
    import numpy as np
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(200, 2, generator=g, dtype=torch.float64) - 0.5
    boxes = torch.stack([0.5 * truth[:, 0], torch.zeros(200, dtype=torch.float64)], 1) \
        + 0.05 * torch.randn(200, 2, generator=g, dtype=torch.float64) + torch.tensor([0.0, 0.1], dtype=torch.float64)
    slope, correlation, offset = digits.follows(boxes, truth)
    for axis in (0, 1):
        b, d = boxes[:, axis].numpy(), truth[:, axis].numpy()
        assert slope[axis].item() == pytest.approx(np.polyfit(d, b, 1)[0])
        assert correlation[axis].item() == pytest.approx(np.corrcoef(d, b)[0, 1])
        assert offset[axis].item() == pytest.approx((b - d).mean())
    assert slope[0].item() == pytest.approx(0.5, abs=0.05) and abs(slope[1].item()) < 0.05


def test_the_digits_true_centre_is_the_middle_of_its_ink():
    """true_centres against the middle of the pixels the labelled digit's ink covers, counted apart."""
    testA = DigitsDomain("A", "test", 32)
    for i, centre in enumerate(digits.true_centres(testA, range(20))):
        ys, xs = (testA.render(i)[1] > 0.05).nonzero(as_tuple=True)
        middle = torch.stack([xs.min() + xs.max() + 1, ys.min() + ys.max() + 1]) / 32 - 1  # pixel i spans [i, i + 1)
        assert (centre - middle).norm() * 32 / 2 < 1  # in px


def test_box_scores_on_hand_made_boxes():
    a = DigitsDomain("A", "test", 32)
    boxes = torch.stack([a.render(i)[2] for i in range(10)])
    true_centres = boxes[:, :2] + boxes[:, 2:] - 1  # onto [-1, 1]
    halves = boxes[:, 2:] - boxes[:, :2] + 2 / 32   # the true box, a pixel wider on each side
    error, share = digits.box_scores(true_centres, halves, a, range(10))
    assert error < 1e-4 and abs(share - 10) < 1e-6  # 10 images: at the digit and holding all its ink
    away = true_centres + torch.tensor([[2.5, 0.0]])  # the box moved out of the image
    error, share = digits.box_scores(away, halves, a, range(10))
    assert abs(error - 10 * 2.5 * 16) < 1e-3 and share == 0
