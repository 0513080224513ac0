"""Where do DA-GAN's own losses want its box, and what would a box on the labelled digit buy a trained model?
(docs/dagan.md; docs/exercises.md: DA-GAN 2)

On the digits test set of A (SVHN-like), the trained networks of one run put each image's box at f_loc's centre
(as trained), at the image centre and at the labelled digit's true centre, and on grids of offsets (every pixel
within --radius) around f_loc's centre and around the digit's, and read there:
- the geometric regulariser (§3.1): the classifier's cross-entropy on DAE(X) against the label. It is the one term
  of Eq. 9 that knows which digit of s the label names, so the box follows the digit only as far as this landscape
  falls towards it. Averaged over the images, the grid around f_loc's centre says whether the box sits in a well
  (the cross-entropy rising at the offsets about 1 and 2 px away, those whose distance rounds to 1 and 2), the grid
  around the digit's whether the regulariser is drawn to the digit (lowest at offset 0).
- §4.3's accuracy of F(x) = G(DAE(x)) with the box there: what moving the box onto the digit changes in the output
  of the same G. G was trained on the crops f_loc made, so this likely understates what boxes that had moved in
  training would give.
Then how far f_loc's boxes follow the digits: per axis, the least-squares slope and the correlation of the box's
centre on the digit's, and their mean offset. Distances are in pixels; the differences "box on the digit minus box at
f_loc's centre" are paired by image, with a 95% t interval.

    python benchmarks/probes/dagan_boxes.py runs/dagan/digits/checkpoints/latest.pt
"""
import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.stats import format_difference, paired_difference  # noqa: E402
from common.data import load_data  # noqa: E402
from common.datasets import digits  # noqa: E402
from common.runs import load_run, scorers_of  # noqa: E402
from common.train import UsageError  # noqa: E402


def grid(radius, size):
    """Box centres every pixel within `radius` px of the image centre, (x, y) in kernels/boxmask's units (the image
    spans [-1, 1], so a pixel is 2 / size): G × 2."""
    steps = torch.arange(-radius, radius + 1, dtype=torch.float32) * 2 / size
    y, x = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], 1)


def cross_entropy_at(model, x, labels, centres):
    """The regulariser's cross-entropy per image with its one box at `centres` (B × 2)."""
    return F.cross_entropy(model.C(model.DAE.attend_at(x, centres[:, None])), labels, reduction="none")


def landscape(model, x, labels, centres):
    """B × G: the cross-entropy with the box at each of the G `centres` in turn (G × 2, or B × G × 2: each image's
    own)."""
    centres = centres.expand(len(x), -1, 2)
    return torch.stack([cross_entropy_at(model, x, labels, centres[:, g]) for g in range(centres.shape[1])], 1)


def distance_px(a, b, size):
    return (a - b).norm(dim=-1) * size / 2


def load(path):
    run = load_run(path, "dagan")
    if not run.args.dae or run.args.n_boxes != 1 or run.args.dataset != "digits":
        raise UsageError(f"{path}: needs a DA-GAN run with its one box (--dae True --n_boxes 1) on the digits, "
                         f"whose labelled digit's box is known")
    return run


def measure(model, args, scorers, radius=4, batch=100):
    """Per image of A's test set: the regulariser's cross-entropy and whether F's §4.3 prediction is right with the
    box at f_loc's centre, the image centre and the digit's centre (ce_*, right_*); the cross-entropy on a grid of
    offsets around f_loc's centre and around the digit's (around_*, B × G); f_loc's and the digit's centres."""
    testA = load_data("digits", args.img_size, seed=args.seed)["testA"]
    judge = digits.classifier(scorers, args.img_size, 0, torch.device("cpu"))  # the harness's: seed 0 for every run
    x_all = torch.stack([testA.get(i) for i in range(len(testA))])
    y_all = torch.tensor([testA.label(i) for i in range(len(testA))])
    points = grid(radius, args.img_size)
    out = {}
    with torch.no_grad():
        for start in range(0, len(testA), batch):
            x, y = x_all[start:start + batch], y_all[start:start + batch]
            at = dict(floc=model.DAE.boxes(x)[0][:, 0], centre=torch.zeros(len(x), 2),
                      digit=digits.true_centres(testA, range(start, start + len(x))))
            got = {"points": points, **at}
            for name, c in at.items():
                got[f"ce_{name}"] = cross_entropy_at(model, x, y, c)
                got[f"right_{name}"] = (judge(model.G(model.DAE.attend_at(x, c[:, None]))).argmax(1) == y).double()
            for name in ("floc", "digit"):
                got[f"around_{name}"] = landscape(model, x, y, at[name][:, None] + points)
            for k, v in got.items():
                out.setdefault(k, []).append(v)
    return {k: v[0] if k == "points" else torch.cat(v) for k, v in out.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--radius", type=int, default=4, help="the grids' reach around each centre, in px")
    opts = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    try:
        model, args, step = load(opts.checkpoint)
    except UsageError as e:
        sys.exit(f"error: {e}")
    got = measure(model, args, scorers_of(opts.checkpoint), opts.radius)
    size = args.img_size
    print(f"dagan, step {step}, seed {args.seed}, --box_size {args.box_size}: {len(got['digit'])} test images of A"
          + ("; --labels T: its classifier never learned A's labels" if args.labels == "T" else ""))
    print(f"{'box at':18} | distance from the digit (px) | regulariser's cross-entropy | F(x) accuracy (§4.3)")
    for name, label in (("floc", "f_loc's centre"), ("centre", "the image centre"), ("digit", "the digit's centre")):
        px = distance_px(got[name], got["digit"], size).mean()
        print(f"{label:18} | {px:28.2f} | {got[f'ce_{name}'].mean():27.3f} | {got[f'right_{name}'].mean():.3f}")

    def moved(key):  # the digit's centre minus f_loc's, paired by image
        return format_difference(paired_difference(*(dict(enumerate(got[f"{key}_{at}"].tolist()))
                                                     for at in ("digit", "floc"))))
    print(f"each box moved from f_loc's centre onto the digit's, paired by image, 95%: cross-entropy {moved('ce')}, "
          f"accuracy {moved('right')}")
    ring = (got["points"].norm(dim=1) * size / 2).round()
    for name, around in (("floc", "f_loc's centre"), ("digit", "the digit's centre")):
        mean = got[f"around_{name}"].mean(0)
        dx, dy = (got["points"][mean.argmin()] * size / 2).tolist()
        print(f"the cross-entropy averaged over the images, the box at {around} + an offset: lowest at ({dx:+.0f}, "
              f"{dy:+.0f}) px, {mean.min():.3f}; at 0, 1 and 2 px {mean[ring == 0].item():.3f}, "
              f"{mean[ring == 1].mean():.3f}, {mean[ring == 2].mean():.3f}")
    slope, correlation, offset = digits.follows(got["floc"], got["digit"])
    print(f"f_loc's centre against the digit's, x and y: slope {slope[0]:.2f}, {slope[1]:.2f}; correlation "
          f"{correlation[0]:.2f}, {correlation[1]:.2f}; mean offset {offset[0] * size / 2:+.1f}, "
          f"{offset[1] * size / 2:+.1f} px; sd across images: f_loc's {got['floc'].std(0).norm() * size / 2:.2f} px, "
          f"the digits' {got['digit'].std(0).norm() * size / 2:.2f} px")


if __name__ == "__main__":
    main()
