"""Tuning after each pruned layer trains the masked network and replays on resume."""

from __future__ import annotations

import pytest
import torch

from gfsprune import LayerTuning, Macs, PruneConfig, prune
from gfsprune.errors import ConfigError
from tests.core.test_refit import LOSS, _batches
from tests.nets import Chain, randomize_norms


def test_tuning_trains_the_masked_network_and_resumes_to_the_same_weights(tmp_path) -> None:
    torch.manual_seed(0)
    model = randomize_norms(Chain(width=16))
    data = _batches(model, 4, 8)
    x = data[0][0][:1]
    tuned = PruneConfig(candidates=4, tuning=LayerTuning(steps=3, lr=0.05))

    def run(config: PruneConfig, **options):
        return prune(
            model,
            data,
            x,
            target=Macs(0.5),
            config=config,
            loss_fn=LOSS,
            progress=False,
            **options,
        )

    plain, first = run(PruneConfig(candidates=4)), run(tuned, checkpoint=tmp_path / "p.json")
    assert first.plan[0].kept == plain.plan[0].kept  # tuning starts after the first choice
    assert not torch.allclose(first.model.c1.weight, plain.model.c1.weight)
    resumed = run(tuned, checkpoint=tmp_path / "p.json")
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
