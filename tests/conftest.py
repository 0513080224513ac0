import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels run in Triton's interpreter, on CPU tensors (set before triton is imported).
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The scripts' evaluations train their scoring networks once per folder: one folder for the whole session.
os.environ.setdefault("ATTNGAN_SCORERS", tempfile.mkdtemp(prefix="attngan-scorers-"))

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
