"""Exporting a (pruned) model to ONNX, checked with onnxruntime when installed."""

from __future__ import annotations

import os
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
        example_inputs: A tensor or tuple of tensors to trace with.
        path: The ``.onnx`` file to write.
        check: Run the file with onnxruntime (when installed) and compare with PyTorch.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    names = [f"input{i}" if len(args) > 1 else "input" for i in range(len(args))]
    model = model.eval()
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
