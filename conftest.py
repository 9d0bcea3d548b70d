"""Fixtures shared by the whole test suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread_and_seeded() -> Iterator[None]:
    """Run each test on one intra-op thread with ``torch.manual_seed(0)``.

    The suite's models and batches are tiny: a second thread only adds synchronisation, which
    costs 10x or more on a 2-core CI machine whose cores are busy. The seed makes tests that
    draw from torch's global generator independent of the order they run in.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
