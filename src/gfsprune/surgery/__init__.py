"""Network surgery: channel layers (and unit layers, :mod:`gfsprune.surgery.units`), masks,
BatchNorm folding and physical removal."""

from gfsprune.surgery.fold import batchnorm_after, fold_batchnorms
from gfsprune.surgery.graph import build_graph
from gfsprune.surgery.layers import ChannelLayer, Consumer, Producer, find_layers
from gfsprune.surgery.masks import Masks
from gfsprune.surgery.probe import removable_layers, removal_difference
from gfsprune.surgery.remove import prune_channels

__all__ = [
    "ChannelLayer",
    "Consumer",
    "Masks",
    "Producer",
    "batchnorm_after",
    "build_graph",
    "find_layers",
    "fold_batchnorms",
    "prune_channels",
    "removable_layers",
    "removal_difference",
]
