"""benchmarks/ablation.py: the statistics (benchmarks/stats.py) against a computation written out here, then the
runner end to end on ugatit at a tiny budget: the files it writes, resume, failing runs, Ctrl-C, bad input."""
import csv
import json
import math
import re
import signal
import subprocess
import sys
import time
from urllib.parse import unquote

import pytest

from benchmarks import stats
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import ablation  # noqa: E402

TINY = ["--img_size", "32", "--ch", "4", "--n_res", "1", "--n_dis", "4", "--light", "--save_freq", "1"]


def runner(out, *args, extra=TINY):
    command = [sys.executable, str(ROOT / "benchmarks/ablation.py"), "ugatit", "--out", str(out), *args, "--", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


# --- statistics ----------------------------------------------------------------------------------------------------

def test_t_quantiles():
    assert stats.t975(2) == 4.303 and stats.t975(4) == 2.776 and stats.t975(1) == 12.706
    assert stats.t975(30) == 2.042 and stats.t975(31) == 1.96


def test_mean_and_sample_sd():
    mean, sd = stats.mean_sd([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and sd == pytest.approx(math.sqrt((1.5 ** 2 + 0.5 ** 2 + 0.5 ** 2 + 1.5 ** 2) / 3))
    assert math.isnan(stats.mean_sd([5.0])[1])
    assert stats.format_mean_sd([5.0]) == "5.000 ± n/a"


def test_paired_difference_by_hand():
    # Seeds move both rows together (10, 20, 30): the per-seed differences are 1, 2, 3, so mean 2, sd 1, and the
    # half-width t(0.975, df 2) * 1 / sqrt(3). Unpaired, the seeds' spread would swamp it. Seed 3 has no full run.
    row, full = {0: 11.0, 1: 22.0, 2: 33.0, 3: 99.0}, {0: 10.0, 1: 20.0, 2: 30.0}
    mean, half, n = stats.paired_difference(row, full)
    assert (mean, n) == (2.0, 3) and half == pytest.approx(4.303 * 1 / math.sqrt(3))
    assert stats.format_difference((mean, half, n)) == "+2.000 [-0.484, +4.484]"  # contains 0: no star
    assert stats.format_difference((2.0, 1.0, 3)) == "+2.000 [+1.000, +3.000]*"
    assert stats.format_difference((-2.0, 1.0, 3)).endswith("*")
    assert stats.paired_difference({0: 3.0}, {0: 1.0}) == (2.0, None, 1)
    assert stats.format_difference((2.0, None, 1)) == "+2.000 (n/a)"


def test_format_table():
    results = {"full": {0: {"A2B/acc": 0.5, "identity/A2B/acc": 0.1}, 1: {"A2B/acc": 0.7, "identity/A2B/acc": 0.3}},
               "ablated": {0: {"A2B/acc": 0.2, "identity/A2B/acc": 0.1}}}
    text = ablation.format_table("Table 9", ["full", "ablated"], results, {"ablated": {1: "error: boom"}})
    assert "| full | n=2 | 0.600 ± 0.141 |" in text  # sd of 0.5, 0.7 with ddof 1
    assert "| ablated (seed 1) | failed: error: boom |" in text
    assert "| ablated − full | n=1 | -0.300 (n/a) |" in text  # paired over seed 0 only
    assert "identity/A2B/acc 0.167" in text and "| identity/" not in text  # a floor, not a model column


def test_format_table_against_another_row():
    # Pairing with "none" instead of the full model: per-seed differences full − none are 0.1 and 0.3 (mean 0.2,
    # sd 0.141, half-width 12.706 · 0.141 / √2 = 1.271), ablated − none over seed 0 only 0.2 − 0.4 = −0.2.
    results = {"full": {0: {"A2B/acc": 0.5}, 1: {"A2B/acc": 0.7}}, "ablated": {0: {"A2B/acc": 0.2}},
               "none": {0: {"A2B/acc": 0.4}, 1: {"A2B/acc": 0.4}}}
    text = ablation.format_table("Table 9", ["full", "ablated", "none"], results, {}, against="none")
    assert "Paired difference, row − none" in text and "− full" not in text and "| none − none" not in text
    assert "| full − none | n=2 | +0.200 [-1.071, +1.471] |" in text
    assert "| ablated − none | n=1 | -0.200 (n/a) |" in text
    assert ablation.format_table("T", ["full", "none"], results, {}, against="other") == \
        ablation.format_table("T", ["full", "none"], results, {})  # a row of another table: the full model


def test_a_failure_is_the_last_line_of_its_log(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("ugatit:  50%|#####     | 1/2\rugatit: 100%|##########| 2/2\nTraceback (most recent call last):\n"
                   "  File \"ugatit.py\", line 1\nRuntimeError: out of memory\n\n")
    assert ablation.last_line(log) == "RuntimeError: out of memory"


# --- the runner ----------------------------------------------------------------------------------------------------

def test_runs_tables_and_resume(tmp_path):
    out = tmp_path / "ablation"
    p = runner(out, "--rows", "w/o CAM", "--seeds", "2", "--iteration", "2", "--jobs", "2")
    assert p.returncode == 0, p.stderr[-3000:] + p.stdout[-3000:]
    assert "0 of 4 done" in p.stdout and "expected: about" in p.stdout
    table = (out / "table.md").read_text()
    assert "| U-GAT-IT | n=2 |" in table and "| w/o CAM | n=2 |" in table and "| w/o CAM − U-GAT-IT | n=2 |" in table
    assert "A2B/bg_psnr" in table and "Floor and ceiling" in table
    with open(out / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["row"], r["seed"]) for r in rows} == {(r, s) for r in ("U-GAT-IT", "w/o CAM") for s in ("0", "1")}
    assert {"A2B/bg_psnr", "B2A/target"} <= {r["metric"] for r in rows}
    saved = json.loads((out / "runs.json").read_text())
    assert len(saved["runs"]) == len(rows) and saved["failed"] == []
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "index.html").read_text()  # the tables, the plot and each run's page, by relative links
    targets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert all((out / unquote(t)).is_file() for t in targets) and "plot.png" in targets and "w/o CAM − U-GAT-IT" in page
    assert sorted(t for t in targets if t.endswith("/index.html")) == [
        f"{row}/seed{s}/ugatit/shapes/index.html" for row in ("U-GAT-IT", "w-o-CAM") for s in (0, 1)]
    results = sorted(out.glob("*/seed*/result.json"))
    assert len(results) == 4 and "--gen_cam False" in (out / "w-o-CAM/seed1/log.txt").read_text()  # the row's flags
    mtimes = [r.stat().st_mtime_ns for r in results]

    again = runner(out, "--rows", "w/o CAM", "--seeds", "2", "--iteration", "2")
    assert again.returncode == 0 and "4 of 4 done; 0 to run" in again.stdout
    assert [r.stat().st_mtime_ns for r in results] == mtimes  # nothing ran again
    against = runner(out, "--rows", "U-GAT-IT", "--seeds", "2", "--iteration", "2", "--against", "w/o CAM")
    assert against.returncode == 0 and "4 of 4 done; 0 to run" in against.stdout  # --against's row comes along
    assert "| U-GAT-IT − w/o CAM | n=2 |" in (out / "table.md").read_text()

    # A deleted result.json comes back from the run's log.jsonl without a run; a deleted run folder runs again, alone.
    (out / "w-o-CAM/seed1/result.json").unlink()
    assert "4 of 4 done" in runner(out, "--rows", "w/o CAM", "--seeds", "2", "--iteration", "2").stdout
    assert (out / "w-o-CAM/seed1/result.json").exists()
    mtimes = [r.stat().st_mtime_ns for r in results]
    for f in sorted((out / "U-GAT-IT/seed0").rglob("*"), reverse=True):
        f.rmdir() if f.is_dir() else f.unlink()
    again = runner(out, "--rows", "w/o CAM", "--seeds", "2", "--iteration", "2")
    assert again.returncode == 0 and "3 of 4 done; 1 to run" in again.stdout and "[1/1] U-GAT-IT seed 0" in again.stdout
    assert [r.stat().st_mtime_ns for r in results if "U-GAT-IT/seed0" not in str(r)] == \
        [m for r, m in zip(results, mtimes) if "U-GAT-IT/seed0" not in str(r)]

    # Other flags than the stored results': refused, not mixed into one table.
    other = runner(out, "--rows", "w/o CAM", "--seeds", "2", "--iteration", "3")
    assert other.returncode == 2 and "choose another --out" in other.stderr


def test_failing_runs_are_reported_and_retried(tmp_path):
    out = tmp_path / "ablation"
    bad = ["--img_size", "34", *TINY[2:]]
    p = runner(out, "--rows", "w/o CAM", "--seeds", "1", extra=bad)
    assert p.returncode == 1, p.stderr[-3000:]  # the tables are still written; 1 tells a script something failed
    error = "error: --img_size 34: use a multiple of 4"
    table = (out / "table.md").read_text()
    assert f"| U-GAT-IT (seed 0) | failed: {error}" in table and f"| w/o CAM (seed 0) | failed: {error}" in table
    assert [f["row"] for f in json.loads((out / "runs.json").read_text())["failed"]] == ["U-GAT-IT", "w/o CAM"]
    assert not list(out.glob("*/seed*/result.json"))
    assert "0 of 2 done; 2 to run" in runner(out, "--rows", "w/o CAM", "--seeds", "1", extra=bad).stdout


def test_a_relative_out_is_the_callers_folder(tmp_path):
    """The runs run in the repository's folder; a relative --out still means the folder the runner was called from."""
    command = [sys.executable, str(ROOT / "benchmarks/ablation.py"), "ugatit", "--rows", "U-GAT-IT", "--seeds", "1",
               "--iteration", "1", "--out", "relative", "--", *TINY]
    p = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:]
    assert (tmp_path / "relative/U-GAT-IT/seed0/result.json").is_file() and not (ROOT / "relative").exists()


def test_ctrl_c_stops_the_runs_and_says_what_to_rerun(tmp_path):
    out = tmp_path / "ablation"
    command = [sys.executable, str(ROOT / "benchmarks/ablation.py"), "ugatit", "--out", str(out), "--rows", "w/o CAM",
               "--seeds", "1", "--iteration", "2000", "--", *TINY]
    p = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = out / "U-GAT-IT/seed0/ugatit/shapes/checkpoints/latest.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline:  # the runs are training
        time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    stdout, _ = p.communicate(timeout=120)
    assert p.returncode == 130
    assert "2 of 2 runs not finished" in stdout and "continue with:" in stdout and "'w/o CAM'" in stdout
    assert "stopped at iteration" in (out / "U-GAT-IT/seed0/log.txt").read_text()  # a checkpoint to resume from
    assert not list(out.glob("*/seed*/result.json"))


def test_bad_input_names_the_valid_choices(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks/ablation.py"), "cyclegan"], capture_output=True,
                       text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "ugatit, attentiongan, uait, guidegan, dagan" in p.stderr
    p = runner(tmp_path, "--rows", "w/o CAM,w/o XYZ")
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "'w/o XYZ'" in p.stderr and '"w/o CAM"' in p.stderr and '"U-GAT-IT"' in p.stderr
    p = runner(tmp_path, "--against", "w/o XYZ")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--against" in p.stderr and '"w/o CAM"' in p.stderr


def test_row_names_may_hold_commas():
    import guidegan
    tables = ablation.pick_rows("RAM, RGBA,CycleGAN", guidegan.ABLATIONS, "guidegan")
    assert tables == {"Table 2 (supervised)": ["post hoc, residual", "RAM, RGBA"],
                      "Table 1 (unsupervised)": ["unsupervised post hoc, residual", "CycleGAN"]}


def test_a_table_name_picks_all_its_rows():
    import guidegan
    tables = ablation.pick_rows("Table 1 (unsupervised),RAM, RGBA", guidegan.ABLATIONS, "guidegan")
    assert tables == {"Table 2 (supervised)": ["post hoc, residual", "RAM, RGBA"],
                      "Table 1 (unsupervised)": list(guidegan.ABLATIONS["Table 1 (unsupervised)"])}


def test_rows_may_be_typed_with_the_minus_sign_the_docs_print():
    import uait
    assert ablation.pick_rows("Ours\u2212cycle", uait.ABLATIONS, "uait") == {"Table 2": ["Ours", "Ours-cycle"]}
