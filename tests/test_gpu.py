"""What only a CUDA GPU can check: the training loop there (Triton kernels, loader workers, pinned memory) under
bf16 and fp16 for all five scripts, and exact resume with --deterministic. Skipped without CUDA;
`bash benchmarks/gpu_check.sh` runs them and refuses to run without a GPU, which is checked here, as is the
benchmark row it prints."""
import json
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from test_amp import TINY

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh)")


def run(work, script, *args):
    p = subprocess.run([sys.executable, str(ROOT / f"{script}.py"), "--result_dir", str(work / "runs"),
                        "--device", "cuda", "--log_freq", "1", *TINY[script], *args],
                       cwd=work, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return [json.loads(l) for l in next((work / "runs" / script).glob("*/log.jsonl")).read_text().splitlines()
            if '"eval"' not in l]


@cuda
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("script", TINY)
def test_every_script_trains_on_cuda_under_amp(tmp_path, script, amp):
    lines = run(tmp_path, script, "--amp", amp, "--iteration", "4", "--print_freq", "2")
    assert len(lines) == 4 and all(isinstance(v, float) and v == v for l in lines for v in l.values())


@cuda
def test_a_deterministic_fp16_run_on_cuda_resumes_exactly(tmp_path):
    args = ["--amp", "fp16", "--deterministic", "--iteration", "6", "--save_freq", "3", "--print_freq", "100"]
    (tmp_path / "straight").mkdir()
    straight = run(tmp_path / "straight", "ugatit", *args)
    shutil.copytree(tmp_path / "straight", tmp_path / "stopped")
    checkpoints = tmp_path / "stopped/runs/ugatit/shapes/checkpoints"
    shutil.move(checkpoints / "previous.pt", checkpoints / "latest.pt")
    resumed = run(tmp_path / "stopped", "ugatit", *args, "--resume")
    drop_time = lambda lines: [{k: v for k, v in l.items() if k != "time"} for l in lines]  # noqa: E731
    assert drop_time(resumed) == drop_time(straight)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_the_gpu_check_refuses_to_report_without_a_gpu():
    p = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and p.stdout == "" and "no CUDA GPU" in p.stderr and len(p.stderr.splitlines()) == 1


def test_the_training_benchmark_prints_one_markdown_row():
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks/train_step.py"), "uait", *TINY["uait"], "--steps", "1",
                        "--warmup", "0", "--device", "cpu", "--amp", "bf16", "--row"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    cells = p.stdout.strip().split("|")
    assert len(p.stdout.splitlines()) == 1 and len(cells) == 7 and "--amp bf16" in cells[1]
    assert all(float(c) > 0 for c in cells[3:6])
