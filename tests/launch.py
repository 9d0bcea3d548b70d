"""Starting test programs in two gloo processes with torchrun, on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys

#: The repository root, so that a test program can import the suite's own helpers (``tests.``).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Environment for the processes: one thread each, GPUs hidden so that gloo runs on the CPU.
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "CUDA_VISIBLE_DEVICES": "",
    "PYTHONPATH": os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p),
}


def torchrun(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 ARGV`` (a script path or ``-m module``)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*command, *argv], env=ENV, capture_output=True, text=True, timeout=timeout
    )
