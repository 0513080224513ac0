"""Checkpoints that a crash, a full disk or a flipped bit cannot turn into a lost run, and the lock that keeps two
processes out of one run folder.

A run keeps two checkpoints: `latest.pt` and the one before it, `previous.pt`. A save is written to a temporary file
of its own (one per writer), fsynced, and only then rotated in: latest is hard-linked as previous, then the temporary
file renamed over latest. So a kill or a full disk at any moment leaves at least one complete checkpoint, a failed
save leaves nothing behind, and a reader (an evaluation, a copy, a `--phase test` in a copy of the folder) finds a
complete latest.pt at every moment of a save.

Loading verifies what torch does not: the CRC-32 that torch's zip format stores for every record (torch.load reads
flipped bytes inside a tensor without noticing), that the file is a checkpoint of these scripts with every part a
resume needs, that it holds no entry this version does not know (dropping it at the next save would lose it), and
that every weight is finite. A networks-with-NaN checkpoint is never written in the first place.
"""
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there go unlocked
    fcntl = None


class CheckpointError(Exception):
    """A checkpoint that cannot be used, with a one-line message naming the file."""


# What save_checkpoint writes; load refuses anything else rather than drop it at the next save. A resume needs all
# but "amp" (common.amp's loss scales), which checkpoints written before --amp existed lack.
KEYS = ("step", "args", "nets", "optimizers", "schedulers", "pools", "rng", "amp")
REQUIRED = KEYS[:-1]


def nbytes(obj):
    """Bytes of the tensors in a nested state: about the size of its checkpoint."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    return 0


def non_finite(nets):
    """'net.key' of every floating-point tensor holding a NaN or an infinity."""
    return [f"{name}.{k}" for name, state in nets.items() for k, v in state.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]


def previous_of(path):
    return path.with_name("previous.pt")


def save(path, state):
    """Write `state` to `path`, keeping the file it replaces as previous.pt. A failure (disk full, a second Ctrl-C)
    removes the temporary file and leaves the old checkpoints as they were."""
    bad = non_finite(state["nets"])
    if bad:
        raise CheckpointError(f"weights {', '.join(bad[:3])}{' and more' if len(bad) > 3 else ''} are not finite at "
                              f"iteration {state['step']}: not saved")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        rotate_in(tmp, path)
    except (OSError, RuntimeError) as e:  # torch reports a failed write as RuntimeError ("enforce fail ...")
        Path(tmp).unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        raise CheckpointError(f"could not write {path} ({first_line(e)}): a checkpoint needs about "
                              f"{nbytes(state) / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free there; the previous "
                              f"checkpoints are as they were") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rotate_in(tmp, path):
    """The file `path` becomes previous.pt and `tmp` becomes `path`, each by a rename, which replaces its target at
    once: latest.pt never goes missing, as it would if it were moved aside before the new file is moved in."""
    if path.exists():
        link = Path(f"{tmp}.previous")
        os.link(path, link)
        try:
            os.replace(link, previous_of(path))
        finally:
            link.unlink(missing_ok=True)
    os.replace(tmp, path)


def first_line(e):
    """An exception as one line: its type, and its message's first line if it has one (torch's EOFError has none)."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def read(path):
    """The object in a torch file, its stored CRC-32s checked first (zip format; old-format files, such as some of
    the authors' weights, have none to check). Code-executing pickles are refused (weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        if path.stat().st_size == 0:
            raise CheckpointError(f"{path} is empty (a save that never finished?)")
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                damaged = z.testzip()
            if damaged is not None:
                raise CheckpointError(f"{path} is damaged: its record {damaged} fails its CRC-32 check")
        return torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({first_line(e)})") from None


def load(path, parts=REQUIRED):
    """A checkpoint of these scripts holding at least `parts` (a resume needs REQUIRED; weights only 'nets')."""
    state = read(path)
    if not isinstance(state, dict) or not isinstance(state.get("nets"), dict):
        held = f"a dict of {', '.join(map(str, list(state)[:4]))}" if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a checkpoint of these scripts (it holds {held})")
    missing = [k for k in parts if k not in state]
    if missing:
        raise CheckpointError(f"{path} has no {', '.join(missing)}: it cannot be resumed (networks only?)")
    unknown = [k for k in state if k not in KEYS]
    if unknown:
        raise CheckpointError(f"{path} holds {', '.join(unknown)}, which this version does not know (written by a "
                              f"newer one?): resuming would drop it at the next save")
    bad = non_finite(state["nets"])
    if bad:
        raise CheckpointError(f"{path} holds non-finite weights ({', '.join(bad[:3])})")
    return state


def load_latest(path, parts=REQUIRED):
    """latest.pt, or previous.pt with a message when latest.pt is missing or damaged (the damaged one is kept aside
    as latest.pt.damaged, so the next save does not rotate it in as previous.pt)."""
    previous = previous_of(path)
    try:
        return load(path, parts)
    except CheckpointError as e:
        if not previous.exists():
            raise
        state = load(previous, parts)
        if path.exists():
            os.replace(path, path.with_name(path.name + ".damaged"))
        print(f"{e}; using {previous} (iteration {state['step']}) instead")
        return state


def exists(path):
    return path.exists() or previous_of(path).exists()


class RunLock:
    """An exclusive lock on the run folder, held while the process lives (fcntl.flock: the kernel releases it when
    the process dies, so a killed run leaves no stale lock). The file names the holder for the refusal message."""

    def __init__(self, folder):
        self.path = Path(folder) / ".lock"

    def __enter__(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "a+")
        except OSError as e:
            raise CheckpointError(f"cannot write in {self.path.parent} ({first_line(e)}): choose another "
                                  f"--result_dir") from None
        if fcntl is None:
            return self
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise CheckpointError(f"{self.path.parent} is in use by {holder}: wait for it to finish, stop it, or "
                                  f"choose another --result_dir") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"process {os.getpid()}")
        self.file.flush()
        return self

    def __exit__(self, *_):
        self.file.close()
