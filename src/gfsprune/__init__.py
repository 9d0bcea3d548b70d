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

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from gfsprune._version import __version__

if TYPE_CHECKING:
    from gfsprune import models
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

# Where each public name lives. They are imported on first use (PEP 562), so that importing
# the package does not import torch: the command line's entry point (``gfsprune._entry``)
# can then catch a Ctrl-C during torch's import and exit in one line.
_HOMES = {
    "models": "gfsprune.models",
    "PruneConfig": "gfsprune.core.config",
    "count": "gfsprune.core.counting",
    "distill": "gfsprune.core.losses",
    "prune": "gfsprune.core.prune",
    "recalibrate_bn": "gfsprune.core.recalibrate",
    "Selection": "gfsprune.core.select",
    "backward_eliminate": "gfsprune.core.select",
    "forward_select": "gfsprune.core.select",
    "LayerTuning": "gfsprune.core.tuning",
    "ConfigError": "gfsprune.errors",
    "DataError": "gfsprune.errors",
    "FileFormatError": "gfsprune.errors",
    "GfsPruneError": "gfsprune.errors",
    "LossError": "gfsprune.errors",
    "ModelError": "gfsprune.errors",
    "export_onnx": "gfsprune.io.onnx",
    "load": "gfsprune.io.saved",
    "save": "gfsprune.io.saved",
    "LayerLog": "gfsprune.plan",
    "LayerPlan": "gfsprune.plan",
    "PruneResult": "gfsprune.plan",
    "Latency": "gfsprune.targets",
    "Macs": "gfsprune.targets",
    "Params": "gfsprune.targets",
    "Target": "gfsprune.targets",
    "Tolerance": "gfsprune.targets",
    "Widths": "gfsprune.targets",
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'gfsprune' has no attribute {name!r}")
    module = importlib.import_module(home)
    value = module if home == f"gfsprune.{name}" else getattr(module, name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


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
