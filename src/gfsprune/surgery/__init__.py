"""Network surgery: channel layers, masks, BatchNorm folding and physical removal."""

from gfsprune.surgery.fold import fold_batchnorms
from gfsprune.surgery.layers import ChannelLayer, Consumer, Producer, build_graph, find_layers
from gfsprune.surgery.masks import Masks
from gfsprune.surgery.remove import prune_channels

__all__ = [
    "ChannelLayer",
    "Consumer",
    "Masks",
    "Producer",
    "build_graph",
    "find_layers",
    "fold_batchnorms",
    "prune_channels",
]
