"""ONNX export: what the TorchScript-based exporter refuses goes through torch.export."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gfsprune import export_onnx

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.mark.slow
def test_an_op_the_torchscript_exporter_refuses_is_exported_by_torch_export(tmp_path) -> None:
    # adaptive pooling to a size that does not divide the input's (torchvision AlexNet and
    # VGG at 64x64): the TorchScript-based exporter raises, torch.export's exports it
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(3), nn.Flatten()).eval()
    with pytest.raises(Exception, match="adaptive_avg_pool2d"):
        torch.onnx.export(model, (torch.randn(1, 3, 6, 6),), str(tmp_path / "a.onnx"), dynamo=False)
    path = export_onnx(model, torch.randn(1, 3, 6, 6), tmp_path / "b.onnx")  # checked
    assert path.stat().st_size > 0
