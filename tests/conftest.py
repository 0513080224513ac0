import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels run in Triton's interpreter, on CPU tensors (set before triton is imported).
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The scripts the tests start run on one CPU thread. With two, on a loaded machine, a process now and then takes
# another summation order in some kernel: measured on guidegan.py's tiny run, 1 of 8 runs' first loss differed in
# the sixth digit (2.476240 against 2.476257) with two threads, 0 of 8 with one, which is what made the exact-resume
# tests fail by chance. One thread each is also far faster when two processes share the two cores. This session
# keeps its own thread count (read before the variable is set).
torch.get_num_threads()
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

# The scripts' evaluations train their scoring networks once per folder: one folder for the whole session, made
# where the session starts (pytest-xdist's workers inherit it, and take turns on its lock files) and removed at exit.
if "ATTNGAN_SCORERS" not in os.environ:
    os.environ["ATTNGAN_SCORERS"] = tempfile.mkdtemp(prefix="attngan-scorers-")
    atexit.register(shutil.rmtree, os.environ["ATTNGAN_SCORERS"], True)

# No FID Inception weights from the user's machine: with them, every test phase would add its KID and FID
# (common.fid), minutes on CPU. tests/test_fid.py makes its own.
os.environ.pop("ATTNGAN_FID_WEIGHTS", None)
os.environ["TORCH_HOME"] = os.path.join(os.environ["ATTNGAN_SCORERS"], "torch_home")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def strided(t):
    """t's values in a tensor that is not contiguous: every other element of one twice as wide, which the kernels,
    indexing dense NCHW, would read wrongly without their .contiguous() calls. Requires grad if t does."""
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], device=t.device, dtype=t.dtype)
    wide[..., ::2] = t.detach()
    return wide[..., ::2].requires_grad_(t.requires_grad)


def layouts_agree(out, ref):
    """The kernels' output has the reference's type, shape and strides."""
    return out.dtype == ref.dtype and out.shape == ref.shape and out.stride() == ref.stride()
