"""Does D's map change what a trained GuideGAN generator produces, and does it help? (docs/guidegan.md;
docs/exercises.md: GuideGAN 2 and 3)

For every finished run under the given folders (e.g. the ablation runner's), the same trained networks translate the
test set twice: as `translate` does, with D's map (y1 of Eq. 1), and with the all-ones map in its place (y0, what G
makes unguided). Prints per attention row the scores of both, their difference paired by seed with a 95% t interval,
and the mean |y1 - y0| on [-1, 1] (0: the map changes nothing).

    python benchmarks/probes/guidegan_map.py runs/ablation/guidegan
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.stats import format_difference, format_mean_sd, paired_difference  # noqa: E402
from common.data import load_data  # noqa: E402
from common.datasets import shapes_paired  # noqa: E402
from common.runs import load_run, scorers_of  # noqa: E402
from common.train import evaluating  # noqa: E402


def measure(path, device):
    """None for a run without attention or not finished; else (run args, the scores with D's map, the scores with
    the all-ones map, mean |y1 - y0| per direction)."""
    model, args, step = load_run(path, "guidegan", device)
    if args.attention == "none" or step < args.iteration:
        return None  # no map to take away, or not finished
    data = load_data(args.dataset, args.img_size, root=args.data_root, seed=args.seed, paired=True)
    nets = {"A2B": (model.G_X, model.D_Y), "B2A": (model.G_Y, model.D_X)}
    change = {d: [] for d in nets}

    def guided(x, direction):
        y0, _, M, y1 = model.eq1(*nets[direction], x)
        change[direction].append((y1 - y0).abs().mean((1, 2, 3)))
        return y1, M

    scorers = scorers_of(path)  # the segmenter the run was scored with
    with evaluating(model):
        with_map = shapes_paired.report(guided, data, device, scorers)
        ones = shapes_paired.report(lambda x, d: (model.unguided(nets[d][0], x), None), data, device, scorers)
    return args, with_map, ones, {d: torch.cat(v).mean().item() for d, v in change.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path,
                        help="folders holding finished guidegan runs, or one run's folder, "
                             "<result_dir>/guidegan/shapes_paired")
    folders = parser.parse_args().folders
    runs = sorted(p for f in folders for p in f.resolve().glob("**/checkpoints/latest.pt")
                  if p.parts[-4:-2] == ("guidegan", "shapes_paired"))
    rows = {}  # row folder -> seed -> (with map, all ones, change)
    for path in runs:
        if measured := measure(path, "cpu"):
            args, with_map, ones, change = measured
            rows.setdefault(path.parents[4].name, {})[args.seed] = (with_map, ones, change)
    if not rows:
        sys.exit(f"error: no finished guidegan run with attention under {', '.join(map(str, folders))}")
    some_report = next(iter(next(iter(rows.values())).values()))[0]
    for direction in ("A2B", "B2A"):
        metrics = [k.split("/")[1] for k in some_report if k.startswith(direction + "/")]
        print(f"\n### {direction}: D's map (y1) against the all-ones map (y0), the same trained networks\n")
        print("| row | n | " + " | ".join(f"{m}: map | ones | map − ones" for m in metrics) + " | mean abs(y1 − y0) |")
        print("|---" * (3 * len(metrics) + 3) + "|")
        for row, seeds in rows.items():
            cells = []
            for m in metrics:
                key = f"{direction}/{m}"
                got = {s: r[0][key] for s, r in seeds.items()}
                base = {s: r[1][key] for s, r in seeds.items()}
                cells.append(f"{format_mean_sd(list(got.values()))} | {format_mean_sd(list(base.values()))} | "
                             f"{format_difference(paired_difference(got, base))}")
            changes = [r[2][direction] for r in seeds.values()]
            print(f"| {row} | {len(seeds)} | " + " | ".join(cells) + f" | {format_mean_sd(changes)} |")


if __name__ == "__main__":
    main()
