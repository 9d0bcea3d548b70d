"""Targets check their parameters when made (one-line errors naming the fix)."""

from __future__ import annotations

import pytest

from gfsprune import Latency
from gfsprune.core.latency_cost import LatencyCost
from gfsprune.errors import ConfigError


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ratio": 1.5}, "'ratio' parameter of Latency must be a float in the open interval"),
        ({"ratio": 0.5, "batch": 0}, "'batch' parameter of Latency must be a positive integer"),
        ({"ratio": 0.5, "batch": 2.0}, "'batch' parameter of Latency must be a positive integer"),
        ({"ratio": 0.5, "channels_last": "yes"}, "'channels_last' parameter of Latency must be"),
    ],
)
def test_latency_refuses_bad_parameters(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Latency(**options)


def test_latency_budgets_the_latency_metric_of_a_latency_cost_model_at_its_batch() -> None:
    target = Latency(0.5, batch=64, channels_last=True)
    factory = target.cost_model()
    assert target.metric == "latency"
    assert factory.func is LatencyCost
    assert factory.keywords == {"batch": 64, "channels_last": True}
