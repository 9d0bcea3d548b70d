from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from gfsprune.errors import ConfigError, DataError, LossError, ModelError
from gfsprune.workflow import train
from gfsprune.workflow.data import load_data
from gfsprune.workflow.train import TrainConfig, evaluate, fit, param_groups


def tiny_net(in_channels: int = 1, classes: int = 10, *, seed: int = 0) -> nn.Module:
    """Two conv layers with BN, global pooling and a linear head."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, classes),
    )


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


@pytest.fixture(scope="module")
def synthetic():
    return load_data("synthetic:200")


def test_training_on_digits_improves_accuracy(digits) -> None:
    net = tiny_net()
    before, _ = evaluate(net, digits.test)
    history = fit(net, digits, TrainConfig(epochs=3, batch_size=64), progress=False)
    assert before < 0.2
    assert history[-1]["test_acc"] > 0.4
    assert history[-1]["test_acc"] == pytest.approx(evaluate(net, digits.test)[0])
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert [h["epoch"] for h in history] == [1, 2, 3]


def test_cosine_schedule_with_warmup(synthetic) -> None:
    config = TrainConfig(epochs=4, batch_size=40, lr=0.2, warmup_epochs=1)
    lrs = [h["lr"] for h in fit(tiny_net(3), synthetic, config, progress=False)]
    # 4 steps per epoch: warm-up ends at 0.2 after epoch 1, then cos falls to 0 over 12 steps
    expected = [0.2, 0.2 * (1 + 0.5) / 2, 0.2 * (1 - 0.5) / 2, 0.0]
    assert lrs == pytest.approx(expected, abs=1e-9)


def test_resume_gives_the_same_weights(synthetic, tmp_path: Path, monkeypatch) -> None:
    # on CPU: CUDA repeats runs exactly only under torch.use_deterministic_algorithms(True)
    config = TrainConfig(epochs=3, batch_size=32, lr=0.05)
    options = {"progress": False, "device": "cpu"}
    state = tmp_path / "train_state.pt"
    straight = tiny_net(3)
    straight_history = fit(straight, synthetic, config, **options)

    real_evaluate = train.evaluate
    calls = []

    def crash_in_epoch_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_net(3), synthetic, config, checkpoint=state, **options)
    monkeypatch.undo()
    saved = torch.load(state, weights_only=True)
    assert saved["epoch"] == 2 and not list(tmp_path.glob("*.tmp"))

    resumed = tiny_net(3, seed=1)  # another initialisation: the checkpoint must overwrite it
    resumed_history = fit(resumed, synthetic, config, checkpoint=state, resume=True, **options)
    torch.testing.assert_close(resumed.state_dict(), straight.state_dict(), rtol=0, atol=0)
    drop_time = [{k: v for k, v in h.items() if k != "seconds"} for h in resumed_history]
    assert drop_time == [{k: v for k, v in h.items() if k != "seconds"} for h in straight_history]


def test_resume_rejects_changed_options(synthetic, tmp_path: Path) -> None:
    state = tmp_path / "train_state.pt"
    config = TrainConfig(epochs=1, batch_size=64)
    fit(tiny_net(3), synthetic, config, checkpoint=state, progress=False)
    with pytest.raises(ConfigError, match=r"written with epochs=1 \(now 2\), lr=0.1 \(now 0.05\)"):
        config = TrainConfig(epochs=2, batch_size=64, lr=0.05)
        fit(tiny_net(3), synthetic, config, checkpoint=state, resume=True, progress=False)
    with pytest.raises(ModelError, match=r"checkpoint '.*train_state.pt' does not fit this model"):
        config = TrainConfig(epochs=1, batch_size=64)
        linear = nn.Sequential(nn.Flatten(), nn.Linear(768, 10))
        fit(linear, synthetic, config, checkpoint=state, resume=True, progress=False)


def test_resume_of_a_finished_or_missing_run(synthetic, tmp_path: Path) -> None:
    state = tmp_path / "train_state.pt"
    config = TrainConfig(epochs=1, batch_size=64)
    first = fit(tiny_net(3), synthetic, config, checkpoint=state, resume=True, progress=False)
    net = tiny_net(3)
    with torch.no_grad():
        net[0].weight.zero_()
    again = fit(net, synthetic, config, checkpoint=state, resume=True, progress=False)
    assert again == first and net[0].weight.abs().sum() > 0  # loaded, not retrained
    state.write_bytes(b"broken")
    with pytest.raises(ModelError, match=r"cannot read checkpoint '.*'.*delete it to start over"):
        fit(net, synthetic, config, checkpoint=state, resume=True, progress=False)
    with pytest.raises(ConfigError, match="resume=True needs the checkpoint"):
        fit(net, synthetic, config, resume=True, progress=False)


def test_param_groups_skip_bn_and_bias() -> None:
    net = tiny_net()
    decay, no_decay = param_groups(net, 4e-5)
    assert decay["weight_decay"] == 4e-5 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in decay["params"]}
    assert ids == {id(net[0].weight), id(net[3].weight), id(net[8].weight)}
    bn_and_bias = [net[0].bias, net[1].weight, net[1].bias, net[3].bias, net[4].weight]
    assert {id(p) for p in bn_and_bias} <= {id(p) for p in no_decay["params"]}
    assert len(no_decay["params"]) == 7
    net.requires_grad_(False)
    with pytest.raises(ModelError, match="no trainable parameters"):
        param_groups(net, 0.0)


class NanNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)
        self.steps = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Finite logits, except from the fourth training step on."""
        self.steps += self.training
        out = self.linear(x.flatten(1))
        return out * float("nan") if self.steps >= 4 else out


def test_nan_loss_names_the_step(digits) -> None:
    with pytest.raises(
        LossError, match=r"became nan at epoch 1, step 4 with lr 0\.0989.*\(e\.g\. lr=0\.00989\)"
    ):
        fit(NanNet(), digits, TrainConfig(epochs=2, batch_size=64), progress=False)


def test_model_must_fit_the_data(digits) -> None:
    with pytest.raises(DataError, match="model predicts 5 classes but data 'digits' has 10"):
        fit(tiny_net(classes=5), digits, TrainConfig(epochs=1), progress=False)
    with pytest.raises(ModelError, match=r"cannot take 'digits' images of shape \(1, 8, 8\)"):
        fit(tiny_net(in_channels=3), digits, TrainConfig(epochs=1), progress=False)


def test_empty_training_set(digits) -> None:
    empty = dataclasses.replace(digits, train=Subset(digits.train, []))
    with pytest.raises(DataError, match="the train set of 'digits' is empty"):
        fit(tiny_net(), empty, TrainConfig(epochs=1), progress=False)


def test_progress_bar_only_when_asked(synthetic, capsys) -> None:
    config = TrainConfig(epochs=1, batch_size=64)
    fit(tiny_net(3), synthetic, config, progress=False)
    assert capsys.readouterr().err == ""
    fit(tiny_net(3), synthetic, config, progress=True)
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "loss=" in err and "test_acc=" in err


def test_evaluate_matches_a_direct_computation(digits) -> None:
    net = tiny_net()
    net.train()
    accuracy, loss = evaluate(net, digits.test, batch_size=100)
    assert net.training  # mode restored
    net.eval()
    with torch.no_grad():
        logits = net(digits.test.images)
    labels = digits.test.labels
    assert accuracy == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert loss == pytest.approx(nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"epochs": 0}, "'epochs' must be an integer >= 1. Got 0"),
        ({"batch_size": 2.5}, "'batch_size' must be an integer >= 1. Got 2.5"),
        ({"lr": -1.0}, "'lr' must be a positive number. Got -1.0"),
        ({"momentum": 0.0}, "'momentum' must be > 0 with nesterov=True"),
        ({"label_smoothing": 1.0}, r"'label_smoothing' must be in \[0, 1\)"),
        ({"warmup_epochs": 10}, r"'warmup_epochs' must be an integer in \[0, epochs=10\)"),
        ({"seed": -1}, "'seed' must be an integer >= 0"),
    ],
)
def test_config_validation(options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**options)
