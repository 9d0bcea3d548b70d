"""Torch-Pruning's groups as gfsprune reads them: split parts mapped by the output each edge
carries, and a group Torch-Pruning cannot map (or whose mapping diverges) skipped with the op,
the other groups still found."""

from __future__ import annotations

import torch

import gfsprune.surgery.graph as graph_module
from gfsprune.surgery import Masks, build_graph, find_layers, prune_channels
from tests.nets import Chain, PartialConv, randomize_norms


def test_split_parts_map_to_their_own_consumers() -> None:
    model, x = randomize_norms(PartialConv()), torch.randn(2, 3, 5, 5)
    layers = {layer.name: layer for layer in find_layers(model, x)[0]}
    # c0's channels 0-1 feed pc, 2-7 reach c1 through the concatenation at the same places
    reads = {c.name: (c.index.tolist(), c.root.tolist()) for c in layers["c0"].consumers}
    assert reads == {"pc": ([0, 1], [0, 1]), "c1": ([2, 3, 4, 5, 6, 7], [2, 3, 4, 5, 6, 7])}
    # pc's two channels are concatenated first: c1's inputs 0-1, and c0 is not coupled to it
    assert [(p.name, p.root) for p in layers["pc"].producers] == [("pc", (0, 1))]
    assert [(c.name, c.index.tolist()) for c in layers["pc"].consumers] == [("c1", [0, 1])]
    kept = {"pc": [1]}
    with Masks(model, list(layers.values())) as masks, torch.no_grad():
        masks.set(layers["pc"], [1], 2.0)
        masked = model(x)
    pruned = prune_channels(model, x, kept, scales={"pc": 2.0})
    assert pruned.pc.out_channels == 1 and pruned.c1.in_channels == 7
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked)


def test_a_group_torch_pruning_cannot_map_is_skipped_with_the_op(monkeypatch) -> None:
    model, x = Chain().eval(), torch.randn(1, 2, 4, 4)
    graph = build_graph(model, x)
    trace = graph.get_pruning_group

    def fail_on_c1(module, handler, idxs):
        if module is model.c1:
            raise ZeroDivisionError("integer division or modulo by zero")
        return trace(module, handler, idxs)

    monkeypatch.setattr(graph, "get_pruning_group", fail_on_c1)
    layers, skipped = find_layers(model, x, graph=graph)
    assert [layer.name for layer in layers] == ["c2"]
    assert skipped == [
        "c1 (Torch-Pruning cannot map its channels (ZeroDivisionError: integer division or "
        "modulo by zero))"
    ]


def test_a_diverging_group_is_stopped_and_named(monkeypatch) -> None:
    monkeypatch.setattr(graph_module, "_SPENT", 0)  # every group's mappings spend more
    model, x = PartialConv().eval(), torch.randn(1, 3, 4, 4)
    layers, skipped = find_layers(model, x)
    assert "c1" in [layer.name for layer in layers]  # no split or concat on its way to fc
    assert any(s.startswith("c0 (Torch-Pruning's channel mapping diverges at ") for s in skipped)
