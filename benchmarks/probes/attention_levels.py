"""How strongly does a trained model attend inside the object and outside it? (docs/uait.md, docs/attentiongan.md,
docs/evaluation.md; docs/exercises.md: UAIT 1 and 5, AttentionGAN 2 and 4)

On the shapes test sets: the mean of its attention map (on [0, 1], as the evaluation puts it) over object pixels and
over background pixels, and the fraction of object pixels above 0.5 (what the evaluation's IoU marks). A map can rank
every object pixel above every background one (AUC 1) and still mark none of them: this says by how much it falls
short.

For the scripts whose output is a blend, y = x + a·(C − x) with content C in [−1, 1] (UAIT's Eq. 1; AttentionGAN's
Eqs. 1-2, a the foreground's mass), it also prints the map's floor inside the object and outside: the smallest a
with which any C in that range gives the same y. A map at its floor (map / floor 1) is as small as the generator's
tanh lets it be: the translation comes from C at the edge of its range, not from the map. Far above its floor, C
lies close to x and the map matters little to y. Beside them, the floor of a perfect translation (each object pixel
turned into the mean colour of the other domain's objects): where that is below 0.5, a map at its floor cannot mark
the object at the evaluation's threshold however well it translates.

    python benchmarks/probes/attention_levels.py uait runs/uait/shapes/checkpoints/latest.pt
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common.datasets.shapes import ShapesDomain  # noqa: E402
from common.metrics import on_scale  # noqa: E402
from common.runs import load_run  # noqa: E402
from common.train import UsageError  # noqa: E402


BLENDS = ("uait", "attentiongan")


def floor(x, y):
    """Per pixel, max over channels of |y − x| / (1 − x) where y > x and / (1 + x) where y < x: the room C − x has
    towards the bound that y moves to."""
    delta = y - x
    room = torch.where(delta > 0, 1 - x, 1 + x).clamp(min=1e-6)
    return (delta.abs() / room).amax(1, keepdim=True)


def objects(side, img_size, count):
    domain = ShapesDomain(side, "test", img_size)
    x = torch.stack([domain.get(i) for i in range(count)])
    return x, torch.stack([domain.mask(i) for i in range(count)]) > 0.5


def levels(model, direction, img_size, blend, count=100):
    """The map's mean inside the object, outside, the share of object pixels above 0.5; for a blend, the floor's
    mean and the median of map / floor inside and outside, and a perfect translation's floor: each object pixel
    turned into the mean colour of the other domain's test objects."""
    x, inside = objects(direction[0], img_size, count)
    with torch.no_grad():
        y, attention = model.translate(x, direction)
    if attention is None:
        return None
    a = on_scale(F.interpolate(attention.float(), size=inside.shape[-2:], mode="bilinear"), model.attention_scale)
    got = dict(inside=a[inside].mean(), outside=a[~inside].mean(), marked=(a[inside] > 0.5).double().mean())
    if blend:
        f = floor(x, y.float())
        other, other_inside = objects(direction[2], img_size, count)
        colour = other.movedim(1, -1)[other_inside[:, 0]].mean(0).view(1, 3, 1, 1)
        perfect = floor(x, torch.where(inside, colour, x))[inside]
        for name, where in (("inside", inside), ("outside", ~inside)):
            got[f"floor_{name}"] = f[where].mean()
            got[f"ratio_{name}"] = (a[where] / f[where].clamp(min=1e-6)).median()
        got.update(perfect=perfect.mean(), perfect_marked=(perfect > 0.5).double().mean())
    return {k: float(v) for k, v in got.items()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("script", choices=("ugatit", "attentiongan", "uait", "dagan"))
    p.add_argument("checkpoint")
    opts = p.parse_args()
    try:
        model, args, step = load_run(opts.checkpoint, opts.script)
    except UsageError as e:
        sys.exit(f"error: {e}")
    blend = opts.script in BLENDS
    print(f"{opts.script}, step {step}: attention inside the object | outside | object pixels above 0.5")
    for direction in ("A2B", "B2A"):
        got = levels(model, direction, args.img_size, blend)
        print(f"{direction}: " + ("no attention" if got is None else
                                  "{inside:.3f} | {outside:.3f} | {marked:.3f}".format(**got)))
        if blend and got is not None:
            print(f"{direction} floor: inside the object {got['floor_inside']:.3f} (map / floor "
                  f"{got['ratio_inside']:.2f}), outside {got['floor_outside']:.3f} (map / floor "
                  f"{got['ratio_outside']:.2f}); a perfect translation's inside {got['perfect']:.3f}, "
                  f"{got['perfect_marked']:.0%} of object pixels above 0.5")


if __name__ == "__main__":
    main()
