"""The batched, prefix-cached evaluator returns the naive evaluator's losses."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from gfsprune.scoring import BatchedEvaluator, NaiveEvaluator, make_evaluator
from gfsprune.scoring.delta import SharedPlusDelta
from gfsprune.scoring.prefix import Prefix
from gfsprune.surgery import Masks, find_layers
from tests.launch import ENV, torchrun
from tests.nets import Coupled, randomize_norms


class SharedRelu(nn.Module):
    """One ReLU module called before and after the layers' consumers, and a nested block."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()
        self.stem = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.a, self.bn_a = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.b, self.bn_b = nn.Conv2d(6, 5, 1), nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = self.act(self.stem(x))
        x = self.act(self.bn_a(self.a(x))) + x
        x = self.act(self.bn_b(self.b(x)))
        return self.fc(x.mean((2, 3)))


class LongSkip(nn.Module):
    """The stem's output is read again after the middle layer's consumer (a long skip),
    and that consumer is wide enough to be run once on the shared channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.wide = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        s = self.stem(x)
        y = torch.relu(self.wide(self.mid(s))) + s
        return self.fc(y.mean((2, 3)))


def _rows(kind: str, width: int) -> torch.Tensor:
    """Channel factors like those a step scores: random sets, a kept set plus one candidate
    each (forward selection), or a remaining set less one each (backward elimination)."""
    g = torch.Generator().manual_seed(width)
    if kind == "random":
        keep = (torch.rand(5, width, generator=g) > 0.5).float() * 2.0
        keep[:, 0] = 1.0
        return keep
    kept = [0, width - 1]
    others = [c for c in range(width) if c not in kept]
    if kind == "forward":
        keep = torch.zeros(len(others), width)
        keep[:, kept] = 3.0
        keep[range(len(others)), others] = 3.0
    else:
        keep = torch.full((len(others), width), 1.5)
        keep[range(len(others)), others] = 0.0
    return keep


@pytest.mark.parametrize("kind", ["random", "forward", "backward"])
@pytest.mark.parametrize(
    ("net", "shape"),
    [(SharedRelu, (2, 5, 5)), (Coupled, (3, 4, 4)), (LongSkip, (2, 5, 5))],
    ids=["shared", "coupled", "long-skip"],
)
def test_batched_losses_equal_naive_losses_for_every_layer(net, shape, kind: str) -> None:
    torch.manual_seed(0)
    model = randomize_norms(net())
    x, y = torch.randn(6, *shape), torch.randint(0, 3, (6,))
    layers, _ = find_layers(model, x[:1])
    loss = nn.functional.cross_entropy
    with Masks(model, layers) as masks:
        masks.set(layers[0], [0, 1], 3.0)  # an earlier layer already pruned
        naive = make_evaluator(NaiveEvaluator, model, masks, loss)
        batched = make_evaluator(BatchedEvaluator, model, masks, loss)
        batched.max_batch = 12  # forces several chunks of 2 candidates
        for layer in layers:
            keep = _rows(kind, layer.width)
            assert batched(x, y, layer, keep) == pytest.approx(naive(x, y, layer, keep), rel=1e-5)


def test_precise_losses_are_float64_and_the_same_whichever_evaluator_asks() -> None:
    torch.manual_seed(0)
    model = randomize_norms(Coupled())
    x, y = torch.randn(6, 3, 4, 4), torch.randint(0, 3, (6,))
    layers, _ = find_layers(model, x[:1])
    loss = nn.functional.cross_entropy
    with Masks(model, layers) as masks:
        naive = make_evaluator(NaiveEvaluator, model, masks, loss)
        batched = make_evaluator(BatchedEvaluator, model, masks, loss)
        for layer in layers:
            keep = _rows("forward", layer.width)
            precise = batched.precise(x, y, layer, keep)
            assert precise == naive.precise(x, y, layer, keep)  # one path: bit for bit
            assert precise == pytest.approx(naive(x, y, layer, keep), rel=1e-5)
            row = keep[0]
            with masks.suspended():
                net = copy.deepcopy(model).double()
            for name, factors in masks.factors(layer, row[None]).items():
                module = net.get_submodule(name)
                shape = [-1] if isinstance(module, nn.Linear) else [-1, 1, 1]
                scale = factors[0].double().view(shape)
                module.register_forward_pre_hook(lambda m, a, f=scale: (a[0] * f,))
            with torch.no_grad():  # the masked model in float64, by hand
                manual = float(loss(net(x.double()), y))
            assert precise[0] == pytest.approx(manual, rel=1e-12, abs=0)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # a copy was used


def test_prefix_tiles_only_the_tensors_read_outside_the_cached_calls() -> None:
    torch.manual_seed(0)
    model = randomize_norms(LongSkip())
    x = torch.randn(2, 2, 5, 5)
    prefix = Prefix(model, x, {model.wide: "wide"})
    assert set(prefix.cached) == {model.stem, model.mid} and prefix.first is model.wide
    # The network's input is read only by the stem; the stem's output by the skip add; the
    # middle block's output only by the first consumer.
    assert prefix.unread[False] == {None}
    assert prefix.unread[True] == {None, (model.mid, 0)}


@pytest.mark.parametrize(
    "module",
    [
        nn.Conv2d(12, 5, 3, padding=1),
        nn.Conv2d(12, 4, (3, 2), stride=2, padding=(2, 0), dilation=(2, 1), bias=False),
        nn.Conv2d(64, 3, 1),
        nn.Linear(70, 6),
    ],
    ids=["3x3", "strided-dilated", "1x1", "linear"],
)
@pytest.mark.parametrize("kind", ["forward", "backward"])
def test_shared_plus_delta_equals_masking_each_row(module: nn.Module, kind: str) -> None:
    torch.manual_seed(0)
    width = module.in_features if isinstance(module, nn.Linear) else module.in_channels
    shape = (3, 2, width) if isinstance(module, nn.Linear) else (3, width, 7, 6)
    x, keep = torch.randn(*shape), _rows(kind, width)[:7]
    fast = SharedPlusDelta.build(module, x, keep)
    assert fast is not None
    with torch.no_grad():
        pieces = [fast.rows(0, 4), fast.rows(4, 7)]
        expected = torch.cat(
            [module(x * (row if x.dim() == 3 else row.view(-1, 1, 1))) for row in keep]
        )
    torch.testing.assert_close(torch.cat(pieces), expected, rtol=1e-4, atol=1e-5)


def test_shared_plus_delta_only_where_it_saves_work() -> None:
    rows, x = _rows("forward", 16), torch.randn(2, 16, 5, 5)
    build = SharedPlusDelta.build
    assert build(nn.Conv2d(16, 8, 3), x, rows) is not None  # 144 multiply-adds
    assert build(nn.Conv2d(16, 8, 1), x, rows) is None  # 16: a plain pass
    assert build(nn.Conv2d(16, 8, 3, groups=2), x, rows) is None
    assert build(nn.Conv2d(16, 8, 3), x, rows[:1]) is None  # one row
    assert build(nn.Conv2d(16, 8, 3), x, _rows("random", 16)) is None


def test_prefix_cache_leaves_the_model_unpatched() -> None:
    torch.manual_seed(0)
    model = randomize_norms(SharedRelu())
    x, y = torch.randn(4, 2, 5, 5), torch.randint(0, 3, (4,))
    layers, _ = find_layers(model, x[:1])
    with Masks(model, layers) as masks:
        make_evaluator(BatchedEvaluator, model, masks, nn.functional.cross_entropy)(
            x, y, layers[-1], torch.ones(2, layers[-1].width)
        )
    assert all("forward" not in vars(m) for m in model.modules())


# Run by torchrun in each of two processes: the same model and data on every rank; each rank
# writes the plan it ended with.
WORKER = """
import json, sys
import torch
from gfsprune import PruneConfig, Macs, distributed, models, prune

assert distributed.setup()
torch.manual_seed(0)
model = models.get("digits_cnn").eval()
g = torch.Generator().manual_seed(1)
data = [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g))
        for _ in range(3)]
config = PruneConfig(candidates=5)
result = prune(model, data, data[0][0][:1], target=Macs(0.5), progress=False, config=config)
plan = [p.kept for p in result.plan]
losses = [log.losses for log in result.layers]
with open(f"{sys.argv[1]}/rank{distributed.rank()}.json", "w") as f:
    json.dump({"plan": plan, "losses": losses, "world": distributed.world_size()}, f)
distributed.teardown()
"""


@pytest.mark.slow
def test_two_gloo_processes_make_the_single_process_plan(tmp_path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    done = torchrun(str(script), str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2 and ranks[0]["plan"] == ranks[1]["plan"]
    # The same script in this single process (no torchrun): the same plan.
    env = {k: v for k, v in ENV.items() if k != "WORLD_SIZE"}
    single = tmp_path / "single"
    single.mkdir()
    solo = [sys.executable, str(script), str(single)]
    script.write_text(WORKER.replace("assert distributed.setup()", "distributed.setup()"))
    done = subprocess.run(solo, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    alone = json.loads((single / "rank0.json").read_text())
    assert alone["world"] == 1 and alone["plan"] == ranks[0]["plan"]
    for a, b in zip(alone["losses"], ranks[0]["losses"], strict=True):
        assert a == pytest.approx(b, rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_selection_matches_the_cpu_plan() -> None:
    from gfsprune import Macs, PruneConfig, models, prune

    torch.manual_seed(0)
    model = models.get("resnet20", width_mult=0.5).eval()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g))]
    kwargs = dict(target=Macs(0.5), progress=False)
    config = PruneConfig(objective="loss", allocator="curves", candidates=4)
    cpu = prune(model, data, data[0][0][:1], **kwargs, config=config)
    gpu = {
        e: prune(
            model,
            data,
            data[0][0][:1],
            **kwargs,
            config=dataclasses.replace(config, device="cuda", evaluator=e),
        )
        for e in ("naive", "batched")
    }
    assert next(gpu["batched"].model.parameters()).is_cuda
    assert [p.kept for p in gpu["naive"].plan] == [p.kept for p in gpu["batched"].plan]
    # TF32 convolutions on the GPU may break near-ties differently from the CPU: most
    # layers must still agree.
    same = sum(a.kept == b.kept for a, b in zip(cpu.plan, gpu["batched"].plan, strict=True))
    assert same >= len(cpu.plan) // 2


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "seed"),
    [("resnet20", 0), ("resnet20", 1), ("mobilenet_v3_small", 0)]
    + [("digits_cnn", 0), ("digits_cnn", 1)],
)
def test_default_evaluator_makes_the_naive_plan_on_zoo_models(name: str, seed: int) -> None:
    from gfsprune import Macs, PruneConfig, models, prune

    torch.manual_seed(seed)
    if name == "digits_cnn":
        model, shape = models.get(name), (1, 8, 8)
    else:
        options = {"small_input": True} if "mobilenet" in name else {}
        model, shape = models.get(name, width_mult=0.25, **options), (3, 16, 16)
    g = torch.Generator().manual_seed(seed)
    data = [
        (torch.randn(4, *shape, generator=g), torch.randint(0, 10, (4,), generator=g))
        for _ in range(2)
    ]
    runs = {
        e: prune(
            model.eval(),
            data,
            data[0][0][:1],
            target=Macs(0.5),
            progress=False,
            config=PruneConfig(
                objective="loss", allocator="curves", candidates=3, seed=seed, evaluator=e
            ),
        )
        for e in ("naive", "batched")
    }
    assert [p.kept for p in runs["naive"].plan] == [p.kept for p in runs["batched"].plan]
    for a, b in zip(runs["naive"].layers, runs["batched"].layers, strict=True):
        assert a.losses == pytest.approx(b.losses, rel=1e-4, abs=1e-6)
