"""results.json: the GPU latencies a comparison on a GPU adds are read, damaged ones refused."""

from __future__ import annotations

import json

import pytest

from gfsprune.errors import FileFormatError
from gfsprune.io.results import read_results

_ROW = {
    "macs": 5,
    "params": 2,
    "acc_pruned": 0.5,
    "loss_pruned": 1.0,
    "seconds": 0.1,
    "latency_b1": 1e-3,
    "latency_b64": 2e-2,
    "epochs": {"0": {"acc": 0.5, "loss": 1.0}},
}
_BASE = {"acc": 0.9, "loss": 0.2, "macs": 10, "params": 4, "latency_b1": 2e-3, "latency_b64": 4e-2}


def _write(tmp_path, base: dict, row: dict):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"base": base, "methods": {"gfs": row}}))
    return path


def test_gpu_latencies_are_read_where_the_comparison_measured_them(tmp_path) -> None:
    gpu = {"gpu_latency_b1": 1e-4, "gpu_latency_b64": 3e-4}
    results = read_results(_write(tmp_path, {**_BASE, **gpu}, _ROW))
    assert results["base"]["gpu_latency_b64"] == 3e-4
    assert "gpu_latency_b1" not in results["methods"]["gfs"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("gpu_latency_b64", "fast", "'methods.gfs.gpu_latency_b64'"),
        ("gpu_latency_b8", 1e-3, "unexpected fields ['gpu_latency_b8']"),
    ],
)
def test_a_damaged_gpu_latency_is_refused(tmp_path, field, value, message) -> None:
    with pytest.raises(FileFormatError, match="damaged") as caught:
        read_results(_write(tmp_path, _BASE, {**_ROW, field: value}))
    assert message in str(caught.value)
