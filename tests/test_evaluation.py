"""One evaluation path: the numbers printed at the end of training are those of `--phase test`, every network is in
eval mode while it runs, and an evaluation or a sample grid in the middle of training leaves the training as it was."""
import json
import subprocess
import sys

import pytest
import torch

import dagan
from common.train import build_parser, evaluating
from conftest import ROOT

# One script per embedded data set, at a tiny size: dropout (GuideGAN's U-Net) and batch norm (DA-GAN) are where
# train and eval mode differ.
RUNS = {
    "shapes": ("ugatit", ["--img_size", "32", "--ch", "4", "--n_res", "1", "--n_dis", "4", "--light"]),
    "shapes_paired": ("guidegan", ["--img_size", "32", "--ngf", "4", "--ndf", "4"]),
    "digits": ("dagan", ["--ch", "4", "--n_res", "1", "--batch_size", "8"]),
}


def run(tmp_path, script, *args):
    p = subprocess.run([sys.executable, str(ROOT / f"{script}.py"), "--result_dir", str(tmp_path / "runs"), *args],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def log(tmp_path, script, dataset):
    lines = (tmp_path / "runs" / script / dataset / "log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]


@pytest.mark.parametrize("dataset", RUNS)
def test_end_of_training_numbers_equal_the_test_phase(tmp_path, dataset):
    script, tiny = RUNS[dataset]
    run(tmp_path, script, "--dataset", dataset, *tiny, "--iteration", "3", "--print_freq", "1")
    run(tmp_path, script, "--dataset", dataset, *tiny, "--phase", "test")
    trained = [line["eval"] for line in log(tmp_path, script, dataset) if "eval" in line]
    tested = json.loads((tmp_path / "runs" / script / dataset / "test/metrics.json").read_text())
    assert len(trained) == 2 and trained[0].keys() == tested.keys()  # the test phase logs its line too
    for key, value in tested.items():
        assert trained[0][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert any(key.startswith("identity/") for key in tested)  # every report shows its floor


@pytest.mark.parametrize("dataset", ["shapes_paired", "digits"])
def test_sample_grids_do_not_move_the_training(tmp_path, dataset):
    """A grid every iteration (dropout drawn, batch norm run) against none: the same losses and the same final
    evaluation, since the grids run in eval mode and put the RNG back."""
    script, tiny = RUNS[dataset]
    every, never = tmp_path / "every", tmp_path / "never"
    for folder, freq in ((every, "1"), (never, "1000")):
        folder.mkdir()
        run(folder, script, "--dataset", dataset, *tiny, "--iteration", "3", "--print_freq", freq,
            "--log_freq", "1")
    assert log(every, script, dataset) == log(never, script, dataset)


def test_evaluating_restores_modes_batch_norm_statistics_and_rng():
    parser = build_parser("dagan", "", dagan.DEFAULTS)
    dagan.add_arguments(parser)
    model = dagan.make_model(parser.parse_args(["--ch", "4", "--n_res", "1"]), torch.device("cpu"))
    model.C.eval()  # a network a model keeps in eval mode itself stays so
    modes = {name: [m.training for m in net.modules()] for name, net in model.nets.items()}
    buffers = {name: {k: v.clone() for k, v in net.state_dict().items()} for name, net in model.nets.items()}
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    rng = torch.get_rng_state()
    with evaluating(model):
        assert not any(m.training for net in model.nets.values() for m in net.modules())
        y, attention = model.translate(x)
        assert not y.requires_grad
        torch.rand(5)  # an evaluation that draws
    assert torch.equal(torch.get_rng_state(), rng)
    assert {name: [m.training for m in net.modules()] for name, net in model.nets.items()} == modes
    for name, net in model.nets.items():
        for key, value in net.state_dict().items():
            assert torch.equal(value, buffers[name][key]), f"{name}.{key}"
    # Eval mode: batch norm on its running statistics, so one image's output does not depend on the others'.
    with evaluating(model):
        assert torch.allclose(model.translate(x[:1])[0], model.translate(x)[0][:1], atol=1e-5)
