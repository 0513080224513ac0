"""notebooks/tour.ipynb is committed without outputs and runs top to bottom through the command docs/teaching.md gives
(nbconvert, which executes it with nbclient), at 2 iterations per script; a user's wrong input ends a cell with the script's one-line error; and
docs/tour.md, the notebook executed and rendered for the web (the command is in docs/teaching.md), holds every cell
of the notebook as it is now, in order, with every picture it shows."""
import os
import re
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from conftest import ROOT

TOUR = ROOT / "notebooks/tour.ipynb"
RENDERED = ROOT / "docs/tour.md"


def run(nb, tmp_path, monkeypatch):
    monkeypatch.setenv("TOUR_ITERATIONS", "2")
    monkeypatch.setenv("TOUR_RESULTS", str(tmp_path / "runs"))
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    return nb


def test_the_notebook_is_committed_without_outputs():
    code = [c for c in nbformat.read(TOUR, as_version=4).cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def test_the_documented_command_runs_the_tour_top_to_bottom(tmp_path):
    """docs/teaching.md's nbconvert command, at 2 iterations a script, into a folder of the test's."""
    env = {**os.environ, "TOUR_ITERATIONS": "2", "TOUR_RESULTS": str(tmp_path / "runs")}
    subprocess.run([sys.executable, "-m", "nbconvert", "--to", "markdown", "--execute", str(TOUR), "--output-dir",
                    str(tmp_path), "--output", "tour"], cwd=ROOT, env=env, check=True, capture_output=True)
    # what each code cell printed and showed: the text between its ```python block and the next cell's
    cells = re.split(r"^```python\n(.*?)\n```$", (tmp_path / "tour.md").read_text(), flags=re.M | re.S)[1:]
    shown = dict(zip(cells[0::2], cells[1::2]))
    trained = [source for source in shown if source.startswith("train(")]
    assert len(trained) == 5
    for source in trained:  # each shows its scores beside the floor, and its sample grid
        assert re.search(r"^ {4}.*model +identity", shown[source], flags=re.M) and ".jpg)" in shown[source], source
    assert ".png)" in cells[-1]  # the ablation runner's plot
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(
        ["ugatit", "attentiongan", "uait", "guidegan", "dagan"])


def test_a_wrong_flag_ends_the_cell_with_the_scripts_one_line_error(tmp_path, monkeypatch):
    nb = nbformat.read(TOUR, as_version=4)
    helper = next(c for c in nb.cells if c.cell_type == "code")
    nb.cells = [helper, nbformat.v4.new_code_cell('train("ugatit.py", "--dataset", "no_such_set")')]
    with pytest.raises(CellExecutionError) as failed:
        run(nb, tmp_path, monkeypatch)
    error = next(o for o in nb.cells[1].outputs if o.output_type == "error")
    assert error.ename == "SystemExit" and "no_such_set" in error.evalue and "\n" not in error.evalue, error
    assert "Traceback" not in str(failed.value)


def test_the_rendered_tour_holds_every_cell_in_order():
    """nbconvert writes a code cell as a ```python block and a markdown cell as itself; the outputs lie between them.
    A cell edited in the notebook and not rendered again fails here: run the command in docs/teaching.md."""
    cells = nbformat.read(TOUR, as_version=4).cells
    rendered = RENDERED.read_text()
    fenced = re.findall(r"^```python\n(.*?)\n```$", rendered, flags=re.M | re.S)
    assert fenced == [c.source for c in cells if c.cell_type == "code"], \
        "docs/tour.md's code differs from the notebook's: render it again (docs/teaching.md)"
    at = 0
    for cell in cells:
        text = f"```python\n{cell.source}\n```" if cell.cell_type == "code" else cell.source
        found = rendered.find(text, at)
        assert found >= 0, f"docs/tour.md lacks this cell after offset {at} (render it again): {cell.source[:200]!r}"
        at = found + len(text)


def test_every_picture_of_the_rendered_tour_exists():
    links = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", RENDERED.read_text())
    assert len(links) >= 6, links  # a sample grid per paper, and the ablation table's plot
    missing = [link for link in links if not (RENDERED.parent / link).is_file()]
    assert not missing, missing
