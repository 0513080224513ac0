"""The harness under what long runs meet: preemption signals, damaged or foreign checkpoints, a full disk, a NaN in the
weights, two processes in one run folder, a changed --lr on resume (ugatit.py at a tiny size, as test_cli.py)."""
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import attentiongan
import ugatit
from common import checkpoints, data
from common.data import FolderDomain
from common.train import Run, StopFlag, Stopped, UsageError, build_parser, parse_args, restore, save_checkpoint
from conftest import ROOT
from test_cli import TINY, run

RUN = "runs/ugatit/tiny"


@pytest.fixture(scope="module")
def T(tmp_path_factory):
    """TINY on a folder of two images per domain: no test sets, so no evaluation after training (seconds saved)."""
    root = tmp_path_factory.mktemp("data")
    for domain in ("trainA", "trainB"):
        (root / "tiny" / domain).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.random.default_rng(i).integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(
                root / "tiny" / domain / f"{i}.png")
    return [*TINY, "--dataset", "tiny", "--data_root", str(root)]


def losses(work, run=RUN):
    lines = (work / run / "log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(l).items() if k != "time"} for l in lines if "eval" not in l]


def checkpoint_step(work):
    return torch.load(work / RUN / "checkpoints/latest.pt", weights_only=True)["step"]


def start(tmp_path, *args):
    """A training run in the background, its output unbuffered so that the test can wait for a line."""
    return subprocess.Popen([sys.executable, str(ROOT / "ugatit.py"), "--result_dir", str(tmp_path / "runs"), *args],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for_log(tmp_path, lines, timeout=120):
    log, deadline = tmp_path / RUN / "log.jsonl", time.time() + timeout
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= lines):
        time.sleep(0.02)


def tiny_model(*argv):
    parser = build_parser("ugatit", "", ugatit.DEFAULTS)
    ugatit.add_arguments(parser)
    args = parse_args(parser, [*TINY, *argv], {})
    return ugatit.make_model(args, torch.device("cpu")), args


# --- signals ---------------------------------------------------------------------------------------------------

def test_a_second_signal_stops_at_once_without_saving():
    flag = StopFlag("latest.pt")
    with flag:
        flag.handle(signal.SIGHUP, None)
        assert flag.signum == signal.SIGHUP  # the first only asks for a stop after this iteration
        with pytest.raises(Stopped, match="without saving") as stopped:
            flag.handle(signal.SIGTERM, None)
    assert stopped.value.signum == signal.SIGTERM


def test_a_signal_inside_an_image_decode_or_a_download_is_a_stop_not_a_bad_file(tmp_path, monkeypatch):
    # The handler raises wherever the main thread is; the decoder's and the download's `except Exception` (for
    # files and networks that fail) must let it through and mark nothing broken.
    Image.new("RGB", (8, 8)).save(tmp_path / "0.png")
    domain = FolderDomain(tmp_path, 8, train=False)
    flag = StopFlag("latest.pt")

    def second_signal(*_):
        flag.handle(signal.SIGTERM, None)

    with flag:
        flag.handle(signal.SIGINT, None)
        with monkeypatch.context() as m:
            m.setattr(FolderDomain, "_decode", second_signal)
            with pytest.raises(Stopped):
                domain.get(0)
        assert domain.stand_in(0) == 0 and domain.get(0).shape == (3, 8, 8)  # the file is not taken for broken
        monkeypatch.setattr(data, "fetch", second_signal)
        with pytest.raises(Stopped):
            data.download_cyclegan("toy", root=tmp_path / "dataset", base_url="http://127.0.0.1:9")
    assert [p.name for p in (tmp_path / "dataset").iterdir()] == []  # its temporary folder went too


def test_sighup_saves_and_a_second_signal_exits_without_saving_or_a_traceback(tmp_path, T):
    # Stopped, the process holds both signals; continued, it handles them in turn: SIGINT asks for a save after the
    # iteration, SIGTERM then stops it at once.
    for signals, code, saved in (([signal.SIGHUP], 129, True), ([signal.SIGINT, signal.SIGTERM], 143, False)):
        work = tmp_path / str(code)
        work.mkdir()
        proc = start(work, *T, "--iteration", "1000", "--save_freq", "1000", "--print_freq", "1000")
        wait_for_log(work, 2)
        proc.send_signal(signal.SIGSTOP)
        for sig in signals:
            proc.send_signal(sig)
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == code and "Traceback" not in err, err[-2000:]
        assert (work / RUN / "checkpoints/latest.pt").exists() == saved, (out, err[-2000:])
        assert ("stopped without saving" in out) == (not saved) and ("stopped at iteration" in out) == saved, out


def test_a_kill_before_the_first_checkpoint_leaves_no_doubled_log_lines(tmp_path, T):
    proc = start(tmp_path, *T, "--iteration", "8", "--save_freq", "100", "--print_freq", "100")
    wait_for_log(tmp_path, 3)
    proc.kill()
    proc.communicate()
    assert not (tmp_path / RUN / "checkpoints/latest.pt").exists()
    run(tmp_path, *T, "--iteration", "8", "--print_freq", "100", "--resume")
    assert [r["step"] for r in losses(tmp_path)] == list(range(1, 9))


def test_a_run_stopped_during_its_final_evaluation_evaluates_on_resume(tmp_path):
    run(tmp_path, *TINY, "--iteration", "2")
    log = tmp_path / "runs/ugatit/shapes/log.jsonl"
    # What a kill inside the evaluation leaves: the last checkpoint written, no evaluation line.
    log.write_text("".join(l + "\n" for l in log.read_text().splitlines() if '"eval"' not in l))
    p = run(tmp_path, *TINY, "--iteration", "2", "--resume")
    assert "nothing to train" in p.stdout and "evaluating now" in p.stdout
    evals = [json.loads(l) for l in log.read_text().splitlines() if '"eval"' in l]
    assert [e["step"] for e in evals] == [2] and "A2B/bg_psnr" in evals[0]["eval"]
    assert "evaluating" not in run(tmp_path, *TINY, "--iteration", "2", "--resume").stdout  # done once


# --- checkpoints -----------------------------------------------------------------------------------------------

def one_line_error(p, *words):
    """Exit status 2 and one line (the last on stderr: a progress bar may stand above it) holding `words`."""
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(w in last for w in words), p.stderr[-2000:]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, T):
    """A real checkpoint of the tiny model after one iteration."""
    work = tmp_path_factory.mktemp("trained")
    run(work, *T, "--iteration", "1")
    return torch.load(work / RUN / "checkpoints/latest.pt", weights_only=True)


@pytest.mark.parametrize("content, words", [
    (b"", ["latest.pt", "empty"]),
    ({"genA2B.weight": torch.zeros(2)}, ["latest.pt", "not a checkpoint", "genA2B.weight"]),
    (torch.zeros(3), ["latest.pt", "not a checkpoint", "Tensor"]),
    ("nets only", ["latest.pt", "optimizers", "cannot be resumed"]),
    ("extra key", ["latest.pt", "ema", "newer"]),
    ("NaN weight", ["latest.pt", "non-finite", "genA2B."]),
])
def test_a_malformed_checkpoint_is_refused_naming_it(tmp_path, checkpoint, content, words):
    state, path = checkpoint, tmp_path / "latest.pt"
    if content == "nets only":
        content = {"nets": state["nets"]}
    elif content == "extra key":
        content = {**state, "ema": {}}
    elif content == "NaN weight":
        content = {**state, "nets": {**state["nets"], "genA2B": {k: torch.full_like(v, float("nan"))
                                                                 for k, v in state["nets"]["genA2B"].items()}}}
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(checkpoints.CheckpointError) as refused:
        checkpoints.load_latest(path)
    assert all(w in str(refused.value) for w in words) and "\n" not in str(refused.value), str(refused.value)


def test_a_checkpoint_with_a_network_this_model_lacks_is_refused(tmp_path, checkpoint):
    model, args = tiny_model()
    schedulers = {k: torch.optim.lr_scheduler.LambdaLR(o, lambda _: 1.0) for k, o in model.optimizers.items()}
    state = {**checkpoint, "nets": {**checkpoint["nets"], "genC": {}}}
    with pytest.raises(UsageError, match="another configuration .*genC unexpected"):
        restore(model, schedulers, state, Run(args, "ugatit"), None)


def test_a_malformed_checkpoint_stops_the_script_with_one_line(tmp_path, T):
    run(tmp_path, *T, "--iteration", "1")
    (tmp_path / RUN / "checkpoints/latest.pt").write_bytes(b"")
    one_line_error(run(tmp_path, *T, "--iteration", "2", "--resume", check=False), "latest.pt", "empty")


def flip_a_weight_byte(path):
    """Invert one byte in the middle of the largest tensor record, as a failing disk or a bad copy does."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        record = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    # A stored (uncompressed) record: its bytes follow the local header, name and extra field.
    name_len, extra_len = int.from_bytes(data[record.header_offset + 26:][:2], "little"), \
        int.from_bytes(data[record.header_offset + 28:][:2], "little")
    at = record.header_offset + 30 + name_len + extra_len + record.file_size // 2
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_checkpoint_is_refused_and_resume_falls_back_to_the_previous_one(tmp_path, T):
    run(tmp_path, *T, "--iteration", "4", "--save_freq", "2")
    ckpt = tmp_path / RUN / "checkpoints"
    assert torch.load(ckpt / "previous.pt", weights_only=True)["step"] == 2 and checkpoint_step(tmp_path) == 4
    flip_a_weight_byte(ckpt / "latest.pt")
    assert torch.load(ckpt / "latest.pt", weights_only=True)["step"] == 4  # torch alone reads it without a word

    p = run(tmp_path, *T, "--iteration", "6", "--save_freq", "2", "--resume")
    assert "CRC-32" in p.stdout and "previous.pt (iteration 2) instead" in p.stdout and "at iteration 2" in p.stdout
    assert (ckpt / "latest.pt.damaged").exists() and checkpoint_step(tmp_path) == 6
    straight = tmp_path / "straight"
    straight.mkdir()
    run(straight, *T, "--iteration", "6", "--save_freq", "2")
    assert losses(tmp_path) == losses(straight)  # the damaged one's steps 3-4 were run again, the same

    flip_a_weight_byte(ckpt / "latest.pt")
    flip_a_weight_byte(ckpt / "previous.pt")
    one_line_error(run(tmp_path, *T, "--iteration", "8", "--resume", check=False), "previous.pt", "CRC-32")


def test_non_finite_weights_are_never_saved(tmp_path):
    model, args = tiny_model()
    path = tmp_path / "latest.pt"
    save_checkpoint(path, model, {}, 1, args)
    before = path.read_bytes()
    with torch.no_grad():
        next(model.genA2B.parameters())[0] = float("nan")
    with pytest.raises(checkpoints.CheckpointError, match="genA2B.* not finite at iteration 2: not saved"):
        save_checkpoint(path, model, {}, 2, args)
    assert path.read_bytes() == before and not (tmp_path / "previous.pt").exists()
    assert sorted(f.name for f in tmp_path.iterdir()) == ["latest.pt"]


def test_a_failed_write_leaves_the_checkpoints_and_no_temporary_file(tmp_path, monkeypatch):
    model, args = tiny_model()
    path = tmp_path / "latest.pt"
    save_checkpoint(path, model, {}, 1, args)
    before = path.read_bytes()

    def disk_full(obj, f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(checkpoints.CheckpointError, match=r"could not write .*latest\.pt .* MiB are free"):
        save_checkpoint(path, model, {}, 2, args)
    assert path.read_bytes() == before and sorted(f.name for f in tmp_path.iterdir()) == ["latest.pt"]


def test_disk_full_at_a_save_is_one_line_and_keeps_the_last_checkpoint(tmp_path, T):
    disk = tmp_path / "disk"
    disk.mkdir()
    # Room for the data-free run's log, samples and two checkpoints, not for a third beside them.
    model, _ = tiny_model()
    size = checkpoints.nbytes({k: m.state_dict() for k, m in model.nets.items()})
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size * 3 * 2.6)}", "tmpfs", str(disk)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        p = run(disk, *T, "--iteration", "12", "--save_freq", "2", "--print_freq", "100", check=False)
        one_line_error(p, "could not write", "latest.pt", "MiB are free", "last good checkpoint")
        ckpt = disk / RUN / "checkpoints"
        assert not list(ckpt.glob("*.tmp"))
        step = torch.load(ckpt / "latest.pt", weights_only=True)["step"]
        assert 2 <= step < 12 and torch.load(ckpt / "previous.pt", weights_only=True)["step"] == step - 2
    finally:
        subprocess.run(["umount", str(disk)])


# --- the run -----------------------------------------------------------------------------------------------------

def test_resume_honours_a_new_lr(tmp_path, T):
    run(tmp_path, *T, "--iteration", "2", "--lr", "1e-3", "--decay_flag", "False")
    p = run(tmp_path, *T, "--iteration", "4", "--lr", "1e-4", "--decay_flag", "False", "--resume")
    assert "--lr 0.0001: training on with it instead of the checkpoint's 0.001" in p.stdout
    assert [r["lr"] for r in losses(tmp_path)] == [1e-3, 1e-3, 1e-4, 1e-4]
    state = torch.load(tmp_path / RUN / "checkpoints/latest.pt", weights_only=True)
    assert all(g["lr"] == 1e-4 for o in state["optimizers"].values() for g in o["param_groups"])


def test_a_second_run_in_the_same_folder_is_refused_until_the_first_dies(tmp_path, T):
    first = start(tmp_path, *T, "--iteration", "100000", "--save_freq", "2", "--print_freq", "100000")
    wait_for_log(tmp_path, 3)
    for extra in (["--resume"], ["--phase", "test"]):
        p = run(tmp_path, *T, "--iteration", "100000", *extra, check=False)
        one_line_error(p, f"in use by process {first.pid}", "--result_dir")
    first.kill()  # a SIGKILL: the kernel drops its lock, nothing stale is left
    first.communicate()
    p = run(tmp_path, *T, "--iteration", str(checkpoint_step(tmp_path) + 1), "--resume")
    assert "resumed from" in p.stdout


@pytest.mark.parametrize("args, flag", [
    (["--ch", "0"], "--ch 0"), (["--n_res", "-1"], "--n_res -1"), (["--lr", "-1"], "--lr -1.0"),
    (["--lr", "0"], "--lr 0.0"), (["--lr", "nan"], "--lr nan"), (["--weight_decay", "-1"], "--weight_decay -1.0"),
    (["--cycle_weight", "inf"], "--cycle_weight inf"), (["--img_size", "100000"], "--img_size 100000"),
    (["--seed", "-3"], "--seed -3"), (["--batch_size", "0"], "--batch_size 0"),
])
def test_a_bad_number_names_its_flag(args, flag):
    parser = build_parser("ugatit", "", ugatit.DEFAULTS)
    ugatit.add_arguments(parser)
    with pytest.raises(UsageError, match=f"^{flag}: "):
        parse_args(parser, [*TINY, *args], {})


def test_a_bad_number_stops_the_script_with_one_line(tmp_path, T):
    one_line_error(run(tmp_path, *T, "--ch", "0", check=False), "--ch 0", "at least 1")


def test_a_result_dir_that_is_a_file_is_refused(tmp_path, T):
    (tmp_path / "runs").write_text("not a folder")
    one_line_error(run(tmp_path, *T, "--iteration", "1", check=False), "--result_dir", "is a file")


def test_a_new_lr_applies_from_the_first_resumed_step(checkpoint):
    model, args = tiny_model()
    schedulers = {k: torch.optim.lr_scheduler.LambdaLR(o, lambda _: 0.5) for k, o in model.optimizers.items()}
    restore(model, schedulers, checkpoint, Run(args, "ugatit"), checkpoint["args"]["lr"] / 10)
    for k, o in model.optimizers.items():  # before any step: the rate Adam's next update uses
        assert schedulers[k].base_lrs == [checkpoint["args"]["lr"] / 10]
        assert o.param_groups[0]["lr"] == checkpoint["args"]["lr"] / 10 * 0.5


def test_weights_that_are_no_checkpoint_are_one_line(tmp_path, T):
    torch.save(torch.zeros(3), tmp_path / "w.pt")
    one_line_error(run(tmp_path, *T, "--iteration", "1", "--weights", str(tmp_path / "w.pt"), check=False),
                   "--weights", "w.pt", "neither one of our checkpoints")
    parser = build_parser("attentiongan", "", attentiongan.DEFAULTS)
    attentiongan.add_arguments(parser)
    for content, words in ((torch.zeros(3), "not one of our checkpoints"), ({"step": 1}, "not one of our")):
        torch.save(content, tmp_path / "w.pt")
        args = parse_args(parser, ["--img_size", "32", "--ch", "4", "--weights", str(tmp_path / "w.pt")], {})
        with pytest.raises(UsageError, match=words):
            attentiongan.make_model(args, torch.device("cpu"))


def test_a_missing_latest_pt_leaves_previous_pt_to_resume_from(tmp_path, checkpoint, capsys):
    torch.save(checkpoint, tmp_path / "previous.pt")  # latest.pt deleted by hand, or lost in a copy
    assert checkpoints.load_latest(tmp_path / "latest.pt")["step"] == checkpoint["step"]
    assert "latest.pt is missing; using" in capsys.readouterr().out


def test_a_reader_finds_a_complete_latest_pt_at_every_moment_of_the_saves(tmp_path, T):
    """An evaluation or a copy that reads latest.pt while a run saves every iteration: each read a whole checkpoint.
    The reads take the bytes alone, and a sample of them is loaded afterwards, so that they come fast enough to land
    inside a save."""
    path, reads, missing, sample = tmp_path / RUN / "checkpoints/latest.pt", 0, 0, []
    writer = start(tmp_path, *T, "--iteration", "60", "--save_freq", "1", "--print_freq", "1000")
    while writer.poll() is None and not path.exists():  # the first save
        time.sleep(0.001)
    while writer.poll() is None:
        try:
            read = path.read_bytes()
        except FileNotFoundError:
            missing += 1
            continue
        reads += 1
        if reads % 100 == 1:
            sample.append(read)
    assert writer.returncode == 0, writer.communicate()[1][-2000:]
    assert missing == 0 and reads > 60, (missing, reads)
    for read in sample:
        (tmp_path / "read.pt").write_bytes(read)
        checkpoints.load(tmp_path / "read.pt")


SCORER_USER = """
import sys, time, torch
sys.path.insert(0, {root!r})
from common.metrics import cached_scorer
def train():
    with open({log!r}, "a") as f:
        f.write("trained\\n")
    time.sleep(1.0)  # long enough that the other process asks for the scorer meanwhile
    return torch.nn.Linear(2, 2)
net = cached_scorer({path!r}, torch.nn.Linear(2, 2), train, torch.device("cpu"))
print(net.weight.sum().item())
"""


def test_runs_that_need_one_scorer_at_once_train_it_once(tmp_path):
    code = SCORER_USER.format(root=str(ROOT), log=str(tmp_path / "log"), path=str(tmp_path / "scorer.pt"))
    runs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in runs]
    assert all(p.returncode == 0 for p in runs)
    assert (tmp_path / "log").read_text() == "trained\n" and outputs[0] == outputs[1]  # the other one loaded it
    assert sorted(f.name for f in tmp_path.iterdir()) == ["log", "scorer.pt", "scorer.pt.lock"]
