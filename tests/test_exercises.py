"""Every command of docs/exercises.md runs, at a tiny budget: the same scripts, flags and runner rows, fewer
iterations on smaller networks, so a renamed flag or a removed row fails here. The text is the one place the
commands live; this file only shrinks them."""
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT

EXERCISES = ROOT / "docs/exercises.md"
PAPERS = ("ugatit", "attentiongan", "uait", "guidegan", "dagan")
# Per script: the flags that make its networks tiny (each script's tests use the same).
TINY = {"ugatit": ["--img_size", "32", "--ch", "4", "--n_res", "1", "--n_dis", "4"],
        "attentiongan": ["--img_size", "32", "--ch", "4", "--ndf", "8", "--n_res", "1", "--n_masks", "3"],
        "uait": ["--img_size", "32", "--ch", "4", "--n_res", "1"],
        "guidegan": ["--img_size", "32", "--ngf", "4", "--ndf", "4", "--n_res", "1"],
        "dagan": ["--ch", "4", "--n_res", "1"]}
SHORT = ["--iteration", "2", "--print_freq", "1", "--save_freq", "1"]


def exercises():
    """{"<heading>": [command, ...]} for every ### heading of the file, from its ```bash blocks."""
    found, heading, in_block = {}, None, False
    for line in EXERCISES.read_text().splitlines():
        if line.startswith("### "):
            heading = line[4:].strip()
        elif line.strip() == "```bash":
            in_block = True
        elif line.strip() == "```":
            in_block = False
        elif in_block and line.strip():
            found.setdefault(heading, []).append(line.strip())
    return found


def tiny(command):
    """The command at a tiny budget, as an argv."""
    argv = shlex.split(command, comments=True)
    assert argv[0] == "python", f"{command!r}: exercises run python commands only"
    target, rest = argv[1], argv[2:]
    if target == "-c":
        return [sys.executable, *argv[1:]]
    name = target.removesuffix(".py")
    if name in PAPERS:
        return [sys.executable, str(ROOT / target), *rest, *TINY[name], *SHORT]
    if target == "benchmarks/ablation.py":
        script, options = rest[0], rest[1:]
        before, extra = (options[:options.index("--")], options[options.index("--") + 1:]) if "--" in options \
            else (options, [])
        # the runner's default folder, runs/ablation/<script>, but inside the exercise's folder
        out = [] if "--out" in before else ["--out", f"runs/ablation/{script}"]
        return [sys.executable, str(ROOT / target), script, *before, *out, "--seeds", "1", "--iteration", "2",
                "--jobs", "1", "--", *extra, *TINY[script]]
    return [sys.executable, str(ROOT / target), *rest]


def test_the_file_has_exercises():
    found = exercises()
    assert found and all(re.match(r"^\S.* \d+\. ", heading) for heading in found), list(found)


@pytest.mark.parametrize("heading", list(exercises()))
def test_exercise_commands_run(heading, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for step, command in enumerate(exercises()[heading], 1):
        p = subprocess.run(tiny(command), cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
        assert p.returncode == 0, f"exercise {heading!r}, step {step} ({command}): {p.stderr[-2000:]}"


def test_the_teaching_page_indexes_every_exercise():
    """docs/teaching.md's index has a row per ### heading of docs/exercises.md, in order, linking its anchor (GitHub's:
    lower case, punctuation dropped, spaces to hyphens), and every link into exercises.md names a heading."""
    headings = [line[4:].strip() for line in EXERCISES.read_text().splitlines() if line.startswith("### ")]
    anchors = [re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings]
    teaching = (ROOT / "docs/teaching.md").read_text()
    rows = [re.match(r"\| \[.*?\]\(exercises\.md#([\w-]+)\)", line) for line in teaching.splitlines()]
    assert [row[1] for row in rows if row] == anchors
    assert set(re.findall(r"\(exercises\.md#([\w-]+)\)", teaching)) <= set(anchors)
