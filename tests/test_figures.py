"""benchmarks/figures.py, the command that makes the docs' figures: it copies the run's last sample grid, and
refuses a name that is no paper script in one line."""
import subprocess
import sys

from conftest import ROOT
from test_docs import SHORT, TINY

FIGURES = str(ROOT / "benchmarks/figures.py")


def test_the_figure_is_the_runs_last_sample_grid(tmp_path):
    p = subprocess.run([sys.executable, FIGURES, "ugatit", "--out", str(tmp_path / "runs"), "--docs",
                        str(tmp_path / "docs"), "--", *TINY["ugatit"], *SHORT], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    samples = sorted((tmp_path / "runs/ugatit/shapes/samples").glob("*.png"))
    assert [s.name for s in samples] == ["0000001.png", "0000002.png"]
    assert (tmp_path / "docs/ugatit.png").read_bytes() == samples[-1].read_bytes()


def test_a_name_that_is_no_paper_script_is_refused_in_one_line(tmp_path):
    p = subprocess.run([sys.executable, FIGURES, "cyclegan", "--out", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 2 and "cyclegan" in p.stderr and "ugatit" in p.stderr.splitlines()[-1], p.stderr
    assert not any(tmp_path.iterdir())
