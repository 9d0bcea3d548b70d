from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from gfsprune import distributed
from tests.launch import torchrun

# Run by torchrun in each of two processes: every rank starts from different weights (DDP
# must broadcast rank 0's) and trains one epoch; each saves what all ranks ended with.
WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import torch
    from torch import nn

    from gfsprune import distributed
    from gfsprune.workflow.data import load_data
    from gfsprune.workflow.train import TrainConfig, fit

    out = Path(sys.argv[1])
    assert distributed.setup()
    torch.manual_seed(distributed.rank())
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10),
    )
    config = TrainConfig(epochs=1, batch_size=32, lr=0.05)
    data = load_data("synthetic:200")
    history = fit(model, data, config, checkpoint=out / "train_state.pt", progress=False)
    weights = torch.cat([t.flatten().double() for t in model.state_dict().values()])
    torch.save(
        {
            "weights": distributed.all_gather(weights),
            "ranks": distributed.all_gather([float(distributed.rank())]),
            "world": distributed.world_size(),
            "history": history,
        },
        out / f"rank{distributed.rank()}.pt",
    )
    distributed.barrier()
    distributed.teardown()
    """
)


def test_single_process_helpers_are_no_ops() -> None:
    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    distributed.barrier()
    torch.testing.assert_close(distributed.all_gather([1.0, 2.0]), torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(distributed.all_gather(torch.ones(2, 3)), torch.ones(1, 2, 3))
    net = nn.Linear(2, 2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    distributed.broadcast_module(net)
    torch.testing.assert_close(net.state_dict(), before)


def test_setup_outside_torchrun(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.setup() is False
    assert not distributed.is_distributed()


@pytest.mark.slow
def test_two_gloo_processes_end_with_identical_weights(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    done = torchrun(str(script), str(tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for result in results:
        assert result["world"] == 2
        torch.testing.assert_close(result["ranks"], torch.tensor([[0.0], [1.0]]))
        gathered = result["weights"]
        torch.testing.assert_close(gathered[0], gathered[1], rtol=0, atol=0)
    (epoch,), (other,) = results[0]["history"], results[1]["history"]
    assert {**epoch, "seconds": 0} == {**other, "seconds": 0}  # all-reduced metrics
    assert epoch["train_loss"] > 0 and 0 <= epoch["test_acc"] <= 1
    saved = torch.load(tmp_path / "train_state.pt", weights_only=True)
    torch.testing.assert_close(
        torch.cat([t.flatten().double() for t in saved["model"].values()]),
        results[0]["weights"][0],
    )
