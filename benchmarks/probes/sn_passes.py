"""How much does it matter that ugatit.py's discriminator loss passes real and fake through D as one batch?
(docs/ugatit.md)

Spectral norm takes one power-iteration step per training forward. The authors' code passes real and fake
separately, so each of their discriminators takes two steps per D update where ours takes one (and one more each
in the generators' update, for both). This trains the shapes preset both ways from the same seed on the same images
and prints, every --every iterations: the worst relative error |σ̂/σ − 1| of the estimate σ̂ = uᵀWv against W's
true largest singular value, over all spectral-norm layers of the four discriminators, and the two runs' losses.

    python benchmarks/probes/sn_passes.py --steps 300 --every 50
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import ugatit  # noqa: E402
from common.blocks import SpectralNorm, lsgan  # noqa: E402
from common.datasets.shapes import ShapesDomain  # noqa: E402
from common.train import build_parser, seed_everything  # noqa: E402


class TwoPasses(ugatit.UGATIT):
    """The authors' discriminator loss: D(real), then D(fake), one power-iteration step each."""

    def d_loss(self, D, real, fake):
        (logit_r, cam_r, _), (logit_f, cam_f, _) = D(real), D(fake)
        loss = lsgan(logit_r, 1) + lsgan(logit_f, 0)
        if cam_r is not None:
            loss = loss + lsgan(cam_r, 1) + lsgan(cam_f, 0)
        return loss


def worst_sigma_error(model):
    errors = []
    for name in ("disGA", "disGB", "disLA", "disLB"):
        for m in model.nets[name].modules():
            if isinstance(m, SpectralNorm):
                W = m.weight.detach().flatten(1).double()
                estimate = m.weight_u.double() @ W @ m.weight_v.double()
                errors.append(abs(float(estimate / torch.linalg.matrix_norm(W, 2)) - 1))
    return max(errors)


def main():
    bench = argparse.ArgumentParser()
    bench.add_argument("--steps", type=int, default=300)
    bench.add_argument("--every", type=int, default=50)
    bench.add_argument("--seed", type=int, default=0)
    opts = bench.parse_args()
    parser = build_parser("ugatit", "", ugatit.DEFAULTS)
    ugatit.add_arguments(parser)
    args = parser.parse_args([])
    args.__dict__.update(ugatit.CPU_PRESET)
    A, B = (ShapesDomain(d, "train", args.img_size) for d in "AB")
    runs = {}
    for label, cls in (("one batch (ours)", ugatit.UGATIT), ("two passes (authors')", TwoPasses)):
        seed_everything(opts.seed)
        runs[label] = cls(args, torch.device("cpu"))
    print(f"shapes preset, seed {opts.seed}; worst |σ̂/σ − 1| over the discriminators' spectral-norm layers, "
          f"then D and G_adv")
    print("iteration | " + " | ".join(runs))
    for step in range(1, opts.steps + 1):
        i = (step - 1) % len(A)
        real_A, real_B = A[i][None], B[(7 * i) % len(B)][None]
        losses = {label: model.train_step(real_A, real_B) for label, model in runs.items()}
        if step == 1 or step % opts.every == 0:
            print(f"{step} | " + " | ".join(f"{worst_sigma_error(m):.2e}, D {float(losses[k]['D']):.3f}, "
                                            f"G_adv {float(losses[k]['G_adv']):.3f}" for k, m in runs.items()))


if __name__ == "__main__":
    main()
