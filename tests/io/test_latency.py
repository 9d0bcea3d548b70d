"""The measured-latency record: its flat JSON fields round-trip, the GPU's are optional, and
damaged ones are refused naming the field."""

from __future__ import annotations

import pytest

from gfsprune.errors import FileFormatError
from gfsprune.io.latency import BATCHES, MeasuredLatency
from gfsprune.io.schema import Fields


def _fields(value: dict) -> Fields:
    return Fields(value, "results.json", "base", "Delete it.")


@pytest.mark.parametrize("gpu", [{}, dict.fromkeys(BATCHES, 1e-4)])
def test_the_record_round_trips_through_its_flat_fields(gpu) -> None:
    measured = MeasuredLatency(cpu={b: 1e-3 * b for b in BATCHES}, gpu=gpu)
    row = {"acc": 0.5, **measured.to_json()}
    assert MeasuredLatency.read(_fields(row)) == measured == MeasuredLatency.from_json(row)
    assert ("gpu_latency_b64" in row) == bool(gpu)


def test_an_object_without_the_cpu_fields_is_refused_naming_them() -> None:
    with pytest.raises(FileFormatError, match="'base.latency_b64'"):
        MeasuredLatency.read(_fields({"latency_b1": 1e-3}))
    with pytest.raises(FileFormatError, match="'base.gpu_latency_b1'"):
        MeasuredLatency.read(_fields({"latency_b1": 1, "latency_b64": 2, "gpu_latency_b1": "x"}))
