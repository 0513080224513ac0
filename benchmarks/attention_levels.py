"""How strongly a trained model attends inside the object and outside it, on the shapes test sets: the mean of its
attention map (on [0, 1], as the evaluation puts it) over object pixels and over background pixels, and the
fraction of object pixels above 0.5 (what the evaluation's IoU marks). A map can rank every object pixel above every
background one (AUC 1) and still mark none of them: this says by how much it falls short.

    python benchmarks/attention_levels.py uait runs/uait/shapes/checkpoints/latest.pt
"""
import argparse
import importlib
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.metrics import on_scale  # noqa: E402
from common.shapes import ShapesDomain  # noqa: E402
from common.train import UsageError, build_parser, load_checkpoint, load_nets, our_nets  # noqa: E402


def levels(model, direction, img_size, count=100):
    domain = ShapesDomain(direction[0], "test", img_size)
    x = torch.stack([domain.get(i) for i in range(count)])
    inside = torch.stack([domain.mask(i) for i in range(count)]) > 0.5
    with torch.no_grad():
        attention = model.translate(x, direction)[1]
    if attention is None:
        return None
    a = on_scale(F.interpolate(attention.float(), size=inside.shape[-2:], mode="bilinear"), model.attention_scale)
    return float(a[inside].mean()), float(a[~inside].mean()), float((a[inside] > 0.5).double().mean())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("script", choices=("ugatit", "attentiongan", "uait", "dagan"))
    p.add_argument("checkpoint")
    opts = p.parse_args()
    paper = importlib.import_module(opts.script)
    try:
        state = load_checkpoint(opts.checkpoint)
        nets = our_nets(state)
        if nets is None:
            raise UsageError(f"{opts.checkpoint}: not one of our checkpoints")
        parser = build_parser(opts.script, "", paper.DEFAULTS)
        paper.add_arguments(parser)
        args = parser.parse_args([])
        args.__dict__.update(state["args"])
        model = paper.make_model(args, torch.device("cpu"))
        load_nets(model.nets, nets, opts.checkpoint)
    except UsageError as e:
        sys.exit(f"error: {e}")
    for net in model.nets.values():
        net.eval()
    print(f"{opts.script}, step {state['step']}: attention inside the object | outside | object pixels above 0.5")
    for direction in ("A2B", "B2A"):
        got = levels(model, direction, args.img_size)
        print(f"{direction}: " + ("no attention" if got is None else "{:.3f} | {:.3f} | {:.3f}".format(*got)))


if __name__ == "__main__":
    main()
