"""torchrun (common.distributed) with gloo on this CPU: two ranks of batch 1 train U-GAT-IT as one process of batch
2 does, rank 0 alone writes, the checkpoint resumes in one process; the shards, the gradient mean and the agreed
losses against their definitions."""
import json
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from common import distributed
from conftest import ROOT
from test_cli import TINY, run

ARGS = [*TINY, "--iteration", "3", "--save_freq", "3", "--print_freq", "3"]


def torchrun(work, *args):
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(ROOT / "ugatit.py"), "--result_dir", str(work / "runs"), *args],
                       cwd=work, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def test_two_ranks_of_batch_1_train_as_one_process_of_batch_2(tmp_path):
    for work in ("two", "one"):
        (tmp_path / work).mkdir()
    p = torchrun(tmp_path / "two", *ARGS)
    run(tmp_path / "one", *ARGS, "--batch_size", "2")
    assert p.stdout.count("done: 3 iterations") == 1  # rank 0 alone prints
    logs = [[json.loads(l) for l in (tmp_path / w / "runs/ugatit/shapes/log.jsonl").read_text().splitlines()]
            for w in ("two", "one")]
    assert [l["step"] for l in logs[0]] == [1, 2, 3, 3]  # one line per step (rank 0 alone logs), then the evaluation
    for two, one in zip(*logs):
        for k, v in one.items():
            if k not in ("time", "eval"):  # the mean of the ranks' losses is the batch-2 loss, up to rounding
                assert two[k] == pytest.approx(v, rel=1e-5), k
    # The same weights, up to the rounding of a batch-2 conv's gradient sum against an all-reduce of two.
    a, b = (torch.load(tmp_path / w / "runs/ugatit/shapes/checkpoints/latest.pt", weights_only=True)["nets"]
            for w in ("two", "one"))
    assert max((v - b[n][k]).abs().max().item() for n in a for k, v in a[n].items()) < 1e-6
    samples = tmp_path / "two/runs/ugatit/shapes/samples"
    assert [f.name for f in samples.iterdir()] == ["0000003.png"]
    # A checkpoint of two ranks is a single process's: it resumes with one.
    p = run(tmp_path / "two", *[a if a != "3" else "4" for a in ARGS], "--resume")
    assert "resumed from" in p.stdout and "at iteration 3" in p.stdout


def test_each_step_is_split_among_the_ranks_as_one_process_takes_it():
    steps, B = range(5, 9), 3
    one = list(distributed.Shard(steps.start, steps.stop, 2 * B))
    shards = []
    for r in range(2):
        shard = distributed.Shard(steps.start, steps.stop, B)
        shard.N, shard.r = 2, r
        shards.append(list(shard))
        assert len(shards[-1]) == len(shard) == len(steps) * B
    merged = [k for s in range(len(steps)) for r in range(2) for k in shards[r][s * B:(s + 1) * B]]
    assert merged == one == list(range(steps.start * 2 * B, steps.stop * 2 * B))


def _ranks(r, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=r, world_size=2)
    a, b, c = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    a.grad = torch.tensor([1.0, 2.0]) * (r + 1)        # every rank: the mean
    b.grad = torch.tensor([4.0, 6.0]) if r == 0 else None  # one rank: half of it (zeros for the other)
    distributed.average_gradients(torch.optim.SGD([a, b, c], lr=1))
    values, stop = distributed.agree({"G": float(r), **({"cls": 3.0} if r else {})}, 15 if r else None)
    torch.save({"a": a.grad, "b": b.grad, "c": c.grad, "values": values, "stop": stop}, f"{out}{r}.pt")
    dist.destroy_process_group()


def test_gradients_are_averaged_and_losses_agreed_over_the_ranks(tmp_path):
    mp.spawn(_ranks, args=(str(tmp_path / "init"), str(tmp_path / "rank")), nprocs=2)
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt")
        assert torch.equal(got["a"], torch.tensor([1.5, 3.0])) and torch.equal(got["b"], torch.tensor([2.0, 3.0]))
        assert got["c"] is None  # no rank had a gradient: Adam skips it, as in one process
        assert got["values"] == {"G": 0.5, "cls": 3.0} and got["stop"] == 15  # cls: the mean where it exists

