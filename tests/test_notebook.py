"""notebooks/tour.ipynb is committed without outputs and runs top to bottom through nbclient (the Jupyter project's
notebook runner), at 2 iterations per script; a user's wrong input ends a cell with the script's one-line error."""
import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from conftest import ROOT

TOUR = ROOT / "notebooks/tour.ipynb"


def run(nb, tmp_path, monkeypatch):
    monkeypatch.setenv("TOUR_ITERATIONS", "2")
    monkeypatch.setenv("TOUR_RESULTS", str(tmp_path / "runs"))
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    return nb


def outputs(cell, kind):
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == kind)


def test_the_notebook_is_committed_without_outputs():
    code = [c for c in nbformat.read(TOUR, as_version=4).cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def test_the_tour_runs_top_to_bottom(tmp_path, monkeypatch):
    nb = run(nbformat.read(TOUR, as_version=4), tmp_path, monkeypatch)
    trained = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("train(")]
    assert len(trained) == 5
    for cell in trained:  # each shows its scores beside the floor, and its sample grid
        assert "identity" in outputs(cell, "stdout"), cell.source
        assert any("image/jpeg" in o.get("data", {}) for o in cell.outputs), cell.source
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    assert any("image/png" in o.get("data", {}) for o in last.outputs)  # the ablation runner's plot
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
