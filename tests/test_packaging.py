"""pyproject.toml declares what requirements.txt and requirements-test.txt do, so `pip install -e .[test]` and the
README's set-up commands install the same things."""
import re

import pytest

from conftest import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11 on


def requirements(name):
    lines = (line.split("#")[0].strip() for line in (ROOT / name).read_text().splitlines())
    return [normal(line) for line in lines if line and not line.startswith("-r")]


def normal(requirement):
    return re.sub(r"\s+", "", requirement).replace("'", '"')


def test_pyproject_declares_the_requirements_files():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert [normal(r) for r in project["dependencies"]] == requirements("requirements.txt")
    assert [normal(r) for r in project["optional-dependencies"]["test"]] == requirements("requirements-test.txt")


def test_pyproject_names_every_paper_script_and_package():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    scripts = sorted(p.stem for p in ROOT.glob("*.py"))
    inits = [*ROOT.glob("*/__init__.py"), *ROOT.glob("*/*/__init__.py")]  # common/datasets/ too, no deeper venv
    packages = sorted(".".join(p.relative_to(ROOT).parent.parts) for p in inits)
    assert sorted(setuptools["py-modules"]) == scripts and sorted(setuptools["packages"]) == packages
