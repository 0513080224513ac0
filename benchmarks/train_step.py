"""Seconds per training iteration and peak memory of one paper's train_step, on random images.

    python benchmarks/train_step.py ugatit --light True --img_size 128      # U-GAT-IT light, 128 px, ch 64
    python benchmarks/train_step.py ugatit --img_size 128                   # full
    python benchmarks/train_step.py ugatit --light True --img_size 128 --amp bf16   # under bf16 autocast

Takes the paper script's own flags (defaults are the paper's). Prints the mean and min over --steps iterations
after --warmup, the process's peak resident memory (ru_maxrss, CPU) and, on CUDA, the peak allocated GPU memory;
with --row, one markdown table row instead (benchmarks/gpu_check.sh).
"""
import argparse
import importlib
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.train import build_parser, choose_device, seed_everything  # noqa: E402


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    paper = importlib.import_module(argv[0])
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--steps", type=int, default=5)
    extra.add_argument("--warmup", type=int, default=2)
    extra.add_argument("--row", action="store_true")
    bench, rest = extra.parse_known_args(argv[1:])
    parser = build_parser(argv[0], "", paper.DEFAULTS)
    paper.add_arguments(parser)
    args = parser.parse_args(rest)
    device = choose_device(args.device)
    torch.set_flush_denormal(True)  # as the scripts run (common/train.py)
    seed_everything(args.seed)
    model = paper.make_model(args, device)
    shape = (args.batch_size, 3, args.img_size, args.img_size)
    real_A, real_B = torch.rand(shape, device=device) * 2 - 1, torch.rand(shape, device=device) * 2 - 1
    batch = [real_A, real_B]
    if getattr(model, "batch_info", False):  # DA-GAN's labels
        label = torch.randint(10, (args.batch_size,), device=device)
        batch.append({"label_A": label, "label_B": label})
    times = []
    for i in range(bench.warmup + bench.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with model.amp.autocast():  # as common.train runs it
            losses = model.train_step(*batch)
        float(sum(losses.values()))
        times.append(time.perf_counter() - t)
    times = times[bench.warmup:]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    params = sum(p.numel() for net in model.nets.values() for p in net.parameters())
    if bench.row:
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else rss
        print(f"| {argv[0]} {' '.join(rest)} | {params / 1e6:.1f}M | {sum(times) / len(times):.3f} | {min(times):.3f} | "
              f"{peak:.2f} |")
        return
    print(f"{argv[0]} {' '.join(rest)}  [{device}, {torch.get_num_threads()} threads, {params / 1e6:.1f}M params]")
    print(f"  s/iteration: mean {sum(times) / len(times):.3f}  min {min(times):.3f}  (over {len(times)})")
    print(f"  peak RSS: {rss:.2f} GiB" + (f"  peak CUDA allocated: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
                                         if device.type == "cuda" else ""))


if __name__ == "__main__":
    main()
