"""The model interface that common/train.py's docstring writes down, held by all five papers; common.runs.load_run on
a checkpoint saved before a flag existed; the probes (benchmarks/probes/) started from the repository root and from
benchmarks/."""
import importlib
import re
import subprocess
import sys

import pytest
import torch

from common import train
from common.runs import PAPERS, load_run
from common.train import build_parser, parse_args, save_checkpoint
from conftest import ROOT
from test_amp import TINY


def tiny_model(name):
    script = importlib.import_module(name)
    parser = build_parser(name, "", script.DEFAULTS)
    script.add_arguments(parser)
    args = parse_args(parser, [*TINY[name], "--iteration", "10"], {})
    return script.make_model(args, torch.device("cpu")), args


def interface():
    """attribute -> "required", "optional" or "set", from the table in common/train.py's docstring."""
    table = train.__doc__.split("The model interface")[1]
    return dict(re.findall(r"^    (\w+) +(required|optional|set) ", table, re.MULTILINE))


def test_the_interface_table_lists_every_attribute_the_harness_reads():
    source = "".join((ROOT / path).read_text() for path in ("common/train.py", "common/runs.py"))
    read = set(re.findall(r"model\.(\w+)", source)) | set(re.findall(r"(?:get|has)attr\(model, \"(\w+)\"", source))
    for module in ("shapes", "shapes_paired", "digits"):  # what each embedded set's report takes from the model
        read |= set(importlib.import_module(f"common.datasets.{module}").MODEL_ATTRIBUTES)
    assert read - {"__doc__"} <= set(interface()), read - set(interface())


@pytest.mark.parametrize("name", PAPERS)
def test_each_model_provides_the_required_attributes(name):
    model, _ = tiny_model(name)
    missing = [a for a, kind in interface().items() if kind == "required" and not hasattr(model, a)]
    assert not missing, f"{name}: {missing}"
    assert model.attention_scale in ("probability", "unbounded")
    assert set(model.nets) and set(model.optimizers) and callable(model.train_step) and callable(model.translate)


def test_load_run_reads_a_checkpoint_saved_before_a_flag_existed(tmp_path):
    torch.manual_seed(0)
    model, args = tiny_model("ugatit")
    path = tmp_path / "runs/ugatit/tiny/checkpoints/latest.pt"
    save_checkpoint(path, model, {}, 3, args)
    state = torch.load(path, weights_only=True)
    del state["args"]["gen_cam"]  # as a version of ugatit.py without --gen_cam saved it
    torch.save(state, path)
    run = load_run(path)
    assert run.step == 3 and run.args.gen_cam is True and run.args.ch == 4  # today's default, the run's own value
    assert not any(m.training for net in run.model.nets.values() for m in net.modules())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    for net in model.nets.values():
        net.eval()
    with torch.no_grad():
        assert torch.equal(run.model.translate(x, "A2B")[0], model.translate(x, "A2B")[0])


@pytest.mark.parametrize("probe", ["attention_levels", "dagan_boxes", "guidegan_map", "sn_passes", "fid_features"])
@pytest.mark.parametrize("where", ["", "benchmarks"])
def test_each_probe_starts_from_the_root_and_from_benchmarks(probe, where):
    path = ROOT / "benchmarks/probes" / f"{probe}.py"
    p = subprocess.run([sys.executable, str(path.relative_to(ROOT / where)), "--help"], cwd=ROOT / where,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "usage" in p.stdout, p.stderr[-2000:]
