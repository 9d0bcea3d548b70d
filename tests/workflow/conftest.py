"""A trained and a pruned digits model, shared by the command-line tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from gfsprune.workflow.cli import main
from tests.workflow.runs import FAST


@contextmanager
def _one_thread() -> Iterator[None]:
    """Session fixtures run outside conftest's one-thread setting; tiny models are fastest on
    one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A digits CNN at half width, trained for two epochs."""
    out = tmp_path_factory.mktemp("cli") / "model"
    with _one_thread():
        argv = ["train", "--model", "digits_cnn", "--data", "digits", "--epochs", "2"]
        assert main([*argv, "--width-mult", "0.5", "--lr", "0.05", "--out", str(out), *FAST]) == 0
    return out


@pytest.fixture(scope="session")
def pruned(trained: Path) -> Path:
    """The trained model pruned to half its MACs."""
    out = trained.parent / "pruned"
    with _one_thread():
        argv = ["prune", "--model-dir", str(trained), "--macs", "0.5", "--out", str(out)]
        assert main([*argv, *FAST]) == 0
    return out
