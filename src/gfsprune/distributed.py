"""Thin helpers over ``torch.distributed`` that are no-ops in a single process.

Launch a script with ``torchrun --nproc_per_node=K script.py`` and call :func:`setup` first;
``gfsprune.workflow.train.fit`` then trains with DistributedDataParallel on its own.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "all_gather",
    "barrier",
    "broadcast_module",
    "is_distributed",
    "is_main",
    "rank",
    "setup",
    "teardown",
    "world_size",
]


def setup() -> bool:
    """Join the process group that torchrun describes in the environment.

    Uses NCCL when CUDA is available (one GPU per process, picked by ``LOCAL_RANK``) and Gloo
    on CPU. Does nothing outside torchrun (no ``WORLD_SIZE`` variable) or when already joined.

    Returns:
        Whether this process is now part of a process group.

    Example:
        >>> setup()  # a plain ``python`` run
        False
    """
    if is_distributed():
        return True
    if "WORLD_SIZE" not in os.environ:
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return True


def teardown() -> None:
    """Leave the process group, if any."""
    if is_distributed():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """Whether a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 in a single process)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 in a single process)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes files and shows progress."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process reaches this point."""
    if is_distributed():
        dist.barrier()


def all_gather(values: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """Every process's ``values`` (same shape on each), stacked: (world_size, *shape).

    A float list becomes a tensor on the backend's device (CUDA for NCCL, else CPU); a tensor
    stays on its device.

    Example:
        >>> all_gather([1.0, 2.0])  # a single process
        tensor([[1., 2.]])
    """
    if not isinstance(values, torch.Tensor):
        cuda = is_distributed() and dist.get_backend() == "nccl"
        values = torch.tensor(values, device="cuda" if cuda else "cpu")
    if not is_distributed():
        return values.unsqueeze(0)
    parts = [torch.empty_like(values) for _ in range(world_size())]
    dist.all_gather(parts, values.contiguous())
    return torch.stack(parts)


def broadcast_module(module: nn.Module, *, src: int = 0) -> None:
    """Overwrite every parameter and buffer of ``module`` with those of process ``src``."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src)
