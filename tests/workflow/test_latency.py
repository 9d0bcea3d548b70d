"""Measured latency: on the CPU always, on the job's device too where it is a GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gfsprune.io.latency import BATCHES
from gfsprune.workflow import latency
from gfsprune.workflow.latency import latencies, measure_latency


class _Tokens(nn.Module):
    """Records the batch of token ids it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.batches: list[int] = []

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        self.batches.append(input_ids.shape[0])
        return self.embed(input_ids)


def test_the_model_measured_is_a_copy_and_an_example_input_is_repeated_to_the_batch() -> None:
    model = _Tokens().train()
    seconds = measure_latency(model, {"input_ids": torch.tensor([[1, 2, 3]])}, 8, repeats=3)
    assert seconds > 0
    assert model.training and model.batches == []  # the copy ran, in eval mode


def test_a_cpu_job_measures_the_cpu_only() -> None:
    found = latencies(nn.Linear(4, 2), (4,), "cpu")
    assert set(found.cpu) == set(BATCHES) and found.gpu == {}


def test_a_gpu_job_also_measures_on_its_device(monkeypatch) -> None:
    calls = []

    def fake(model, sample, batch_size, *, device="cpu", repeats=5):
        calls.append((torch.device(device).type, batch_size))
        return 1.0

    monkeypatch.setattr(latency, "measure_latency", fake)
    found = latencies(nn.Linear(4, 2), (4,), torch.device("cuda", 0))
    assert found.cpu == found.gpu == dict.fromkeys(BATCHES, 1.0)
    assert sorted(calls) == sorted((t, b) for t in ("cpu", "cuda") for b in BATCHES)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_latency_waits_for_the_device() -> None:
    model = nn.Sequential(*[nn.Linear(512, 512) for _ in range(8)])
    assert measure_latency(model, (512,), 64, device="cuda") > 0
    assert next(model.parameters()).device.type == "cpu"  # not moved


@pytest.mark.parametrize(("device", "passed"), [("cuda:1", True), ("mps", False)])
def test_synchronize_waits_on_the_device_asked_for(monkeypatch, device, passed) -> None:
    waited = []
    backend = type("Backend", (), {"synchronize": staticmethod(lambda *a: waited.append(a))})
    monkeypatch.setattr(torch, torch.device(device).type, backend, raising=False)
    latency.synchronize(torch.device(device))
    assert waited == [(torch.device(device),) if passed else ()]
    latency.synchronize(torch.device("cpu"))  # nothing to wait for
    assert len(waited) == 1
