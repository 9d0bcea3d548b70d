"""gfsprune: structured pruning of PyTorch networks by greedy forward selection.

Example:
    >>> import torch
    >>> import gfsprune
    >>> net = gfsprune.models.get("digits_cnn")
    >>> x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    >>> result = gfsprune.prune(net, [(x, y)], x[:1], target=gfsprune.Macs(0.5), progress=False)
    >>> result.macs_after < result.macs_before
    True
"""

from gfsprune import models
from gfsprune._version import __version__
from gfsprune.core.config import PruneConfig
from gfsprune.core.counting import count
from gfsprune.core.losses import distill
from gfsprune.core.prune import prune
from gfsprune.core.recalibrate import recalibrate_bn
from gfsprune.core.select import Selection, backward_eliminate, forward_select
from gfsprune.core.tuning import LayerTuning
from gfsprune.errors import (
    ConfigError,
    DataError,
    FileFormatError,
    GfsPruneError,
    LossError,
    ModelError,
)
from gfsprune.io.onnx import export_onnx
from gfsprune.io.saved import load, save
from gfsprune.plan import LayerLog, LayerPlan, PruneResult
from gfsprune.targets import Latency, Macs, Params, Target, Tolerance, Widths

__all__ = [
    "__version__",
    "ConfigError",
    "DataError",
    "FileFormatError",
    "GfsPruneError",
    "Latency",
    "LayerLog",
    "LayerPlan",
    "LayerTuning",
    "LossError",
    "Macs",
    "ModelError",
    "Params",
    "PruneConfig",
    "PruneResult",
    "Selection",
    "Target",
    "Tolerance",
    "Widths",
    "backward_eliminate",
    "count",
    "distill",
    "export_onnx",
    "forward_select",
    "load",
    "models",
    "prune",
    "recalibrate_bn",
    "save",
]
