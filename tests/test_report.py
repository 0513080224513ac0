"""common/report.py, the run's page: after a tiny ugatit.py run and its test phase, on what a long run leaves (a torn
log line, no evaluation yet, a resume, a run from before the pages) and under SIGKILL at random moments."""
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from urllib.parse import unquote

import pytest
from PIL import Image

from common import report
from conftest import ROOT
from test_cli import TINY, run
from test_reliability import T as no_test_sets  # noqa: F401 (a fixture: TINY on two images a domain)

RUN = "runs/ugatit/shapes"


def links(page):
    """Every src and href of a page but its anchors, as paths; each must be a file beside or below it."""
    text = page.read_text()
    assert text.rstrip().endswith("</html>"), "half a page"
    targets = [unquote(t) for t in re.findall(r'(?:src|href)="([^"#][^"]*)"', text)]
    missing = [t for t in targets if not (page.parent / t).is_file()]
    assert not missing, missing
    return [page.parent / t for t in targets]


def whole_images(page):
    for path in links(page):
        if path.suffix == ".png":
            with Image.open(path) as im:
                im.load()  # a PNG cut short fails here


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run on the embedded shapes: two grids, a checkpoint, the evaluation."""
    work = tmp_path_factory.mktemp("trained")
    run(work, *TINY, "--iteration", "2", "--print_freq", "1", "--save_freq", "1")
    return work


def test_the_page_after_a_run_shows_its_grids_curves_and_evaluation_beside_the_floors(trained):
    root = trained / RUN
    page = root / "index.html"
    whole_images(page)
    text = page.read_text()
    assert text.index("samples/0000002.png") < text.index("samples/0000001.png")  # newest first
    assert "python ugatit.py --result_dir" in text and "--img_size 32 --ch 4" in text  # the command
    assert "<td>--n_dis</td><td>4</td>" in text  # and every flag
    assert "input | attention over the input | output | translated back" in text
    evaluation = [json.loads(l)["eval"] for l in (root / "log.jsonl").read_text().splitlines() if '"eval"' in l][-1]
    table = text[text.index('id="evaluation"'):text.index('id="losses"')]
    cells = re.findall(r"<td>([0-9.]+)</td>", table)
    assert sorted(cells) == sorted(f"{v:.3f}" for v in evaluation.values())  # the model's numbers and every floor
    assert all(k in table for k in ("identity", "uniform", "real", "A2B/bg_psnr", "B2A/iou"))


def test_a_torn_log_line_no_evaluation_and_a_run_from_before_the_pages_each_give_a_page(trained, tmp_path):
    root = tmp_path / "old"
    shutil.copytree(trained / RUN, root)
    for made in ("index.html", "losses.png", "run.json"):  # what a run from before the pages lacks
        (root / made).unlink()
    log = root / "log.jsonl"
    log.write_text("".join(l + "\n" for l in log.read_text().splitlines() if '"eval"' not in l)
                   + '{"step": 3, "D": 1.')  # a kill in the middle of a write
    p = subprocess.run([sys.executable, "-m", "common.report", str(root)], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    text = root.joinpath("index.html").read_text()
    whole_images(root / "index.html")
    assert "None yet" in text and "to iteration 2" in text  # no evaluation; the torn step 3 is not drawn
    assert "checkpoints/latest.pt" in text and "<td>--n_dis</td><td>4</td>" in text  # flags from the checkpoint
    p = subprocess.run([sys.executable, "-m", "common.report", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and p.stderr.count("\n") == 1  # not a run folder


def test_read_log_keeps_the_last_line_of_a_step(tmp_path):
    # What a log appended to without being cut back (an older version's resume) holds.
    lines = ['{"step": 1, "D": 3}', '{"step": 2, "D": 2}', '{"step": 2, "D": 5}', '{"step": 2, "eval": {"a": 1}}',
             "not json", '{"step": 3, "D": 1']
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(lines))
    records, evaluations = report.read_log(path)
    assert [(r["step"], r["D"]) for r in records] == [(1, 3), (2, 5)] and evaluations[0]["eval"] == {"a": 1}


def test_loss_groups_and_switches_from_the_flags():
    assert [report.loss_group(k) for k in ("D", "G", "G_adv", "G_cycle", "G_cam", "cls")] == \
        [report.GROUPS[0], *[report.GROUPS[1]] * 3, *[report.GROUPS[2]] * 2]
    assert report.switches({"iteration": 2000, "epochs": 100, "switch_epoch": 60}) == \
        [(1200, "stage 2 (--switch_epoch 60 of 100)")]
    assert report.switches({"iteration": 10, "epochs": 200, "curriculum_epochs": 0}) == []  # scheme II: none


def test_the_test_phase_has_its_page(trained):
    root = trained / RUN
    run(trained, *TINY, "--phase", "test")
    page = root / "test/index.html"
    shown = links(page)
    assert sum(p.parent.name == "A2B" for p in shown) == 2 * 100  # each image: its link and its img
    metrics = json.loads((root / "test/metrics.json").read_text())
    assert all(f"<td>{v:.3f}</td>" in page.read_text() for v in metrics.values())
    assert "test/index.html" in (root / "index.html").read_text()  # the run's page links to it

    photo = trained / "my photo.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(photo)
    run(trained, *TINY, "--phase", "test", "--input", str(photo))
    assert "A2B_my%20photo/my%20photo.png" in page.read_text()
    links(page)


def test_a_page_written_while_the_run_is_killed_is_always_whole_and_a_resume_draws_one_curve(no_test_sets, tmp_path):
    # A grid and a page at every iteration, killed at random moments once this process has written its first page:
    # whatever index.html is there is whole, and so is every image it shows.
    rng, root = random.Random(0), tmp_path / "runs/ugatit/tiny"
    page, args = root / "index.html", [*no_test_sets, "--iteration", "30", "--print_freq", "1", "--save_freq", "3"]
    written = lambda: page.stat().st_mtime_ns if page.exists() else 0
    for _ in range(2):
        before, deadline = written(), time.time() + 120
        proc = subprocess.Popen([sys.executable, str(ROOT / "ugatit.py"), "--result_dir", str(tmp_path / "runs"),
                                 *args, "--resume"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while written() == before and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 1.0))
        proc.kill()
        proc.wait()
        whole_images(page)

    for made in ("index.html", "losses.png", "run.json"):  # as a run from before the pages: its resume makes them
        (root / made).unlink()
    run(tmp_path, *args, "--resume")
    records, _ = report.read_log(root / "log.jsonl")
    assert [r["step"] for r in records] == list(range(1, 31))
    assert [json.loads(l)["step"] for l in (root / "log.jsonl").read_text().splitlines()] == list(range(1, 31))
    whole_images(page)
    assert "to iteration 30" in page.read_text() and report.drawn_to(root / "losses.png") == 30
    # No evaluation here: the last write to the log is the last loss line the image shows.
    assert (root / "losses.png").stat().st_mtime_ns >= (root / "log.jsonl").stat().st_mtime_ns


KILLED_AT_RENAME = """
import os, signal
from common import report
renames = 0
def replace(src, dst, replace=os.replace):
    global renames
    renames += 1
    if renames == {k}:
        os.kill(os.getpid(), signal.SIGKILL)
    replace(src, dst)
os.replace = replace
report.run_page({root!r})
"""


def test_a_kill_at_any_rename_of_a_page_write_leaves_the_page_before_it(trained, tmp_path):
    # A random kill rarely lands inside the few milliseconds a file is written; here one lands at each rename of a
    # page write (losses.png, then index.html): nothing is written in place, so the old page is still there.
    root = tmp_path / "run"
    shutil.copytree(trained / RUN, root)
    before = (root / "index.html").read_bytes()
    for k in (1, 2, 3):
        p = subprocess.run([sys.executable, "-c", KILLED_AT_RENAME.format(k=k, root=str(root))], cwd=ROOT)
        assert p.returncode == (-signal.SIGKILL if k < 3 else 0)  # a page is two renames
        whole_images(root / "index.html")
        assert ((root / "index.html").read_bytes() == before) == (k < 3)
