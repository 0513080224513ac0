"""Several processes, one per GPU: `torchrun --nproc_per_node N <script>.py ...` (NCCL on CUDA, gloo on CPU).

- Data: step s of a run with N ranks of --batch_size B is the samples s·N·B ... (s+1)·N·B − 1 of
  common.data.UnpairedSteps, rank r taking the r-th B of them (`Shard`). So the global batch is the one a single
  process with batch N·B takes at step s, and a batch stays a pure function of (--seed, step, N·B).
- Gradients: each optimizer's are averaged over the ranks just before its step (common.amp.Precision.step), in one
  all-reduce. DistributedDataParallel's hooks would fire in every backward pass instead: U-GAT-IT's generator takes
  two per step (DDP would need no_sync for the first), its four discriminators step separately, and every script
  freezes D's weights during G's backward and runs a network several times per step (DDP needs
  find_unused_parameters and static graphs for that). An all-reduce at the step is right for all five as they are;
  what it gives up is DDP's overlap of the communication with the backward pass.
- Weights start equal (every rank seeds alike) and stay equal (equal averaged gradients, the same Adam step);
  spectral norm's power iteration needs no data, so its u, v stay equal too. What is per rank: batch norm's
  statistics (DA-GAN: each rank normalises its own B images, as DDP does without SyncBatchNorm), the image pools and
  dropout's draws (ranks other than 0 draw from their own seed). Rank 0's are the ones saved.
- Rank 0 alone prints, logs, writes samples and checkpoints, evaluates and holds the run's lock; the losses it logs
  are the means over the ranks, and a stop (a signal, a non-finite loss) is agreed by all ranks at the same step.
A checkpoint is one of a single process's: it resumes with any N (a different N·B draws other images from then on).
"""
import os
import sys

import torch
import torch.distributed as dist


def launched():
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank():
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def init(device):
    """Join torchrun's process group; each rank its own GPU (LOCAL_RANK). Ranks other than 0 print only errors."""
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if rank() > 0:
        sys.stdout = open(os.devnull, "w")
    return device


def barrier():
    """Wait for every rank before a clean exit, so that no rank tears its process group down while another still
    waits on it (rank 0 evaluates and saves after the last step). It is not the cure of the abort CI has seen twice
    at the end of a two-rank gloo run (rank 1, "terminate called without an active exception"): the second came with
    it in place. tests/test_distributed.py runs the ranks with faulthandler on, so the next one shows where."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def close():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class Shard:
    """This rank's sample indices for steps start ... stop − 1, B per step."""

    def __init__(self, start, stop, batch_size):
        self.start, self.stop, self.B, self.N, self.r = start, stop, batch_size, world(), rank()

    def __len__(self):
        return (self.stop - self.start) * self.B

    def __iter__(self):
        for s in range(self.start, self.stop):
            first = (s * self.N + self.r) * self.B
            yield from range(first, first + self.B)


def average_gradients(optimizer):
    """Every rank's gradients of the optimizer's parameters replaced by their mean over the ranks, in one
    all-reduce. A parameter without a gradient on every rank keeps none (Adam then skips it, as it would in one
    process); one with a gradient on some ranks only counts zeros for the others (DA-GAN's label term, when a rank's
    images carry no labels)."""
    if world() == 1:
        return
    params = [p for group in optimizer.param_groups for p in group["params"]]
    flat = torch.cat([torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device),
                      *[(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]])
    dist.all_reduce(flat)
    held, flat = flat[:len(params)].tolist(), flat[len(params):] / world()  # one copy to the host, not one per flag
    for p, has, part in zip(params, held, flat.split([p.numel() for p in params])):
        p.grad = part.view_as(p) if has > 0 else None


def agree(values, stop):
    """The step's losses averaged over the ranks (each over the ranks that have it), and whether any rank was
    signalled: every rank then logs, checks and stops alike."""
    if world() == 1:
        return values, stop
    gathered = [None] * world()
    dist.all_gather_object(gathered, (values, stop))
    keys = dict.fromkeys(k for v, _ in gathered for k in v)
    mean = {k: sum(v[k] for v, _ in gathered if k in v) / sum(k in v for v, _ in gathered) for k in keys}
    return mean, next((s for _, s in gathered if s), None)
