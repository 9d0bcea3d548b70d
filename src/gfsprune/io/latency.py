"""Measured latency as one typed record: what the jobs return, the reports print and
``results.json`` stores.

In JSON (a row of ``results.json``) the record is flat fields, one per batch size of
:data:`BATCHES`: ``latency_b1``, ``latency_b64`` (seconds on the CPU) and, where the job ran
on a GPU, ``gpu_latency_b1``, ``gpu_latency_b64``. :meth:`MeasuredLatency.to_json` writes
them and :meth:`MeasuredLatency.read` is their one reader.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gfsprune.io.schema import Fields

__all__ = ["BATCHES", "MeasuredLatency"]

#: The batch sizes every report measures: one sample (interactive use) and 64 (throughput).
BATCHES = (1, 64)
_DEVICES = {"cpu": "", "gpu": "gpu_"}  # the record's field and its prefix in JSON


def _key(device: str, batch: int) -> str:
    return f"{_DEVICES[device]}latency_b{batch}"


@dataclass(frozen=True)
class MeasuredLatency:
    """Median seconds of one forward pass at each batch size of :data:`BATCHES`.

    Attributes:
        cpu: ``{batch: seconds}`` on the CPU, with torch's thread count.
        gpu: ``{batch: seconds}`` on the job's GPU; empty where it ran on the CPU.
    """

    cpu: Mapping[int, float]
    gpu: Mapping[int, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, float]:
        """The flat fields: ``latency_b1``, ..., ``gpu_latency_b64`` (the GPU's where measured).

        Example:
            >>> MeasuredLatency(cpu={1: 0.5, 64: 2.0}).to_json()
            {'latency_b1': 0.5, 'latency_b64': 2.0}
        """
        return {
            _key(device, batch): seconds
            for device in _DEVICES
            for batch, seconds in getattr(self, device).items()
        }

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> MeasuredLatency:
        """The record in ``row``'s flat fields (other fields ignored; missing ones absent)."""
        found = {
            device: {b: row[_key(device, b)] for b in BATCHES if _key(device, b) in row}
            for device in _DEVICES
        }
        return cls(**found)

    @staticmethod
    def keys(fields: Fields) -> tuple[str, ...]:
        """The latency fields an object must hold: the CPU's, and those of the GPU's that it
        holds (measured where the job ran on one)."""
        cpu = tuple(_key("cpu", b) for b in BATCHES)
        return cpu + tuple(
            _key("gpu", b) for b in BATCHES if fields.get(_key("gpu", b)) is not None
        )

    @classmethod
    def read(cls, fields: Fields) -> MeasuredLatency:
        """The record in an object's flat fields (:meth:`keys`), each a finite number.

        Raises:
            FileFormatError: a field is missing or not a number, naming the file and field.
        """
        keys = set(cls.keys(fields))
        found = {
            device: {
                b: fields[_key(device, b)].number() for b in BATCHES if _key(device, b) in keys
            }
            for device in _DEVICES
        }
        return cls(**found)
