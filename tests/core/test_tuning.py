"""Tuning after each pruned layer trains the masked network and replays on resume."""

from __future__ import annotations

import pytest
import torch

from gfsprune import LayerTuning, PruneConfig
from gfsprune.errors import ConfigError
from tests.core.test_refit import _batches, prune_half
from tests.nets import Chain, randomize_norms


def test_tuning_trains_the_masked_network_and_resumes_to_the_same_weights(tmp_path) -> None:
    torch.manual_seed(0)
    model = randomize_norms(Chain(width=16))
    data = _batches(model, 4, 8)
    tuned = PruneConfig(candidates=4, tuning=LayerTuning(steps=3, lr=0.05))
    plain = prune_half(model, data, PruneConfig(candidates=4))
    first = prune_half(model, data, tuned, checkpoint=tmp_path / "p.json")
    assert first.plan[0].kept == plain.plan[0].kept  # tuning starts after the first choice
    assert not torch.allclose(first.model.c1.weight, plain.model.c1.weight)
    resumed = prune_half(model, data, tuned, checkpoint=tmp_path / "p.json")
    for a, b in zip(
        first.model.state_dict().values(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="'steps' parameter of LayerTuning"):
        LayerTuning(steps=0)
    with pytest.raises(ConfigError, match="'lr' parameter of LayerTuning"):
        LayerTuning(steps=1, lr=-1.0)
    with pytest.raises(ConfigError, match="'tuning' option of PruneConfig"):
        PruneConfig(tuning=3)
