"""How fast does the FID Inception (common/fid.py) extract features, in images per second? (docs/evaluation.md)

    python benchmarks/probes/fid_features.py [--n 100] [--batch_size 50] [--img_size 256] [--device cpu]

Random weights stand in for the real file (the speed does not depend on the values), loaded as a user's file is;
the images are random, at the papers' 256 px, resized by the network to 299 as for KID and FID. Prints the torch
thread count beside the result.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common.fid import FIDInception, features, load_inception  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--batch_size", type=int, default=50)
    p.add_argument("--img_size", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as folder:  # through load_inception, as a user's weights go
        torch.save(FIDInception().state_dict(), Path(folder) / "random.pth")
        net = load_inception(Path(folder) / "random.pth", args.device)
    images = torch.rand(args.n, 3, args.img_size, args.img_size) * 2 - 1
    features(net, images[: min(args.n, args.batch_size)], args.batch_size)  # warm-up (allocator, cuDNN)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    features(net, images, args.batch_size)  # returns on the CPU, so the GPU is done when it returns
    seconds = time.perf_counter() - start
    print(f"{args.n} images of {args.img_size} px, batch {args.batch_size}, {args.device} "
          f"({torch.get_num_threads()} threads): {seconds:.1f} s, {args.n / seconds:.1f} images/s")


if __name__ == "__main__":
    main()
