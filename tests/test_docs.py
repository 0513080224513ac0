"""The docs cannot rot: every command in a ```bash block of README.md and docs/*.md runs here, and every relative
link resolves.

Commands run as a reader types them, from the root of a fresh copy of the repository, one copy per heading: the
commands under one heading run in order, so a probe may read the checkpoint a training command above it wrote. Each
training command gets tiny networks and 2 iterations appended. A command that needs what this machine cannot have
(a real data set, a download, a GPU, a weights file) runs as is and must stop with the script's one-line error,
exit status 2, which is what a reader without those sees. The notebook's rendering (python -m nbconvert) runs in
tests/test_notebook.py, which also reads what it printed. A training command starts a fresh run, as each of the
alternatives a block lists does when typed on its own: the run folder an earlier command of the heading left is
removed first. `pip install` and `python -m pytest` are not run: CI's
own first step is the README's test command (checked against .ci/run below)."""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.datasets import EMBEDDED
from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PAPERS = ("ugatit", "attentiongan", "uait", "guidegan", "dagan")
# Per script: the flags that make its networks tiny (each script's tests use the same).
TINY = {"ugatit": ["--img_size", "32", "--ch", "4", "--n_res", "1", "--n_dis", "4"],
        "attentiongan": ["--img_size", "32", "--ch", "4", "--ndf", "8", "--n_res", "1", "--n_masks", "3"],
        "uait": ["--img_size", "32", "--ch", "4", "--n_res", "1"],
        "guidegan": ["--img_size", "32", "--ngf", "4", "--ndf", "4", "--n_res", "1"],
        "dagan": ["--ch", "4", "--n_res", "1"]}
SHORT = ["--iteration", "2", "--print_freq", "1", "--save_freq", "1"]
# A download goes to a closed port on this machine: the script's error, and no traffic leaves it.
ENV = {"OMP_NUM_THREADS": "1", "TOUR_ITERATIONS": "2", "ATTNGAN_DOWNLOAD_URL": "http://127.0.0.1:9/none.zip"}


def sections(page):
    """[(heading, [command, ...])] for every heading of the page whose ```bash blocks hold commands."""
    found, heading, block, pending = {}, page.name, False, ""
    for line in page.read_text().splitlines():
        if line.strip().startswith("```"):
            block = line.strip() == "```bash"
        elif block:
            line = pending + line.strip()
            pending = line[:-1] + " " if line.endswith("\\") else ""
            if line and not pending and not line.startswith("#"):
                found.setdefault(heading, []).append(line)
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
    return list(found.items())


def cases():
    """Each distinct list of commands once (the README repeats some of a page's), named by its first place."""
    seen = {}
    for page in PAGES:
        for heading, commands in sections(page):
            seen.setdefault(tuple(commands), f"{page.relative_to(ROOT)}: {heading}")
    return [pytest.param(list(commands), id=name) for commands, name in seen.items()]


def needs_outside(argv, cwd):
    """What this machine cannot give the command, or None: a real data set, a download, a GPU, a weights file."""
    for flag, value in zip(argv, argv[1:]):
        if flag in ("--dataset", "--data") and value not in EMBEDDED and not (cwd / value).exists():
            return f"the data set {value}"
        if flag == "--device" and value.startswith("cuda") and not torch.cuda.is_available():
            return "a GPU"
        if flag in ("--weights", "--fid_weights") and not (cwd / value).exists():
            return f"the file {value}"
    if "--download" in argv:
        return "a download"
    if argv[:3] == [sys.executable, "-m", "common.fid"] and not all((cwd / a).exists() for a in argv[3:5]):
        return "real images"
    return None


def tiny(argv):
    """A python command at a tiny budget, as an argv; None for one this file does not run."""
    if argv[:3] == ["python", "-m", "pytest"]:
        return None
    target, rest = argv[1], argv[2:]
    name = target.removesuffix(".py")
    if name in PAPERS:
        return [sys.executable, target, *rest, *TINY[name], *SHORT]
    if target == "benchmarks/ablation.py":
        script, options = rest[0], rest[1:]
        before, extra = (options[:options.index("--")], options[options.index("--") + 1:]) if "--" in options \
            else (options, [])
        return [sys.executable, target, script, *before, "--seeds", "1", "--iteration", "2", "--jobs", "1", "--",
                *extra, *TINY[script], "--iteration", "2"]  # the last --iteration wins over one in extra
    if target == "benchmarks/train_step.py":
        return [sys.executable, target, *rest, *TINY[rest[0]], "--steps", "1", "--warmup", "0"]
    return [sys.executable, *argv[1:]]


def commands(line):
    """The runnable parts of one documented line: [(argv, env)], the `&&` parts split, a `|` and what follows cut."""
    out = []
    for part in re.split(r"\s*&&\s*", line):
        argv = shlex.split(part, comments=True)
        if "|" in argv:
            argv = argv[:argv.index("|")]
        env = {}
        while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):
            key, value = argv.pop(0).split("=", 1)
            env[key] = value
        if not argv or argv[0] == "pip" or argv[:3] == ["python", "-m", "nbconvert"]:
            continue  # the notebook's rendering runs in tests/test_notebook.py, which reads what it printed
        if argv[0] == "python":
            argv = tiny(argv)
        elif argv[0] == "torchrun":
            script = next(i for i, a in enumerate(argv) if a.endswith(".py"))
            argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:script],
                    *tiny(["python", *argv[script:]])[1:]]
        elif argv[0] not in ("cp", "mkdir", "bash"):
            pytest.fail(f"{line!r}: a command this test does not know how to run; see its docstring")
        if argv:
            out.append((argv, env))
    return out


def start_fresh(argv, repo):
    """Removes the run folder a paper script's training command writes, unless it resumes or tests a run."""
    name = Path(argv[1]).stem if len(argv) > 1 else ""
    flags = dict(zip(argv, argv[1:]))
    if name in PAPERS and "--resume" not in argv and flags.get("--phase", "train") == "train":
        shutil.rmtree(repo / flags.get("--result_dir", "runs") / name, ignore_errors=True)


def copy_of_the_repository(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(".git", "runs", "dataset", "results", "__pycache__",
                                                              ".pytest_cache", "*.egg-info"))
    return repo


@pytest.mark.parametrize("lines", cases())
def test_documented_commands_run(lines, tmp_path):
    repo = copy_of_the_repository(tmp_path)
    env = {**os.environ, **ENV, "PYTHONPATH": str(repo)}
    for line in lines:
        for argv, extra in commands(line):
            outside = needs_outside(argv, repo)
            if outside and argv[1:3] == ["-m", "torch.distributed.run"]:  # the one-line error comes from the script
                argv = [sys.executable, *argv[next(i for i, a in enumerate(argv) if a.endswith(".py")):]]
            start_fresh(argv, repo)
            gpu_check = argv[:2] == ["bash", "benchmarks/gpu_check.sh"] and not torch.cuda.is_available()
            p = subprocess.run(argv, cwd=repo, env={**env, **extra}, capture_output=True, text=True, timeout=900)
            said = [s for s in p.stderr.splitlines() if s.strip()]
            if outside or gpu_check:
                # the documented way it fails without what it needs: one line that says what to do, no traceback
                assert p.returncode == (1 if gpu_check else 2) and len(said) == 1, \
                    f"{line!r} needs {outside or 'a GPU'}: want its one-line error, got {p.returncode}: {p.stderr[-2000:]}"
            else:
                assert p.returncode == 0, f"{line!r} ({shlex.join(argv)}): {p.stderr[-2000:]}"


def test_the_readme_starts_with_the_two_set_up_commands_and_ci_runs_the_second():
    first = next(commands for heading, commands in sections(ROOT / "README.md"))
    install_and_run, install_and_test = (shlex.split(c, comments=True) for c in first[:2])
    assert "python ugatit.py" in shlex.join(install_and_run)
    ci = (ROOT / ".ci/run").read_text().strip().splitlines()[-1]
    assert shlex.join(install_and_test) == shlex.join(shlex.split(ci))


def anchors(page):
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to '-', repeats numbered."""
    seen, out, block = {}, set(), False
    for line in page.read_text().splitlines():
        if line.strip().startswith("```"):
            block = not block
        elif not block and re.match(r"#{1,6} ", line):
            slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return out


def links(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text) + re.findall(r'src="([^"]+)"', text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(target)
    assert not broken, f"{page.name}: {broken}"
