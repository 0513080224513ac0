"""The docs' figure of each paper: the script's CPU preset trained with seed 0, its last sample grid (input,
attention, output; for DA-GAN the boxes) copied to docs/figures/<script>.png.

    python benchmarks/figures.py                  # all five papers, one after another (about 30 minutes on 2 cores)
    python benchmarks/figures.py uait dagan       # some of them
    python benchmarks/figures.py ugatit -- --iteration 500   # flags after -- go to every script

Runs go to --out (runs/figures); a finished run there is picked up rather than trained again (--resume).
"""
import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAPERS = ("ugatit", "attentiongan", "uait", "guidegan", "dagan")


def figure(script, out, docs, extra):
    """Trains (or picks up) the script's run and copies its last sample grid; returns (figure, sample)."""
    command = [sys.executable, str(ROOT / f"{script}.py"), "--result_dir", str(out), "--resume", *extra]
    if subprocess.run(command).returncode != 0:
        sys.exit(f"{script}.py failed (its error is above): no figure written")
    run = max((out / script).glob("*/log.jsonl"), key=lambda p: p.stat().st_mtime).parent
    sample = sorted((run / "samples").glob("*.png"))[-1]
    docs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sample, docs / f"{script}.png")
    return docs / f"{script}.png", sample


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scripts", nargs="*", metavar="SCRIPT", help=f"any of {', '.join(PAPERS)} (default: all)")
    parser.add_argument("--out", type=Path, default=Path("runs/figures"), help="where the runs go")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs/figures", help="where the figures go")
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    unknown = [s for s in args.scripts if s not in PAPERS]
    if unknown:
        parser.error(f"no paper script {', '.join(unknown)}: choose from {', '.join(PAPERS)}")
    for script in args.scripts or PAPERS:
        written, sample = figure(script, args.out, args.docs, extra)
        print(f"{written}: {sample}")


if __name__ == "__main__":
    main()
