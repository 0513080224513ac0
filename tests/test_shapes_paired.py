"""common/shapes_paired.py: the embedded photo <-> label scenes, and GuideGAN §4.1's scores."""
import torch
import torch.nn.functional as F

from common import shapes_paired as sp
from common.shapes_paired import PairedShapesDomain


def test_scenes_are_pure_functions_and_a_and_b_show_the_same_scene():
    A, B = PairedShapesDomain("A", "test", 32), PairedShapesDomain("B", "test", 32)
    assert torch.equal(A.get(4), PairedShapesDomain("A", "test", 32).get(4))
    assert not torch.equal(A.get(4), PairedShapesDomain("A", "test", 32, seed=1).get(4))
    x = A.get(0)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    for i in range(10):
        assert torch.equal(sp.to_classes(B.get(i)[None])[0], A.classes(i)) and A.name(i) == B.name(i)


def test_every_class_appears_and_the_layout_does_not_depend_on_the_size():
    small, large = PairedShapesDomain("A", "train", 32), PairedShapesDomain("A", "train", 64)
    seen = torch.zeros(5, dtype=torch.bool)
    for i in range(30):
        seen |= torch.bincount(small.classes(i).flatten(), minlength=5) > 0
        down = large.classes(i)[1::2, 1::2]
        assert (down == small.classes(i)).float().mean() > 0.9
    assert seen.all()


def test_scores_on_hand_made_confusions():
    perfect = sp.scores(torch.diag(torch.tensor([5, 3, 0, 2, 1])))
    assert perfect == {"pixel_acc": 1.0, "class_acc": 1.0, "iou": 1.0}
    # Truth: 4 pixels of class 0, 2 of class 1; class 1 predicted as class 0 once.
    s = sp.scores(sp.confusion(torch.tensor([0, 0, 0, 0, 0, 1]), torch.tensor([0, 0, 0, 0, 1, 1]), k=2))
    assert abs(s["pixel_acc"] - 5 / 6) < 1e-12 and abs(s["class_acc"] - (1 + 0.5) / 2) < 1e-12
    assert abs(s["iou"] - (4 / 5 + 1 / 2) / 2) < 1e-12


def test_report_and_cache(tmp_path):
    data = {f"test{d}": PairedShapesDomain(d, "test", 32) for d in "AB"}
    index = {}

    def oracle(x, direction):
        """photo -> its true label map; label -> the true photo."""
        source, target = (data["testA"], data["testB"]) if direction == "A2B" else (data["testB"], data["testA"])
        found = [next(i for i in range(len(source)) if torch.equal(source.get(i), image.cpu())) for image in x]
        index.setdefault(direction, []).extend(found)
        return torch.stack([target.get(i) for i in found]), None

    r = sp.report(oracle, data, torch.device("cpu"), tmp_path, steps=30)
    assert r["A2B/pixel_acc"] == r["A2B/class_acc"] == r["A2B/iou"] == 1.0
    assert all(r[f"B2A/{k}"] == r[f"real/{k}"] for k in ("pixel_acc", "class_acc", "iou"))
    assert [p.name for p in tmp_path.iterdir()] == ["shapes_paired_fcn_32px_seed0_steps30.pt"]
    grey = lambda x, direction: (torch.zeros_like(x), None)  # noqa: E731
    worse = sp.report(grey, data, torch.device("cpu"), tmp_path, steps=30)
    assert worse["A2B/pixel_acc"] < 0.5 and worse["real/iou"] == r["real/iou"]  # the cached segmenter again


def test_segmenter_learns_the_classes():
    A = PairedShapesDomain("A", "train", 32)
    net = sp.train_segmenter(A, torch.device("cpu"), steps=60)
    test = PairedShapesDomain("A", "test", 32)
    with torch.no_grad():
        predicted = net(torch.stack([test.get(i) for i in range(20)])).argmax(1)
    true = torch.stack([test.classes(i) for i in range(20)])
    assert (predicted == true).float().mean() > 0.7
    assert F.one_hot(predicted, 5).sum((0, 1, 2)).gt(0).sum() >= 3
