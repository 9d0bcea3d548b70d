"""Exporting a (pruned) model to ONNX, checked with onnxruntime when installed."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from gfsprune._inputs import run_model
from gfsprune.errors import ModelError, first_line

__all__ = ["export_onnx"]


def export_onnx(
    model: nn.Module, example_inputs: object, path: str | os.PathLike, *, check: bool = True
) -> Path:
    """Export ``model`` to ONNX with a dynamic batch dimension: by torch's TorchScript-based
    exporter, else (an op it cannot export, e.g. adaptive pooling to a size that does not
    divide the input's, or ``scaled_dot_product_attention`` called with a tensor
    ``is_causal``) by its ``torch.export``-based one (needs ``onnxscript``).

    Args:
        model: The (pruned) network.
        example_inputs: A tensor, a tuple of tensors or a dict of keyword tensors (named
            inputs of the file, e.g. ``pixel_values``) to trace with.
        path: The ``.onnx`` file to write.
        check: Run the file with onnxruntime (when installed) and compare with PyTorch.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    if isinstance(example_inputs, Mapping):  # keyword inputs become named ONNX inputs
        names = list(example_inputs)
        model = _Positional(model, names)
        args = tuple(example_inputs.values())
    else:
        args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        names = [f"input{i}" if len(args) > 1 else "input" for i in range(len(args))]
    common = {"input_names": names, "output_names": ["output"]}
    try:
        torch.onnx.export(
            model,
            args,
            str(path),
            dynamo=False,
            dynamic_axes={n: {0: "batch"} for n in [*names, "output"]},
            **common,
        )
    except Exception as legacy:  # noqa: BLE001 - any op the TorchScript exporter refuses
        batch = torch.export.Dim("batch")
        try:
            torch.onnx.export(
                model,
                args,
                str(path),
                dynamo=True,
                dynamic_shapes=tuple({0: batch} for _ in args),
                **common,
            )
        except Exception as err:  # noqa: BLE001 - reported with both exporters' reasons
            raise ModelError(
                f"Neither ONNX exporter could export {type(model).__name__}: TorchScript-based "
                f"({type(legacy).__name__}: {first_line(legacy)}), torch.export-based "
                f"({type(err).__name__}: {first_line(err)})."
            ) from err
    if check:
        _check_onnx(model, args, names, path)
    return path


class _Positional(nn.Module):
    """``model`` called with keyword inputs given in order (the exporter passes positions)."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs, strict=True)))


def _check_onnx(model: nn.Module, args: tuple, names: list[str], path: Path) -> None:
    try:
        import onnxruntime
    except ImportError:
        return
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {n: a.detach().cpu().numpy() for n, a in zip(names, args, strict=True)}
    got = torch.from_numpy(session.run(None, feeds)[0])
    with torch.no_grad():
        expected = run_model(model, args if len(args) > 1 else args[0]).cpu()
    if not torch.allclose(got, expected, rtol=1e-3, atol=1e-4):
        raise ModelError(
            f"The ONNX file '{path}' does not reproduce the model (max difference "
            f"{float((got - expected).abs().max()):.3g}); report this with the model."
        )
