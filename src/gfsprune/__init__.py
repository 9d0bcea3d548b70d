"""gfsprune: structured pruning of PyTorch networks by greedy forward selection."""

from gfsprune._version import __version__
from gfsprune.errors import ConfigError, DataError, GfsPruneError, LossError, ModelError
from gfsprune.select import Selection, backward_eliminate, forward_select

__all__ = [
    "__version__",
    "ConfigError",
    "DataError",
    "GfsPruneError",
    "LossError",
    "ModelError",
    "Selection",
    "backward_eliminate",
    "forward_select",
]
