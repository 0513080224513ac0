"""torchrun (common.distributed) with gloo on this CPU: two ranks of batch 1 train U-GAT-IT as one process of batch
2 does, rank 0 alone writes, the checkpoint resumes in one process; the shards, the gradient mean and the agreed
losses against their definitions."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode

from common import distributed
from conftest import ROOT
from test_attentiongan import TINY as TINY_ATTENTIONGAN
from test_cli import TINY, run
from test_guidegan import TINY as TINY_GUIDEGAN
from test_uait import TINY as TINY_UAIT

ARGS = [*TINY, "--iteration", "3", "--save_freq", "3", "--print_freq", "3"]


def torchrun(work, *args, script="ugatit.py"):
    """With Python's faulthandler on in the ranks: a rank that aborts prints every thread's Python stack, which says
    where it died (in the script, in destroy_process_group, or after it at interpreter exit; the abort of
    common.distributed.barrier's docstring)."""
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(ROOT / script), "--result_dir", str(work / "runs"), *args],
                       cwd=work, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    assert p.returncode == 0, p.stderr[-6000:]
    return p



def test_a_rank_that_aborts_shows_where(tmp_path):
    """The helper's failure message holds the aborting rank's Python stack (faulthandler), down to its line."""
    script = tmp_path / "abort.py"
    script.write_text("import os\n\nif os.environ['RANK'] == '1':\n    os.abort()\n")
    with pytest.raises(AssertionError) as failed:
        torchrun(tmp_path, script=script)
    assert "Fatal Python error: Aborted" in str(failed.value) and f'File "{script}", line 4' in str(failed.value)

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


# The other scripts, with what would make two ranks differ from one process turned off: the image pools (their
# draws are per rank) and GuideGAN's dropout. DA-GAN is not here: its batch norm normalises each rank's own images.
OTHERS = {"attentiongan.py": [*TINY_ATTENTIONGAN, "--pool_size", "0"],
          "uait.py": [*TINY_UAIT, "--pool_size", "0", "--log_freq", "1"],
          "guidegan.py": [*TINY_GUIDEGAN, "--dropout", "False", "--log_freq", "1"]}


@pytest.mark.parametrize("script", OTHERS)
def test_the_other_scripts_train_on_two_ranks_as_in_one_process(tmp_path, script):
    """One step, two ranks of batch 1 against one process of batch 2: the same losses, and the same weights but for
    Adam's sign on gradients of rounding noise. A bias just before an instance norm has no effect on anything, so
    its gradient is rounding noise only, and Adam's first step (±lr whatever the gradient's size) follows the
    noise's sign: those two runs may be 2·lr apart. So may a few weights of U-AIT's discriminator, whose deepest
    maps are 2×2 at 32 px. Averaging nothing (each rank its own gradient) moves 20-35% of the weights apart."""
    args = [*OTHERS[script], "--iteration", "1", "--save_freq", "1", "--print_freq", "1"]
    for work in ("two", "one"):
        (tmp_path / work).mkdir()
    torchrun(tmp_path / "two", *args, script=script)
    p = subprocess.run([sys.executable, str(ROOT / script), "--result_dir", str(tmp_path / "one/runs"), *args,
                        "--batch_size", "2"], cwd=tmp_path / "one", capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    two, one = (json.loads(next((tmp_path / w / "runs").glob("*/*/log.jsonl")).read_text().splitlines()[0])
                for w in ("two", "one"))
    for k, v in one.items():
        if k != "time":
            assert two[k] == pytest.approx(v, rel=1e-5), k
    (a, lr), (b, _) = ((lambda c: (c["nets"], c["args"]["lr"]))(torch.load(
        next((tmp_path / w / "runs").glob("*/*/checkpoints/latest.pt")), weights_only=True)) for w in ("two", "one"))
    for n in a:
        gaps = {k: (v.float() - b[n][k].float()).abs() for k, v in a[n].items()}
        assert max(g.max().item() for g in gaps.values()) <= 2 * lr * 1.01, n
        weights = [g for k, g in gaps.items() if not k.endswith("bias")]
        apart = sum((g > 1e-6).sum().item() for g in weights) / sum(g.numel() for g in weights)
        assert apart < 1e-4, (n, apart)


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


class HostReads(TorchDispatchMode):
    """Counts the reads of one tensor element by the host (each a synchronisation with a GPU)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def test_averaging_reads_the_flags_of_which_parameters_have_gradients_in_one_copy(monkeypatch):
    """One flag per parameter says which have a gradient on some rank: they reach the host in one copy per step,
    where a comparison read per parameter meant one synchronisation each with the GPU."""
    monkeypatch.setattr(distributed, "world", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce", lambda t: t.mul_(2))  # two ranks with these gradients
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in range(5)]
    for p in params[::2]:
        p.grad = torch.ones(2)
    with HostReads() as reads:
        distributed.average_gradients(torch.optim.SGD(params, lr=1))
    assert reads.count == 0
    assert [p.grad is not None for p in params] == [True, False, True, False, True]
    assert all((p.grad == 1).all() for p in params[::2])


def _ranks(r, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=r, world_size=2)
    a, b, c = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    a.grad = torch.tensor([1.0, 2.0]) * (r + 1)        # every rank: the mean
    b.grad = torch.tensor([4.0, 6.0]) if r == 0 else None  # one rank: half of it (zeros for the other)
    distributed.average_gradients(torch.optim.SGD([a, b, c], lr=1))
    values, stop = distributed.agree({"G": float(r), **({"cls": 3.0} if r else {})}, 15 if r else None)
    torch.save({"a": a.grad, "b": b.grad, "c": c.grad, "values": values, "stop": stop}, f"{out}{r}.pt")
    distributed.barrier()
    distributed.close()


def test_gradients_are_averaged_and_losses_agreed_over_the_ranks(tmp_path):
    mp.spawn(_ranks, args=(str(tmp_path / "init"), str(tmp_path / "rank")), nprocs=2)
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt")
        assert torch.equal(got["a"], torch.tensor([1.5, 3.0])) and torch.equal(got["b"], torch.tensor([2.0, 3.0]))
        assert got["c"] is None  # no rank had a gradient: Adam skips it, as in one process
        assert got["values"] == {"G": 0.5, "cls": 3.0} and got["stop"] == 15  # cls: the mean where it exists

