"""ugatit.py end to end, as a user runs it: train, Ctrl-C, crash, resume, test phase, bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

import ugatit
from common.train import build_parser, cuda_settings, lr_factor, parse_args
from conftest import ROOT

TINY = ["--img_size", "32", "--ch", "4", "--n_res", "1", "--n_dis", "4", "--light", "--log_freq", "1"]


def run(tmp_path, *args, check=True):
    p = subprocess.run([sys.executable, str(ROOT / "ugatit.py"), "--result_dir", str(tmp_path / "runs"), *args],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def losses(tmp_path):
    lines = (tmp_path / "runs/ugatit/shapes/log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(l).items() if k != "time"} for l in lines if "eval" not in l]


def checkpoint_step(tmp_path):
    return torch.load(tmp_path / "runs/ugatit/shapes/checkpoints/latest.pt", weights_only=True)["step"]


def test_train_then_test_phase(tmp_path):
    p = run(tmp_path, *TINY, "--iteration", "4", "--print_freq", "2", "--save_freq", "2")
    assert "--dataset shapes" in p.stdout and "--img_size 32" in p.stdout  # the settings it uses
    root = tmp_path / "runs/ugatit/shapes"
    assert sorted(f.name for f in (root / "samples").iterdir()) == ["0000002.png", "0000004.png"]
    assert [r["step"] for r in losses(tmp_path)] == [1, 2, 3, 4]
    assert checkpoint_step(tmp_path) == 4
    assert "A2B/bg_psnr" in p.stdout  # the shapes evaluation after training

    run(tmp_path, *TINY, "--phase", "test")
    a2b = sorted((root / "test/A2B").iterdir())
    assert len(a2b) == 100 and len(list((root / "test/B2A").iterdir())) == 100
    assert Image.open(a2b[0]).size[0] > 3 * 32  # input | attention | output
    assert set(json.loads((root / "test/metrics.json").read_text())) >= {"A2B/target", "B2A/iou"}

    img = tmp_path / "photo.png"
    Image.new("RGBA", (50, 40), (200, 30, 30, 128)).save(img)
    run(tmp_path, *TINY, "--phase", "test", "--input", str(img), "--direction", "B2A")
    assert (root / "test/B2A_photo/photo.png").exists()


def test_resume_continues_exactly_after_ctrl_c_a_sigterm_and_a_kill(tmp_path):
    args = [*TINY, "--iteration", "12", "--save_freq", "3", "--print_freq", "100"]
    straight = tmp_path / "straight"
    straight.mkdir()
    run(straight, *args)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):  # Ctrl-C, a scheduler's preemption, a crash
        work = tmp_path / sig.name
        work.mkdir()
        log = work / "runs/ugatit/shapes/log.jsonl"
        proc = subprocess.Popen([sys.executable, str(ROOT / "ugatit.py"), "--result_dir", str(work / "runs"), *args],
                                cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 5):
            time.sleep(0.02)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
        stopped = checkpoint_step(work)
        assert 3 <= stopped < 12, (stopped, err[-2000:])
        if sig != signal.SIGKILL:  # it finished the iteration, saved, and exits as a shell reports the signal
            assert proc.returncode == 128 + sig and f"stopped at iteration {stopped}" in out, err[-2000:]
        assert not list((work / "runs/ugatit/shapes/checkpoints").glob("*.tmp"))
        p = run(work, *args, "--resume")
        assert "resumed from" in p.stdout and f"at iteration {stopped}" in p.stdout
        assert losses(work) == losses(straight)


def test_existing_run_needs_resume_and_a_finished_run_has_nothing_to_do(tmp_path):
    run(tmp_path, *TINY, "--iteration", "2")
    p = run(tmp_path, *TINY, "--iteration", "2", check=False)
    assert p.returncode == 2 and "--resume" in p.stderr and "latest.pt" in p.stderr
    p = run(tmp_path, *TINY, "--iteration", "2", "--resume")
    assert "nothing to train" in p.stdout


def test_checkpoint_of_another_configuration_names_the_keys(tmp_path):
    run(tmp_path, *TINY, "--iteration", "1")
    p = run(tmp_path, *[a if a != "4" else "8" for a in TINY], "--iteration", "2", "--resume", check=False)
    assert p.returncode == 2
    assert "another configuration" in p.stderr and "genA2B." in p.stderr and "Traceback" not in p.stderr


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    run(tmp_path, *TINY, "--iteration", "2")
    p = run(tmp_path, *TINY, "--iteration", "6", "--resume", "--adv_weight", "1e38", check=False)
    assert p.returncode == 2 and "not finite" in p.stderr and "last good checkpoint" in p.stderr
    assert checkpoint_step(tmp_path) == 2
    state = torch.load(tmp_path / "runs/ugatit/shapes/checkpoints/latest.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["nets"]["genA2B"].values())


@pytest.mark.parametrize("args, message", [
    (["--dataset", "selfie2anime"], "github.com/taki0112/UGATIT"),
    (["--dataset", "no_such_set"], "trainA"),
    (["--light", "maybe"], "expected True or False"),
    (["--norm", "batch"], "invalid choice"),
    (["--device", "cuda"], "--device cuda"),
    (["--img_size", "16"], "--img_size 16"),
    (["--img_size", "34"], "multiple of 4"),
    (["--phase", "test"], "train first"),
    (["--input", "x.png"], "--phase test"),
])
def test_bad_input_gives_one_clear_line(tmp_path, args, message):
    if args == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    p = run(tmp_path, *TINY, *args, check=False)
    assert p.returncode == 2 and message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def test_authors_boolean_spellings_and_alias(tmp_path):
    p = run(tmp_path, "--data", "shapes", "--light", "True", "--decay_flag", "False", "--img_size", "32", "--ch",
            "4", "--n_res", "1", "--n_dis", "4", "--iteration", "1")
    assert "--light True" in p.stdout and "--decay_flag False" in p.stdout


def test_kernels_flag_runs_the_triton_path(tmp_path):
    """--kernels triton: the AdaLIN kernel in every generator (in Triton's interpreter here, see conftest.py), on a
    two-image folder data set (no test sets, so no evaluation pass through the interpreter)."""
    for domain, colour in (("trainA", (200, 30, 30)), ("trainB", (240, 140, 20))):
        (tmp_path / "dataset/tiny" / domain).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 36), colour).save(tmp_path / "dataset/tiny" / domain / f"{i}.png")
    p = run(tmp_path, *TINY, "--dataset", "tiny", "--iteration", "1", "--kernels", "triton")
    assert "--kernels triton" in p.stdout
    assert (tmp_path / "runs/ugatit/tiny/checkpoints/latest.pt").exists()


def test_resume_drops_a_log_line_cut_short_by_a_crash(tmp_path):
    run(tmp_path, *TINY, "--iteration", "2")
    log = tmp_path / "runs/ugatit/shapes/log.jsonl"
    with open(log, "a") as f:
        f.write('{"step": 3, "D": 1.')  # what a kill in the middle of a write leaves
    run(tmp_path, *TINY, "--iteration", "4", "--resume")
    assert [r["step"] for r in losses(tmp_path)] == [1, 2, 3, 4]


def test_lr_decay_starts_at_the_given_fraction():
    half, late = lr_factor(150, True), lr_factor(150, True, decay_from=100 / 150)
    assert [half(s) for s in (74, 75, 150)] == [1.0, 1.0, 0.0] and half(76) < 1
    assert late(99) == 1.0 and late(100) == 1.0 and late(125) == 0.5 and late(150) == 0.0
    assert lr_factor(150, False, decay_from=0.1)(149) == 1.0


def test_preset_may_name_the_embedded_data():
    parser = build_parser("ugatit", "", ugatit.DEFAULTS)
    ugatit.add_arguments(parser)
    args = parse_args(parser, ["--iteration", "3"], {"dataset": "digits", "iteration": 7, "img_size": 32})
    assert (args.dataset, args.iteration, args.img_size) == ("digits", 3, 32)
    assert parse_args(parser, [], {"iteration": 7}).dataset == "shapes"


def test_cuda_runs_autotune_unless_deterministic(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    try:
        cuda_settings(False)
        assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
        cuda_settings(True)
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved
