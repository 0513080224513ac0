"""The harness every paper script hands its model to: CLI, data, device, the training loop, checkpoints, samples,
the JSONL log and the test phase. Nothing here is in any paper; a paper file holds its networks, losses and
`train_step`, and ends with `main(...)`.

The model interface: every attribute the harness (and an embedded set's report, common/datasets/) reads.
    attribute        kind      what for
    nets             required  dict name -> nn.Module: saved and loaded under these names, put in eval mode to evaluate
    optimizers       required  dict name -> torch.optim.Optimizer: saved, given the learning-rate schedule
    train_step       required  (real_A, real_B) -> dict of scalar loss tensors: one iteration, every update of the paper
    translate        required  (x, direction) -> (image, attention map or None), direction "A2B" or "B2A": samples,
                               the test phase and the evaluation
    amp              required  a common.amp.Precision: the autocast around train_step, its loss scales saved
    attention_scale  required  "probability" or "unbounded": how the evaluation puts the attention map on [0, 1]
                               (common.metrics.on_scale)
    pools            optional  dict name -> ImagePool (common.blocks), or any training state with state_dict and
                               load_state_dict: saved with the checkpoint
    visuals          optional  (x, direction) -> list of N×C×H×W tiles in [-1, 1] (C = 3 or 1), the last the
                               translation: shown in samples and the test phase instead of input | attention | output
    directions       optional  the directions it translates, if not both: ("A2B",) for DA-GAN, which learns one
    paired           optional  True: train on paired data, trainA[i] with trainB[i] (supervised GuideGAN)
    batch_info       optional  True: train_step(real_A, real_B, info), info holding each image's label (-1 for none)
                               as tensors "label_A", "label_B" (DA-GAN)
    boxes            optional  x -> the boxes' centres and half-sizes, or None: the digits report scores where they sit
                               (DA-GAN)
    progress         set       the fraction of --iteration done, set before each train_step: the papers' schedules in
                               epochs ("switch at epoch 30 of 100") follow it, and so scale with the length of the run

Runs live in <result_dir>/<model>/<dataset>/: checkpoints/latest.pt and previous.pt (common.checkpoints), samples/,
log.jsonl, test/, the run's page index.html with losses.png and run.json (common.report), and .lock, held by the
process that uses the folder.
Exact resume: a training batch is a pure function of (--seed, step) (common.data.UnpairedSteps), and a checkpoint
holds the networks, the optimizers, the learning-rate schedule, the step and the RNG states.
"""
import argparse
import contextlib
import inspect
import json
import math
import os
import random
import shlex
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common import checkpoints, distributed
from common.data import DataError, FolderDomain, UnpairedSteps, download_cyclegan, load_data
from common.datasets import EMBEDDED, embedded
from common.images import grid, overlay
from common.report import record_session, replacing, run_page, test_page


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def str2bool(value):
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def add_bool(parser, flag, default, help):
    """A boolean flag as the authors' scripts take it: bare (`--light`) or with a value (`--light False`)."""
    parser.add_argument(flag, type=str2bool, nargs="?", const=True, default=default,
                        help=help if default is None else f"{help} (default {default})")


def add_default(parser, defaults, flag, type, help, **kw):
    """A flag whose default, and where that default comes from, a paper file's DEFAULTS gives (flag -> (value,
    source)), so that --help names the source. `kw` goes to argparse (choices=...)."""
    value, source = defaults[flag.lstrip("-")]
    parser.add_argument(flag, type=type, default=value, help=f"{help} (default {value}: {source})", **kw)


def build_parser(name, description, defaults):
    """The flags shared by all five scripts, spelled as in the authors' U-GAT-IT code. `defaults` maps a flag to
    (value, where the value comes from); the paper file gives these, so each help says its source."""
    p = argparse.ArgumentParser(prog=f"python {name}.py", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)

    def arg(flag, type, help):
        add_default(p, defaults, flag, type, help)

    p.add_argument("--dataset", "--data", default=None,
                   help="'shapes', 'shapes_paired' or 'digits' (embedded, no download), a name under --data_root "
                        "(selfie2anime, horse2zebra, ...), or a folder holding trainA/ trainB/ testA/ testB/ "
                        "(default: the script's embedded data with a small CPU preset)")
    p.add_argument("--data_root", default="dataset", help="where named data sets live, as in the authors' code "
                                                           "(default dataset/)")
    add_bool(p, "--download", False, "download a CycleGAN data set (horse2zebra, apple2orange, ...) if missing")
    p.add_argument("--download_url", default=None, help="a mirror of the CycleGAN data sets' folder (default "
                   "$ATTNGAN_DOWNLOAD_URL, else the authors' server)")
    p.add_argument("--phase", choices=("train", "test"), default="train", help="train, or translate the test "
                   "sets with the latest checkpoint (default train)")
    if "epochs" in defaults:
        arg("--epochs", int, "training epochs (one epoch: the larger training set once), when --iteration is not "
                             "given")
    arg("--iteration", int, "training iterations")
    if "decay_epoch" in defaults:
        arg("--decay_epoch", int, "epoch from which the learning rate decays linearly to 0 (as a fraction of --epochs, "
                                  "so it scales with --iteration)")
    arg("--batch_size", int, "images per domain per iteration")
    arg("--print_freq", int, "write a sample grid every N iterations")
    arg("--save_freq", int, "write a checkpoint every N iterations (and on Ctrl-C)")
    p.add_argument("--log_freq", type=int, default=10, help="write a log.jsonl line every N iterations (default 10)")
    add_bool(p, "--decay_flag", defaults["decay_flag"][0],
             f"decay the learning rate linearly to 0 at the end ({defaults['decay_flag'][1]})")
    arg("--lr", float, "Adam learning rate")
    arg("--weight_decay", float, "Adam weight decay")
    arg("--img_size", int, "training crop size S (images are resized to 286/256 of S first)")
    p.add_argument("--result_dir", default="runs", help="runs go to <result_dir>/<model>/<dataset>/ (default runs)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps "
                                                     "(default auto)")
    add_bool(p, "--resume", False, "continue from <run>/checkpoints/latest.pt")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights, the data order and the augmentation "
                                                       "(default 0)")
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off",
                   help="mixed precision for training (common.amp): bf16, fp16 with loss scaling, or off, the papers' "
                        "float32 (default off, on every device)")
    add_bool(p, "--deterministic", False, "on CUDA: deterministic algorithms, so that --resume continues bit for bit, "
             "at some speed (without it cuDNN benchmarks each conv's algorithm and picks the fastest; see docs/training.md)")
    p.add_argument("--kernels", choices=("auto", "torch", "triton"), default=None,
                   help="fused ops: Triton kernels or the PyTorch references (sets ATTNGAN_KERNELS; default auto: "
                        "Triton on CUDA)")
    p.add_argument("--input", default=None, help="test phase: translate this image file or folder instead of the "
                                                 "test sets")
    p.add_argument("--direction", choices=("A2B", "B2A"), default="A2B", help="direction for --input (default A2B)")
    p.add_argument("--fid_weights", default=None, help="test phase: the FID Inception's weights for KID and FID "
                   "(default $ATTNGAN_FID_WEIGHTS, else the torch hub cache, else downloaded there; see common/fid.py)")
    return p


def given(argv, parser, dest):
    """Whether the user typed the flag for `dest` (any alias, `--flag value` or `--flag=value`)."""
    flags = next(a.option_strings for a in parser._actions if a.dest == dest)
    return any(tok == f or tok.startswith(f + "=") for tok in argv for f in flags)


def parse_args(parser, argv, preset):
    """With no --dataset: the preset's embedded data (`shapes` unless it names another) and `preset` for every flag
    the user did not type."""
    args = parser.parse_args(argv)
    if args.dataset is None:
        args.dataset = preset.get("dataset", "shapes")
        for dest, value in preset.items():
            if dest != "dataset" and not given(argv, parser, dest):
                setattr(args, dest, value)
    if args.input is not None and args.phase != "test":
        raise UsageError("--input translates images with a trained model: use it with --phase test")
    if args.img_size < 32:
        raise UsageError(f"--img_size {args.img_size}: use 32 or more (64 and up is what the papers' networks suit)")
    if args.img_size % 4:
        raise UsageError(f"--img_size {args.img_size}: use a multiple of 4 (the generators halve it twice and double "
                         f"it back)")
    if args.img_size > MAX_IMG_SIZE:
        raise UsageError(f"--img_size {args.img_size}: at most {MAX_IMG_SIZE} (the papers train at 256 or less)")
    for action in parser._actions:
        value = getattr(args, action.dest, None)  # --iteration may come from --epochs later
        if action.type not in (int, float) or value is None:
            continue
        flag = action.option_strings[0]
        if not math.isfinite(value) or value < 0:
            raise UsageError(f"{flag} {value}: must be a finite number, 0 or more")
        if (action.dest in COUNTS and value < 1) or (action.dest == "lr" and value == 0):
            raise UsageError(f"{flag} {value}: must be {'at least 1' if action.dest in COUNTS else 'above 0'}")
    return args


MAX_IMG_SIZE = 2048
# Integer flags that must be at least 1 (every number flag must be finite and 0 or more, --lr above 0).
COUNTS = ("iteration", "epochs", "batch_size", "print_freq", "save_freq", "log_freq", "ch", "ngf", "ndf", "n_res",
          "n_dis", "n_masks", "n_boxes")


def choose_device(name):
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name}: use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: this torch sees no CUDA GPU (use --device cpu, or install a CUDA build)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available here (use --device cpu)")
    return device


def cuda_settings(deterministic):
    """cuDNN's autotuner by default: it times each conv shape's algorithms once and keeps the fastest, which may
    differ from run to run, as may the atomics of some backward kernels. --deterministic trades that speed for
    repeatable steps: deterministic cuDNN and cuBLAS (its workspace setting must precede the first cuBLAS call)
    and PyTorch's deterministic kernels; an op that has none on CUDA runs as before, with PyTorch's warning naming
    it, rather than stopping the run."""
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(iteration, decay, decay_from=0.5):
    """Constant until the fraction `decay_from` of the run, then linear towards 0 (U-GAT-IT §B.2 and CycleGAN: half;
    GuideGAN: 100 of 150 epochs). Iteration `step` (from 0) uses the factor; the last one gets 1/(iteration − first),
    not 0. U-GAT-IT's released code is one iteration ahead (its factor at `step` is ours at step + 1), so its last
    update has lr 0 and changes nothing."""
    first = int(iteration * decay_from)

    def factor(step):
        if not decay or step < first:
            return 1.0
        return max(0.0, (iteration - step) / max(1, iteration - first))
    return factor


# --- checkpoints -----------------------------------------------------------------------------------------------

def rng_state():
    _, keys, pos, _, _ = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": keys.tolist(), "numpy_pos": int(pos),
             "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, model, schedulers, step, args):
    """Everything an exact resume needs (common.checkpoints: atomic, the one before kept as previous.pt)."""
    checkpoints.save(path, {"step": step, "args": vars(args),
                            "nets": {k: m.state_dict() for k, m in model.nets.items()},
                            "optimizers": {k: o.state_dict() for k, o in model.optimizers.items()},
                            "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
                            "pools": {k: p.state_dict() for k, p in getattr(model, "pools", {}).items()},
                            "amp": model.amp.state_dict(),
                            "rng": rng_state()})


def load_checkpoint(path):
    """A torch file's contents (weights only, CRC-checked), or a one-line UsageError naming it."""
    try:
        return checkpoints.read(path)
    except checkpoints.CheckpointError as e:
        raise UsageError(str(e)) from None


def our_nets(state):
    """The networks of one of our checkpoints, or None for anything else (the authors' weights, say)."""
    return state["nets"] if isinstance(state, dict) and isinstance(state.get("nets"), dict) else None


def load_nets(nets, saved, path):
    """Load state dicts, or name every key that does not fit: a checkpoint of another configuration."""
    problems = [f"{name} unexpected" for name in saved if name not in nets]
    for name, net in nets.items():
        ours, theirs = net.state_dict(), saved.get(name, {})
        problems += [f"{name}.{k} missing" for k in ours if k not in theirs]
        problems += [f"{name}.{k} unexpected" for k in theirs if k not in ours]
        problems += [f"{name}.{k} {tuple(theirs[k].shape)} vs {tuple(v.shape)} here" for k, v in ours.items()
                     if k in theirs and theirs[k].shape != v.shape]
    if problems:
        shown = ", ".join(problems[:6]) + (f" and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise UsageError(f"{path} was written by another configuration ({shown}); use the flags it was trained "
                         f"with, or another --result_dir")
    for name, net in nets.items():
        net.load_state_dict(saved[name])


# --- the run ---------------------------------------------------------------------------------------------------

class Run:
    def __init__(self, args, model_name, new_lr=None, command=None):
        self.command = command  # the command line, for the run's page
        self.root = Path(args.result_dir) / model_name / Path(args.dataset).name
        self.checkpoint = self.root / "checkpoints" / "latest.pt"
        self.samples = self.root / "samples"
        self.log = self.root / "log.jsonl"
        self.test = self.root / "test"
        self.new_lr = new_lr  # an --lr typed on the command line, which a --resume then uses
        for folder in (self.root, *self.root.parents):
            if folder.exists() and not folder.is_dir():
                raise UsageError(f"--result_dir {args.result_dir}: {folder} is a file, not a folder")

    def evaluated(self, step):
        """Whether the log holds the evaluation at `step`."""
        return self.log.exists() and any('"eval"' in line and json.loads(line).get("step") == step
                                         for line in self.log.read_text().splitlines())

    def write_log(self, record):
        with open(self.log, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_log(self, step):
        """On resume, drop lines for steps after the checkpoint (they will be run again), and a line cut short
        by a crash in the middle of writing it."""
        def kept(line):
            try:
                return json.loads(line).get("step", 0) <= step
            except json.JSONDecodeError:
                return False
        if self.log.exists():
            keep = [l for l in self.log.read_text().splitlines() if kept(l)]
            tmp = self.log.with_suffix(".tmp")
            tmp.write_text("".join(l + "\n" for l in keep))
            os.replace(tmp, self.log)


@contextlib.contextmanager
def evaluating(model):
    """Every network in eval mode (dropout off, batch norm on its running statistics, which then stay as they are),
    no gradients, and every RNG put back afterwards: an evaluation or a sample grid in the middle of training leaves
    the training exactly where it was, and scores what `--phase test` scores with the same weights."""
    modes = [(m, m.training) for net in model.nets.values() for m in net.modules()]
    state = rng_state()
    try:
        for net in model.nets.values():
            net.eval()
        with torch.no_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training
        set_rng_state(state)


def panels(model, x, direction):
    """The tiles shown for a batch x: the model's own `visuals`, or input | attention over the input | output.
    Returns the translation too (the last tile)."""
    if hasattr(model, "visuals"):
        tiles = model.visuals(x, direction)
        return tiles, tiles[-1]
    y, att = model.translate(x, direction)
    return [x, torch.stack([overlay(x[i], att[i]) for i in range(len(x))]) if att is not None else x, y], y


def directions(model):
    return getattr(model, "directions", ("A2B", "B2A"))


def columns(model):
    """What the sample grids' and the test images' columns show, for the run's page: the model's `visuals` docstring
    names its tiles (its first sentence), else the panels above."""
    tiles = "input | attention over the input | output"
    if hasattr(model, "visuals"):
        tiles = " ".join(inspect.getdoc(model.visuals).split("\n\n")[0].split()).rstrip(".")
    if len(directions(model)) == 1:
        return {"samples": f"Rows: test images of A translated to B. Columns: {tiles}", "test": tiles}
    return {"samples": f"Rows: test images of A translated to B, then of B translated to A. Columns: {tiles} | "
                       f"translated back", "test": tiles}


def sample_grid(model, A, B, device, n=4):
    """A row per image, n of each domain it translates: its panels, then (for a model that translates both ways)
    the translation translated back."""
    rows = []
    for domain, direction, back in ((A, "A2B", "B2A"), (B, "B2A", "A2B")):
        if direction not in directions(model):
            continue
        x = torch.stack([domain.get(i) for i in range(min(n, len(domain)))]).to(device)
        tiles, y = panels(model, x, direction)
        if back in directions(model):
            tiles = tiles + [model.translate(y, back)[0]]
        rows += [[t[i] for t in tiles] for i in range(len(x))]
    return grid(rows)


class Stopped(BaseException):
    """The run ends on a signal; main exits with 128 + its number, as a shell reports a signalled process.
    A BaseException, as KeyboardInterrupt: the signal lands in whatever line is running, and the `except Exception`
    that treats an undecodable image or a failed download as such must not take it for one."""

    def __init__(self, signum, message):
        super().__init__(message)
        self.signum = signum


class StopFlag:
    """SIGINT (Ctrl-C), SIGTERM (a scheduler's preemption), SIGHUP (a closed terminal). The first: finish the current
    iteration, save, stop. The second, or any outside the training loop (`at_once`): stop at once, without saving
    (the last checkpoint stays)."""
    SIGNALS = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]

    def __init__(self, checkpoint):
        self.checkpoint, self.signum, self.at_once = checkpoint, None, False

    def __enter__(self):
        self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        return self

    def handle(self, signum, _):
        name = signal.Signals(signum).name
        if self.signum is not None or self.at_once:
            raise Stopped(signum, f"{name}: stopped without saving; --resume continues from the last checkpoint "
                                  f"({self.checkpoint})")
        self.signum = signum
        tqdm.write(f"{name}: saving after this iteration (again to quit without saving)")

    def __exit__(self, *_):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def restore(model, schedulers, state, run, lr):
    """Put a checkpoint back. An --lr typed with --resume replaces the checkpoint's (every optimizer's rate and
    schedule scaled by the same factor), so that a run stopped by a NaN can go on more slowly."""
    load_nets(model.nets, state["nets"], run.checkpoint)
    for part, objects in (("optimizers", model.optimizers), ("schedulers", schedulers),
                          ("pools", getattr(model, "pools", {}))):
        if set(state[part]) != set(objects):
            raise UsageError(f"{run.checkpoint} was written by another configuration ({part} "
                             f"{sorted(state[part])} vs {sorted(objects)} here); use the flags it was trained with")
        for k, o in objects.items():
            o.load_state_dict(state[part][k])
    model.amp.load_state_dict(state.get("amp", {}))
    set_rng_state(state["rng"])
    old = state["args"]["lr"]
    if lr is not None and lr != old:
        for k, o in model.optimizers.items():
            s = schedulers[k]
            s.base_lrs = [lr if b == old else b * lr / old for b in s.base_lrs]
            for group, base, factor in zip(o.param_groups, s.base_lrs, s.lr_lambdas):
                group["initial_lr"], group["lr"] = base, base * factor(s.last_epoch)
        print(f"--lr {lr}: training on with it instead of the checkpoint's {old}")


def train(model, args, data, run, device):
    decay_from = args.decay_epoch / args.epochs if hasattr(args, "decay_epoch") else 0.5
    schedulers = {k: torch.optim.lr_scheduler.LambdaLR(o, lr_factor(args.iteration, args.decay_flag, decay_from))
                  for k, o in model.optimizers.items()}
    start = 0  # the first step: 0, or the checkpoint's
    if args.resume and checkpoints.exists(run.checkpoint):
        state = resume_state(run)
        restore(model, schedulers, state, run, run.new_lr)
        start = state["step"]
        print(f"resumed from {run.checkpoint} at iteration {start}")
    elif checkpoints.exists(run.checkpoint):
        raise UsageError(f"{run.checkpoint} exists: add --resume to continue that run, or choose another "
                         f"--result_dir to start a new one")
    elif args.resume:
        print(f"--resume: no checkpoint at {run.checkpoint} yet; starting at iteration 0")
    lead = distributed.rank() == 0  # the rank that writes (common.distributed)
    if lead:
        run.truncate_log(start)  # lines past the checkpoint, or of a run killed before its first checkpoint
        with page_writing(run):
            record_session(run.root, run.command, columns(model), vars(args))
        if start:
            write_pages(run, curves=False)  # a run from before the pages gets its page here
    if start >= args.iteration:
        print(f"already at iteration {start} of --iteration {args.iteration}: nothing to train")
        if lead and args.dataset in EMBEDDED and not run.evaluated(start):
            print("its evaluation is missing (stopped during it?): evaluating now")
            with StopFlag(run.checkpoint) as stop:
                stop.at_once = True
                evaluate(model, args, data, run, start, device)
            write_pages(run, curves=False)
        return

    with_info = getattr(model, "batch_info", False)
    steps = UnpairedSteps(data["trainA"], data["trainB"], seed=args.seed, paired=getattr(model, "paired", False),
                          info=with_info)
    workers = min(4, (os.cpu_count() or 1) // 2) if device.type == "cuda" else 0
    if distributed.rank() > 0:  # its own dropout and pool draws (common.distributed)
        seed_everything(args.seed + 7919 * distributed.rank() + start)
    loader = torch.utils.data.DataLoader(steps, batch_size=args.batch_size, num_workers=workers,
                                         sampler=distributed.Shard(start, args.iteration, args.batch_size),
                                         pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                                         generator=torch.Generator())  # its seed draw must not move torch's RNG
    show_A, show_B = data["testA"] or data["trainA"], data["testB"] or data["trainB"]
    if lead:
        run.samples.mkdir(parents=True, exist_ok=True)
    pages = Pages(run)
    step, t0 = start, time.time()
    bar = tqdm(total=args.iteration, initial=start, dynamic_ncols=True, desc=run.root.parent.name, disable=not lead)
    with StopFlag(run.checkpoint) as stop:
        for batch in loader:
            model.progress = step / args.iteration
            images = [x.to(device, non_blocking=True) for x in batch[:2]]
            with model.amp.autocast():
                losses = model.train_step(*images, {k: v.to(device) for k, v in batch[2].items()}) if with_info \
                    else model.train_step(*images)
            values, signum = distributed.agree({k: v.item() for k, v in losses.items()}, stop.signum)
            stop.signum = stop.signum or signum
            if not all(math.isfinite(v) for v in values.values()):
                bar.close()
                bad = ", ".join(k for k, v in values.items() if not math.isfinite(v))
                raise UsageError(f"loss {bad} is not finite at iteration {step + 1}: stopped; {kept(run)}")
            for s in schedulers.values():
                s.step()
            step += 1
            bar.update()
            if not lead:
                if stop.signum:
                    raise Stopped(stop.signum, "")
                continue
            if step % args.log_freq == 0 or step == args.iteration:
                bar.set_postfix({k: f"{v:.3g}" for k, v in values.items()}, refresh=False)
                run.write_log({"step": step, "time": round(time.time() - t0, 3),
                               "lr": next(iter(model.optimizers.values())).param_groups[0]["lr"], **values})
            if step % args.print_freq == 0 or step == args.iteration:
                began = time.perf_counter()
                with evaluating(model):
                    save(sample_grid(model, show_A, show_B, device), run.samples / f"{step:07d}.png")
                pages.after_grid(time.perf_counter() - began, last=step == args.iteration)
            if step % args.save_freq == 0 or step == args.iteration or stop.signum:
                try:
                    save_checkpoint(run.checkpoint, model, schedulers, step, args)
                except checkpoints.CheckpointError as e:
                    bar.close()
                    raise UsageError(f"{e}; stopped; {kept(run)}") from None
            if stop.signum:
                bar.close()
                write_pages(run)
                raise Stopped(stop.signum, f"{signal.Signals(stop.signum).name}: stopped at iteration {step}; "
                                           f"checkpoint {run.checkpoint}; continue with --resume")
        stop.at_once = True  # the evaluation below is part of the run: a stop there leaves it to the next --resume
        bar.close()
        print(f"done: {step} iterations in {time.time() - t0:.0f} s; checkpoint {run.checkpoint}, samples "
              f"{run.samples}")
        if lead and args.dataset in EMBEDDED:
            evaluate(model, args, data, run, step, device)
        if lead:
            write_pages(run, curves=False)  # the last grid's page drew them; the evaluation is what is new


def kept(run):
    """What a stopped run leaves, for its error line."""
    if checkpoints.exists(run.checkpoint):
        return f"the last good checkpoint ({run.checkpoint}) is kept; --resume continues from it (a lower --lr " \
               f"or loss weight may help)"
    return "no checkpoint was written yet (a lower --lr or loss weight may help)"


def resume_state(run):
    try:
        return checkpoints.load_latest(run.checkpoint)
    except checkpoints.CheckpointError as e:
        raise UsageError(f"{e}; start a new run in another --result_dir, or restore the file") from None


def evaluate(model, args, data, run, step, device):
    """The embedded data set's own measures (its module's `report`, common/datasets/), the one path that both the end
    of training and `--phase test` take. Beside the model's numbers (`A2B/...`) the report holds their floor,
    `identity/...` (output = input) and `uniform/...` (an attention map that marks everything), and their ceiling,
    `real/...`. Networks that score images (a segmenter, a classifier) are trained once and kept in
    <result_dir>/scorers/ (or in $ATTNGAN_SCORERS: the tests share one across their runs)."""
    dataset = embedded(args.dataset)
    extras = {name: getattr(model, name) for name in dataset.MODEL_ATTRIBUTES if hasattr(model, name)}
    with evaluating(model):
        report = dataset.report(model.translate, data, device, scorers_folder(args.result_dir),
                                directions=directions(model), **extras)
    run.write_log({"step": step, "eval": report})
    print(f"{args.dataset} evaluation (test sets): {format_report(report)}")
    return report


def scorers_folder(result_dir):
    """Where the embedded sets' scoring networks are kept: $ATTNGAN_SCORERS, else <result_dir>/scorers/."""
    return Path(os.environ.get("ATTNGAN_SCORERS", Path(result_dir) / "scorers"))


def format_report(report):
    """The model's numbers first, then each reference: 'A2B/target 0.981, ...; identity: A2B/target 0.021, ...'."""
    groups = {}
    for key, value in report.items():
        kind = key.split("/")[0] if key.split("/")[0] in REFERENCES else ""
        groups.setdefault(kind, []).append(f"{key.removeprefix(kind + '/')} {value:.3f}")
    return "; ".join((f"{kind}: " if kind else "") + ", ".join(items) for kind, items in groups.items())


REFERENCES = ("identity", "uniform", "real")  # the report's floors and ceiling, beside the model's own numbers


def save(image, path):
    """A PNG written whole or not at all (common.report.replacing): a page never shows half an image."""
    with replacing(path) as tmp:
        image.save(tmp, format="PNG")


@contextlib.contextmanager
def page_writing(run):
    """A failure to write the run's page (common.report) is a warning, not an error: the page is a view of files the
    run keeps, and must never stop a training."""
    try:
        yield
    except Exception as e:
        tqdm.write(f"page not written ({checkpoints.first_line(e)}); `python -m common.report {run.root}` retries")


class Pages:
    """The run's page at every sample grid, its loss curves drawn again only once the grids since the last drawing
    have taken as long as the pages did, and always after the last grid: over a run the pages cost what the grids
    cost, plus that last drawing (and the first, with matplotlib's import, where too few grids follow to pay it back).
    Measured on a loaded 2-core CPU: a drawing takes 0.15-0.35 s, the first 0.8-1.5 s (matplotlib's import), a page
    without one 5-20 ms; a grid of the tiny test networks 6-90 ms, so there the curves follow about every tenth grid,
    and of the presets 20 ms (DA-GAN) to 0.35 s (U-GAT-IT, where they follow every second one)."""

    def __init__(self, run):
        self.run, self.credit = run, 0.0  # seconds of grids not yet spent on pages

    def after_grid(self, grid_seconds, last):
        self.credit += grid_seconds
        start = time.perf_counter()
        write_pages(self.run, curves=last or self.credit > 0)
        self.credit -= time.perf_counter() - start


def write_pages(run, curves=True, test=False):
    """The run's page, with `curves` its loss curves drawn again, and with `test` the test phase's page."""
    with page_writing(run):
        if test:
            test_page(run.root)
        run_page(run.root, curves)


def translate_all(model, domain, direction, out, device, batch_size=8):
    """Each output written as one row of its panels (input | attention | output, or the model's visuals)."""
    out.mkdir(parents=True, exist_ok=True)
    written = set()  # a file that does not decode has the next one stand in for it (common.data): counted once
    for first in range(0, len(domain), batch_size):
        idx = range(first, min(first + batch_size, len(domain)))
        tiles, _ = panels(model, torch.stack([domain.get(i) for i in idx]).to(device), direction)
        for j, i in enumerate(idx):
            written.add(domain.name(i))
            save(grid([[t[j] for t in tiles]]), out / f"{domain.name(i)}.png")
    print(f"{direction}: {len(written)} images -> {out}")


def test(model, args, data, run, device):
    """With the run's latest checkpoint, or with the --weights the model was built from (a paper's option)."""
    step = None
    if getattr(args, "weights", None) is None:
        if not checkpoints.exists(run.checkpoint):
            raise UsageError(f"no checkpoint at {run.checkpoint}: train first (same --dataset and --result_dir)")
        state = resume_state(run)
        load_nets(model.nets, state["nets"], run.checkpoint)
        step = state["step"]
    with page_writing(run):
        record_session(run.root, run.command, columns(model))
    if args.input is not None:
        with evaluating(model):
            translate_all(model, FolderDomain(args.input, args.img_size, train=False), args.direction,
                          run.test / f"{args.direction}_{Path(args.input).stem}", device)
        write_pages(run, curves=False, test=True)
        return
    if data["testA"] is None or data["testB"] is None:
        raise UsageError(f"{args.dataset}: no testA/ and testB/ folders to translate (or use --input PATH)")
    with evaluating(model):
        for direction, domain in (("A2B", data["testA"]), ("B2A", data["testB"])):
            if direction in directions(model):
                translate_all(model, domain, direction, run.test / direction, device)
    report = evaluate(model, args, data, run, step, device) if args.dataset in EMBEDDED else {}
    report.update(inception_report(model, args, data, device))
    if report:
        (run.test / "metrics.json").write_text(json.dumps(report, indent=1) + "\n")
    write_pages(run, curves=False, test=True)


def inception_report(model, args, data, device):
    """KID x 100 and FID (common.fid) when the Inception's weights are at hand: given, or in the hub cache, or, on a
    real data set, downloaded. Without them, a line that says how to get them, and {}."""
    from common import fid
    path = fid.find_weights(args.fid_weights, download=False)  # a bad --fid_weights is an error, not a skip
    if path is None:
        if args.dataset in EMBEDDED:  # its own measures came first; no download on the CPU preset's way
            print(f"KID/FID: not computed; they need {fid.weights_name()} (--fid_weights, or see common/fid.py)")
            return {}
        try:
            path = fid.download_weights(fid.hub_cache() / fid.weights_name())
        except fid.FIDError as e:
            print(f"KID/FID skipped: {e}", file=sys.stderr)
            return {}
    with evaluating(model):
        report = fid.report(model.translate, data["testA"], data["testB"], directions(model),
                            fid.load_inception(path, device))
    print(f"KID x 100 and FID (test sets, {path.name}): {format_report(report)}")
    return report


def main(name, description, defaults, preset, add_arguments, make_model, argv=None):
    """Everything after `if __name__ == "__main__":` in a paper script."""
    parser = build_parser(name, description, defaults)
    add_arguments(parser)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(parser, argv, preset)
        device = choose_device(args.device)
        if distributed.launched():
            device = distributed.init(device)
        if args.kernels:
            os.environ["ATTNGAN_KERNELS"] = args.kernels
        # Late in training, tiny gradients and Adam moments turn subnormal, which x86 CPUs compute many times
        # slower: flushing them to zero made iterations 2000-2200 of the CPU preset 28% faster (64 s -> 46 s).
        torch.set_flush_denormal(True)
        if device.type == "cuda":
            cuda_settings(args.deterministic)
        if args.download:
            download_cyclegan(args.dataset, args.data_root, base_url=args.download_url)
        seed_everything(args.seed)
        model = make_model(args, device)
        # After make_model, which fills the defaults that depend on other flags (AttentionGAN's per scheme).
        print(f"{name}: " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if v is not None)
              + f"  [device {device}]")
        data = None if args.input else load_data(args.dataset, args.img_size, root=args.data_root, seed=args.seed,
                                                 paired=getattr(model, "paired", False))
        if args.iteration is None and data is not None:
            largest = max(len(data["trainA"]), len(data["trainB"]))
            args.iteration = math.ceil(args.epochs * largest / args.batch_size)
            print(f"--epochs {args.epochs} of {largest} images, batch {args.batch_size}: --iteration {args.iteration}")
        run = Run(args, name, new_lr=args.lr if given(argv, parser, "lr") else None,
                  command=shlex.join(["python", f"{name}.py", *argv]))
        if args.phase == "test" and distributed.rank() > 0:
            return  # the test phase is rank 0's
        with checkpoints.RunLock(run.root) if distributed.rank() == 0 else contextlib.nullcontext():
            (train if args.phase == "train" else test)(model, args, data, run, device)
        if args.phase == "train":
            distributed.barrier()  # every rank stops at the same step (distributed.agree), so none waits long
    except (UsageError, DataError, checkpoints.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Stopped as e:
        print(e)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:  # outside the training loop: nothing to save
        print("Ctrl-C: stopped", file=sys.stderr)
        sys.exit(130)
    finally:
        distributed.close()
