"""The fast subset of the coverage benchmark (issue 10): one small model per family.

Each model is built with random weights, pruned to ``Macs(0.5)`` by ``benchmarks/coverage.py``'s
own ``check_model`` at a tiny input and must pass every check but the ONNX export (the full
benchmark runs that): pruned, the target met within 2%, the output shape kept, masked ==
pruned (``prune`` refuses otherwise) and ``save`` + ``load`` giving bit-identical outputs.
timm's ``test_*`` models (its own tiny versions of each family) are selected greedily; the
full-size torchvision ones by the benchmark's one-shot screen, which runs the same tracing,
masks, allocation and removal at a fraction of greedy selection's cost.
"""

from __future__ import annotations

import pytest

from benchmarks.coverage import RATIO, TOLERANCE, check_model

pytest.importorskip("torchvision")
pytest.importorskip("timm")

# (spec, input side, selection)
SUBSET = [
    ("torchvision:resnet18", 16, "one-shot"),
    ("torchvision:mobilenet_v3_small", 16, "one-shot"),
    ("torchvision:shufflenet_v2_x0_5", 32, "one-shot"),  # channel shuffle: untraceable once
    ("timm:test_resnet", 16, "greedy"),
    ("timm:test_efficientnet", 16, "greedy"),
    ("timm:test_convnext", 32, "greedy"),
    ("timm:test_vit", 16, "greedy"),
]


@pytest.mark.parametrize(("spec", "side", "selection"), SUBSET, ids=[s[0] for s in SUBSET])
def test_prunes_to_target_with_every_check(spec: str, side: int, selection: str) -> None:
    row = check_model(spec, side, selection=selection, onnx=False)
    assert row["status"] == "ok", row.get("error")
    assert row["input"] == side
    assert abs(row["ratio"] / RATIO - 1) <= TOLERANCE, row["ratio"]
    assert row["shape"] and row["equivalent"]
    assert row["roundtrip"], "save + load did not reproduce the pruned model's outputs"
