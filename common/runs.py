"""A trained run read back to look into it (the probes in benchmarks/probes/): its model from its checkpoint, and
the folder of the scoring networks its evaluation used."""
import argparse
import importlib
import os
from pathlib import Path
from typing import NamedTuple

import torch

from common.train import UsageError, build_parser, load_checkpoint, load_nets, our_nets, scorers_folder

PAPERS = ("ugatit", "attentiongan", "uait", "guidegan", "dagan")


class TrainedRun(NamedTuple):
    model: object              # the paper's model, its networks in eval mode
    args: argparse.Namespace   # the flags it was trained with, today's defaults for those it predates
    step: int                  # the iterations it had trained


def load_run(path, script=None, device="cpu"):
    """The run whose checkpoint is `path` (<result_dir>/<script>/<dataset>/checkpoints/latest.pt; `script` names
    the paper when the folders do not): its model built from the checkpoint's flags over today's defaults, so that a
    run saved before a flag existed loads with that flag's default, its weights loaded, in eval mode."""
    path = Path(path)
    script = script or path.resolve().parents[2].name
    if script not in PAPERS:
        raise UsageError(f"{path}: not in a run folder of one of {', '.join(PAPERS)}; name its script")
    paper = importlib.import_module(script)
    state = load_checkpoint(path)
    nets = our_nets(state)
    if nets is None or not isinstance(state.get("args"), dict):
        raise UsageError(f"{path}: not one of our checkpoints")
    parser = build_parser(script, "", paper.DEFAULTS)
    paper.add_arguments(parser)
    args = parser.parse_args([])
    vars(args).update(state["args"])
    model = paper.make_model(args, torch.device(device))
    load_nets(model.nets, nets, path)
    for net in model.nets.values():
        net.eval()
    return TrainedRun(model, args, state["step"])


def scorers_of(path):
    """The scoring networks' folder of the run whose checkpoint is `path`: $ATTNGAN_SCORERS, else the nearest
    scorers/ above it (the ablation runner's, shared by its runs), else its own <result_dir>/scorers/. The scorers
    are trained from a fixed seed, so any of these holds the same networks; the nearest saves training them again."""
    path = Path(path).resolve()
    if "ATTNGAN_SCORERS" not in os.environ:
        shared = next((folder / "scorers" for folder in path.parents if (folder / "scorers").is_dir()), None)
        if shared is not None:
            return shared
    return scorers_folder(path.parents[3])
